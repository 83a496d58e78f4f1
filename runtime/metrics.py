"""The server's Prometheus metrics, per pod, labelled with the model's name and version, and beside them
the same measurements as Triton's statistics extension reports them.

Label children are resolved once here, so recording on the request path is a few sub-microsecond calls. With
several workers in a pod (``workers``), prometheus-client's multiprocess mode keeps each worker's values in a
file of its own and ``exposition`` sums them: gauges say how they combine (``multiprocess_mode``), and are
ignored with one process.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kubeserve.runtime.rejection import Rejection
from kubeserve.runtime.statistics import ModelStatistics
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.multiprocess import MultiProcessCollector

# Seconds: 50 µs to 10 s, dense where a healthy request lives (sub-millisecond to tens of ms).
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# `_created` series double the exposition for no signal anyone scrapes.
disable_created_metrics()

STAGES = ("deserialize", "queue", "compute", "serialize", "total")


class ServerMetrics:
    def __init__(
        self, model: str, version: str, registry: CollectorRegistry | None = None, multiprocess_dir: Path | None = None
    ) -> None:
        self.registry = registry or CollectorRegistry()
        # What /metrics serves: this process's registry, or every worker's values summed.
        self.exposition = self.registry
        self.multiprocess = multiprocess_dir is not None
        if multiprocess_dir is not None:
            self.exposition = CollectorRegistry()
            MultiProcessCollector(self.exposition, path=str(multiprocess_dir))
        labels = {"model": model, "version": version}
        names = list(labels)

        self._requests = Counter(
            "kubeserve_requests",
            "Inference requests answered, by HTTP status code.",
            [*names, "code"],
            registry=self.registry,
        )
        self._rejected = Counter(
            "kubeserve_rejected_requests",
            "Inference requests answered 503 without compute, by reason.",
            [*names, "reason"],
            registry=self.registry,
        )
        duration = Histogram(
            "kubeserve_request_duration_seconds",
            "Time an inference request spent in each stage: deserialize (body read and decoded), queue "
            "(waiting for a batch), compute (its batch's inference), serialize (response encoded), total.",
            [*names, "stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_delay = Histogram(
            "kubeserve_queue_delay_seconds",
            "Time from a request's arrival to the start of its compute (or to its expiry in the queue): "
            "the autoscaling signal.",
            names,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        ).labels(**labels)
        self.batch_size = Histogram(
            "kubeserve_batch_size",
            "Rows per batch sent to the model.",
            names,
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        ).labels(**labels)
        self.queue_depth = Gauge(
            "kubeserve_queue_depth",
            "Requests waiting for a batch.",
            names,
            registry=self.registry,
            multiprocess_mode="livesum",
        ).labels(**labels)
        self.in_flight = Gauge(
            "kubeserve_requests_in_flight",
            "Inference requests accepted and not yet answered.",
            names,
            registry=self.registry,
            multiprocess_mode="livesum",
        ).labels(**labels)
        self.model_ready = Gauge(
            "kubeserve_model_ready",
            "1 when the model is loaded and serving (in every worker).",
            names,
            registry=self.registry,
            multiprocess_mode="livemin",
        ).labels(**labels)
        self.model_load_seconds = Gauge(
            "kubeserve_model_load_seconds",
            "Seconds the last model load took, warm-up included (the slowest worker's).",
            names,
            registry=self.registry,
            multiprocess_mode="livemax",
        ).labels(**labels)

        self.stage = {stage: duration.labels(**labels, stage=stage) for stage in STAGES}
        self.statistics = ModelStatistics()
        self._labels = labels
        self._codes: dict[int, Counter] = {}
        self.rejected = {reason: self._rejected.labels(**labels, reason=reason) for reason in Rejection}

    def track(self, gauge: Gauge, read: Callable[[], float]) -> Callable[[], None]:
        """Keep ``gauge`` equal to ``read()``, a count the server keeps anyway; returns what to call when it changes.

        Alone in its process the gauge reads the count when scraped, so a change costs nothing; a worker writes it
        on every change, as its value lives in a file the scrape sums (``set_function`` is one process's)."""
        if self.multiprocess:
            return lambda: gauge.set(read())
        gauge.set_function(read)
        return _unchanged

    def answered(self, status: int) -> None:
        counter = self._codes.get(status)
        if counter is None:
            counter = self._codes[status] = self._requests.labels(**self._labels, code=str(status))
        counter.inc()


def _unchanged() -> None:
    """The gauge reads its count when scraped."""
