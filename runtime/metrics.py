"""The server's Prometheus metrics, per pod, labelled with the model's name and version, and beside them
the same measurements as Triton's statistics extension reports them.

Label children are resolved once here, so recording on the request path is a few sub-microsecond calls: the
histograms a request passes (its stages, its queue delay, its batch's size) are ``LoopHistogram``s, observed on the
event loop alone. Each process keeps its values in memory. With several workers in a pod (``workers``) the worker
asked for ``/metrics`` reads every other worker's metrics (``metric_families``: collected, as plain data, not as
Prometheus text, whose parser costs ten times as much on the event loop) and ``merge_metrics`` makes them one:
counters and histograms summed, each gauge as ``GAUGE_MERGE`` says. (prometheus-client's multiprocess mode, files
written on every update, cost 25 µs per request on the bench's tiny model: a fifth of all it costs.)
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from itertools import accumulate

from kubeserve.runtime.admission import Rejection
from kubeserve.runtime.config import HTTP, PROTOCOLS
from kubeserve.runtime.statistics import ModelStatistics
from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# Seconds: 50 µs to 10 s, dense where a healthy request lives (sub-millisecond to tens of ms).
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# `_created` series double the exposition for no signal anyone scrapes.
disable_created_metrics()

# A request's stages, in order (server/exchange.py times them). preprocess and postprocess run only where there is
# something to do (a Python handler's, image inputs; a handler's, classification): a request without them has no sample
# of theirs.
PREPROCESS = "preprocess"
POSTPROCESS = "postprocess"
STAGES = ("deserialize", PREPROCESS, "queue", "compute", POSTPROCESS, "serialize", "total")
# How the workers' values of each gauge make the pod's: what waits adds up; the pod is ready when all are; its
# load took as long as the slowest. Counters and histograms add up.
GAUGE_MERGE: dict[str, Callable[[Sequence[float]], float]] = {
    "kubeserve_queue_depth": sum,
    "kubeserve_requests_in_flight": sum,
    "kubeserve_http_buffered_request_bytes": sum,
    "kubeserve_model_ready": min,
    "kubeserve_model_load_seconds": max,
}


class Observations:
    """One label set's observations of a ``LoopHistogram``: a count per bucket (the last is +Inf's) and their sum."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1  # the first bucket whose bound is at least the value
        self.sum += value


class LoopHistogram(Collector):
    """A Prometheus histogram observed from one thread (the event loop's): no lock, and its bucket found by bisection,
    about a sixth of what the library's ``Histogram.observe`` costs (which locks, and walks the buckets in Python),
    and a request makes eight observations. Exposed as the library exposes a histogram, by the library; a scrape
    from another thread reads each label set's counts at once, so its buckets always add up to its count."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self.labelnames = tuple(labelnames)
        self._bounds = tuple(float(bound) for bound in buckets)
        self._bucket_names = [floatToGoString(bound) for bound in self._bounds] + ["+Inf"]
        self._children: dict[tuple[str, ...], Observations] = {}
        registry.register(self)

    def labels(self, **values: str) -> Observations:
        key = tuple(values[name] for name in self.labelnames)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = Observations(self._bounds)
        return child

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._name, self._documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self.labelnames)
        for key, child in list(self._children.items()):
            counts, total = list(child.counts), child.sum
            family.add_metric(key, list(zip(self._bucket_names, accumulate(counts), strict=True)), total)
        yield family


class ServerMetrics:
    def __init__(self, model: str, version: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = {"model": model, "version": version}
        names = list(labels)

        self._requests = Counter(
            "kubeserve_requests",
            "Inference requests answered, by protocol (http, grpc) and HTTP status code (a gRPC call's is the status "
            "REST answers the same case with: docs/grpc.md).",
            [*names, "protocol", "code"],
            registry=self.registry,
        )
        self._rejected = Counter(
            "kubeserve_rejected_requests",
            "Inference requests answered 503 without compute, by reason.",
            [*names, "reason"],
            registry=self.registry,
        )
        self._http_refusals = Counter(
            "kubeserve_http_refusals",
            "Requests the HTTP layer answered itself before any handler (400, 408, 413, 431, 503), by reason: "
            "malformed, missing_host, chunk_framing, head_too_large, body_too_large, buffers_full, head_timeout, "
            "body_too_slow, stalled.",
            [*names, "reason"],
            registry=self.registry,
        )
        self.body_bytes_held = Gauge(
            "kubeserve_http_buffered_request_bytes",
            "Bytes of request bodies arriving, or read and waiting their turn on their connections; "
            "max_buffered_request_bytes bounds them.",
            names,
            registry=self.registry,
        ).labels(**labels)
        duration = LoopHistogram(
            "kubeserve_request_duration_seconds",
            "Time an inference request spent in each stage: deserialize (body read and decoded), preprocess (a Python "
            "handler's preprocess, images decoded into tensors; only requests that have one), queue (waiting for a "
            "batch), compute (its batch's inference), postprocess (a handler's postprocess, top classes picked; only "
            "requests that have one), serialize (response encoded), total; by protocol (http, grpc).",
            [*names, "protocol", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_delay = LoopHistogram(
            "kubeserve_queue_delay_seconds",
            "Time from a request's arrival to the start of its compute (or to its expiry in the queue): "
            "the autoscaling signal.",
            names,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        ).labels(**labels)
        self.batch_size = LoopHistogram(
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
        ).labels(**labels)
        self.in_flight = Gauge(
            "kubeserve_requests_in_flight",
            "Inference requests accepted and not yet answered.",
            names,
            registry=self.registry,
        ).labels(**labels)
        self.model_ready = Gauge(
            "kubeserve_model_ready",
            "1 when the model is loaded and serving (in every worker).",
            names,
            registry=self.registry,
        ).labels(**labels)
        self.model_load_seconds = Gauge(
            "kubeserve_model_load_seconds",
            "Seconds the last model load took, warm-up included (the slowest worker's).",
            names,
            registry=self.registry,
        ).labels(**labels)

        # Each protocol's stage histograms; ``stage``: REST's.
        self.stages = {
            protocol: {stage: duration.labels(**labels, protocol=protocol, stage=stage) for stage in STAGES}
            for protocol in PROTOCOLS
        }
        self.stage = self.stages[HTTP]
        self.statistics = ModelStatistics()
        self._labels = labels
        self._codes: dict[tuple[str, int], Counter] = {}
        self.rejected = {reason: self._rejected.labels(**labels, reason=reason) for reason in Rejection}

    def http_refused(self, reason: str) -> None:
        self._http_refusals.labels(**self._labels, reason=reason).inc()

    def answered(self, status: int, protocol: str = HTTP) -> None:
        counter = self._codes.get((protocol, status))
        if counter is None:
            counter = self._codes[protocol, status] = self._requests.labels(
                **self._labels, protocol=protocol, code=str(status)
            )
        counter.inc()


# One process's metric family as plain data (``metric_families``): its name, documentation, type and unit, and each
# sample's name, labels and value.
Family = tuple[str, str, str, str, list[tuple[str, dict[str, str], float]]]


def metric_families(registry: CollectorRegistry) -> list[Family]:
    """``registry``'s metrics, collected, as plain data for another process to merge (``merge_metrics``)."""
    return [
        (
            family.name,
            family.documentation,
            family.type,
            family.unit,
            [(sample.name, sample.labels, sample.value) for sample in family.samples],
        )
        for family in registry.collect()
    ]


class MergedMetrics(Collector):
    """Several processes' metrics (``metric_families``) as one collector: counters and histograms summed, gauges as
    ``GAUGE_MERGE`` says (summed when it does not name them)."""

    def __init__(self, processes: Sequence[Sequence[Family]]) -> None:
        self._families: dict[str, tuple[str, str, str]] = {}  # name: documentation, type, unit
        self._values: dict[str, dict[tuple, list[float]]] = {}
        for families in processes:
            for name, documentation, kind, unit, samples in families:
                if name not in self._families:
                    self._families[name] = (documentation, kind, unit)
                    self._values[name] = {}
                values = self._values[name]
                for sample_name, labels, value in samples:
                    values.setdefault((sample_name, tuple(sorted(labels.items()))), []).append(value)

    def collect(self) -> Iterator[Metric]:
        for name, (documentation, kind, unit) in self._families.items():
            family = Metric(name, documentation, kind, unit)
            merge = GAUGE_MERGE.get(name, sum) if kind == "gauge" else sum
            for (sample_name, labels), values in self._values[name].items():
                family.add_sample(sample_name, dict(labels), merge(values))
            yield family


def merge_metrics(processes: Sequence[Sequence[Family]]) -> CollectorRegistry:
    """A registry serving ``processes``' metrics merged (``MergedMetrics``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MergedMetrics(processes))
    return registry
