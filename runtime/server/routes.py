"""The URL table: Open Inference Protocol V2 (with Triton's extensions), KServe V1, health, metrics."""

from __future__ import annotations

from aiohttp import web
from kubeserve.runtime.server import health, prometheus, v1, v2

MODEL = "/v2/models/{name}"
VERSIONED = "/v2/models/{name}/versions/{version}"


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/v2/health/live", health.live)
    app.router.add_get("/v2/health/ready", health.ready)
    app.router.add_get("/v2", health.server_metadata)
    app.router.add_get("/", health.root)
    app.router.add_get("/metrics", prometheus.metrics)
    # Before MODEL, which would take "stats" for a model's name.
    app.router.add_get("/v2/models/stats", v2.model_statistics)
    for base in (MODEL, VERSIONED):
        app.router.add_get(base, v2.model_metadata)
        app.router.add_get(f"{base}/ready", v2.model_ready)
        app.router.add_get(f"{base}/config", v2.model_config)
        app.router.add_get(f"{base}/stats", v2.model_statistics)
        app.router.add_post(f"{base}/infer", v2.infer)
    app.router.add_get("/v1/models/{name}", v1.model_status)
    app.router.add_post("/v1/models/{name:[^/:]+}:predict", v1.predict)
