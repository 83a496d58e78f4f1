"""The URL table: Open Inference Protocol V2 (with Triton's extensions), KServe V1, health, metrics."""

from __future__ import annotations

from kubeserve.runtime.server import health, prometheus, v1, v2
from kubeserve.runtime.server.router import Router

MODEL = "/v2/models/{name}"
VERSIONED = "/v2/models/{name}/versions/{version}"


def setup_routes(router: Router) -> None:
    router.get("/v2/health/live", health.live)
    router.get("/v2/health/ready", health.ready)
    router.get("/v2", health.server_metadata)
    router.get("/", health.root)
    router.get("/metrics", prometheus.metrics)
    # Before MODEL, which would take "stats" for a model's name.
    router.get("/v2/models/stats", v2.model_statistics)
    for base in (MODEL, VERSIONED):
        router.get(base, v2.model_metadata)
        router.get(f"{base}/ready", v2.model_ready)
        router.get(f"{base}/config", v2.model_config)
        router.get(f"{base}/stats", v2.model_statistics)
        router.post(f"{base}/infer", v2.infer)
    router.get("/v1/models/{name}", v1.model_status)
    router.post("/v1/models/{name:[^/:]+}:predict", v1.predict)
