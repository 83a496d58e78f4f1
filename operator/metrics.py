"""The operator's own Prometheus metrics, served at ``/metrics`` on the operator's metrics port.

What the operator did (reconciles by result, apply errors, the work queue's delay) and what the rollouts it runs
are at (phase, canary weight, each revision's desired and ready replicas, analyses by verdict): the Grafana
dashboard reads these beside the runtime pods' own. Series of an InferenceService are removed when it goes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Seconds a key waits in the work queue: sub-millisecond when idle, seconds when thousands arrive at once.
QUEUE_DELAY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PHASES = ("Progressing", "Paused", "Succeeded", "Failed")
ISVC_LABELS = ("namespace", "inferenceservice")


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reconciles = Counter(
            "kubeserve_operator_reconciles",
            "Runs of the reconciler, by result: ok, failed (an apply failed and is retried), invalid (InvalidSpec).",
            ["result"],
            registry=self.registry,
        )
        self.apply_errors = Counter(
            "kubeserve_operator_apply_errors",
            "Requests of the operator's applies that the API server refused or failed, by HTTP status class.",
            ["reason"],
            registry=self.registry,
        )
        self.workqueue_delay = Histogram(
            "kubeserve_operator_workqueue_delay_seconds",
            "Time an InferenceService waited in the work queue before a worker took it.",
            buckets=QUEUE_DELAY_BUCKETS,
            registry=self.registry,
        )
        self.rollout_phase = Gauge(
            "kubeserve_operator_rollout_phase",
            "1 for the phase the InferenceService's rollout is in, 0 for the others.",
            [*ISVC_LABELS, "phase"],
            registry=self.registry,
        )
        self.canary_weight = Gauge(
            "kubeserve_operator_canary_weight",
            "The share of the traffic (percent) each revision gets, as the rollout decided.",
            [*ISVC_LABELS, "revision"],
            registry=self.registry,
        )
        self.revision_replicas = Gauge(
            "kubeserve_operator_revision_replicas",
            "Each revision's replicas: desired (the rollout's split of spec.replicas) and ready.",
            [*ISVC_LABELS, "revision", "state"],
            registry=self.registry,
        )
        self.analyses = Counter(
            "kubeserve_operator_analyses",
            "Canary analysis intervals judged, by verdict (Pass, Fail, Inconclusive).",
            [*ISVC_LABELS, "verdict"],
            registry=self.registry,
        )
        self._revisions: dict[tuple[str, str], set[str]] = {}

    def rollout(
        self,
        key: tuple[str, str],
        phase: str,
        revisions: Iterable[Mapping[str, Any]],
        desired: Mapping[str, int],
    ) -> None:
        """An InferenceService's rollout as the latest decision has it (``status.revisions`` entries)."""
        for known in PHASES:
            self.rollout_phase.labels(*key, known).set(1 if known == phase else 0)
        current = set()
        for revision in revisions:
            name = revision["name"]
            current.add(name)
            self.canary_weight.labels(*key, name).set(revision.get("weight", 0))
            self.revision_replicas.labels(*key, name, "desired").set(desired.get(name, 0))
            self.revision_replicas.labels(*key, name, "ready").set(revision.get("readyReplicas", 0))
        for gone in self._revisions.get(key, set()) - current:
            self._remove_revision(key, gone)
        self._revisions[key] = current

    def forget(self, key: tuple[str, str]) -> None:
        """The InferenceService is gone: its series go too."""
        for phase in PHASES:
            _remove(self.rollout_phase, *key, phase)
        for revision in self._revisions.pop(key, set()):
            self._remove_revision(key, revision)

    def _remove_revision(self, key: tuple[str, str], revision: str) -> None:
        _remove(self.canary_weight, *key, revision)
        for state in ("desired", "ready"):
            _remove(self.revision_replicas, *key, revision, state)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _remove(metric: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never set
        metric.remove(*labels)


async def serve(metrics: OperatorMetrics, port: int) -> web.AppRunner:
    """``GET /metrics`` on 0.0.0.0:``port``; the caller cleans the runner up."""

    async def exposition(_: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", exposition)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()  # scraped by Prometheus from outside the pod
    return runner
