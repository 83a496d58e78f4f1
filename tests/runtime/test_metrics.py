"""``/metrics`` as Prometheus reads it: parsed with prometheus_client's own parser, and the counts add up."""

from __future__ import annotations

import asyncio
import json
import math

import aiohttp
import pytest
from kubeserve.runtime.metrics import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS, LoopHistogram
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("protocol") == "grpc":  # these tests speak REST
                continue
            labels = {k: v for k, v in sample.labels.items() if k not in ("model", "version", "protocol")}
            assert sample.labels.get("model") == "mlp", sample
            assert sample.labels.get("version") == "1", sample
            found[(sample.name, frozenset(labels.items()))] = sample.value
    return found


def _value(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_add_up(serve_in_process):
    server = await serve_in_process("mlp", max_batch_size=8, max_queue_size=1)
    url = f"{server.url}/v2/models/mlp/infer"
    rows = [1, 2, 3, 1, 2]

    def body(n: int) -> str:
        return json.dumps({"inputs": [{"name": "features", "shape": [n, 32], "datatype": "FP32",
                                       "data": [0.1] * 32 * n}]})  # fmt: skip

    async with aiohttp.ClientSession() as session:
        for n in rows:
            assert (await session.post(url, data=body(n))).status == 200
        for _ in range(3):
            assert (await session.post(url, data="{broken")).status == 400
        for _ in range(2):
            assert (await session.post(f"{server.url}/v2/models/other/infer", data=body(1))).status == 404
        # One refusal for a full queue: the model held busy, one request queued, the next refused.
        server.gate.close()
        busy = asyncio.create_task(session.post(url, data=body(1)))
        await server.gate.wait_entered()
        queued = asyncio.create_task(session.post(url, data=body(1)))
        await server.until_queued(1)
        assert (await session.post(url, data=body(1))).status == 503
        server.gate.open()
        assert [(await busy).status, (await queued).status] == [200, 200]

        response = await session.get(f"{server.url}/metrics")
        assert response.headers["Content-Type"].startswith("text/plain")
        samples = _samples(await response.text())

    served = len(rows) + 2
    assert _value(samples, "kubeserve_requests_total", code="200") == served
    assert _value(samples, "kubeserve_requests_total", code="400") == 3
    assert _value(samples, "kubeserve_requests_total", code="404") == 2
    assert _value(samples, "kubeserve_requests_total", code="503") == 1
    assert _value(samples, "kubeserve_rejected_requests_total", reason="queue_full") == 1
    for stage in ("deserialize", "queue", "compute", "serialize", "total"):
        assert _value(samples, "kubeserve_request_duration_seconds_count", stage=stage) == served
        assert _value(samples, "kubeserve_request_duration_seconds_bucket", stage=stage, le="+Inf") == served
    # No image inputs, no classification asked for: no preprocess or postprocess stage, and no sample of theirs.
    for stage in ("preprocess", "postprocess"):
        assert _value(samples, "kubeserve_request_duration_seconds_count", stage=stage) == 0
    assert _value(samples, "kubeserve_queue_delay_seconds_count") == served
    assert _value(samples, "kubeserve_batch_size_sum") == sum(rows) + 2
    assert _value(samples, "kubeserve_batch_size_count") == len(server.gate.batches)
    assert _value(samples, "kubeserve_queue_depth") == 0
    assert _value(samples, "kubeserve_requests_in_flight") == 0
    total = _value(samples, "kubeserve_request_duration_seconds_sum", stage="total")
    parts = sum(
        _value(samples, "kubeserve_request_duration_seconds_sum", stage=stage)
        for stage in ("deserialize", "queue", "compute", "serialize")
    )
    assert 0 < parts <= total


async def test_openmetrics_is_offered_to_those_who_ask(serve_in_process):
    server = await serve_in_process("mlp")
    async with aiohttp.ClientSession() as session:
        response = await session.get(
            f"{server.url}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await response.text()).rstrip().endswith("# EOF")


def test_model_gauges_are_set_once_loaded(mlp_server):
    import requests

    samples = _samples(requests.get(f"{mlp_server.url}/metrics").text)
    assert _value(samples, "kubeserve_model_ready") == 1
    assert _value(samples, "kubeserve_model_load_seconds") > 0


LE = ("0.0025", "0.005", "0.01", "+Inf")


def test_workers_metrics_merge_into_the_pods():
    """Each worker keeps its own values; the pod's are their sum, except the gauges that say otherwise: ready when
    every worker is, loaded when the slowest has."""
    from kubeserve.runtime.metrics import ServerMetrics, merge_metrics, metric_families
    from prometheus_client import generate_latest

    workers = [ServerMetrics("m", "1") for _ in range(3)]
    for index, metrics in enumerate(workers):
        for _ in range(index + 1):
            metrics.answered(200)
            metrics.stage["total"].observe(0.002 * (index + 1))
        metrics.answered(503)
        metrics.model_ready.set(0 if index == 2 else 1)
        metrics.model_load_seconds.set(1.5 + index)
        metrics.in_flight.set_function(lambda index=index: index)
    merged = merge_metrics([json.loads(json.dumps(metric_families(metrics.registry))) for metrics in workers])
    text = generate_latest(merged).decode()
    assert generate_latest(merged).decode() == text  # collected again, the same

    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        if name.startswith(("kubeserve_requests_total", "kubeserve_request_duration_seconds")):
            labels = {"protocol": "http", **labels}
        return samples[(name, tuple(sorted({"model": "m", "version": "1", **labels}.items())))]

    assert value("kubeserve_requests_total", code="200") == 6
    assert value("kubeserve_requests_total", code="503") == 3
    assert value("kubeserve_request_duration_seconds_count", stage="total") == 6
    assert value("kubeserve_request_duration_seconds_sum", stage="total") == pytest.approx(0.002 + 0.008 + 0.018)
    buckets = [value("kubeserve_request_duration_seconds_bucket", stage="total", le=le) for le in LE]
    assert buckets == [1, 3, 6, 6]
    assert value("kubeserve_requests_in_flight") == 0 + 1 + 2
    assert value("kubeserve_model_ready") == 0
    assert value("kubeserve_model_load_seconds") == 3.5
    assert "# TYPE kubeserve_requests_total counter" in text
    assert "# TYPE kubeserve_request_duration_seconds histogram" in text

    # As the workers send them (server/peers.py): JSON that keeps a gauge's infinity (or NaN) a number.
    workers[0].model_load_seconds.set(math.inf)
    merged = merge_metrics([json.loads(json.dumps(metric_families(metrics.registry))) for metrics in workers])
    assert 'kubeserve_model_load_seconds{model="m",version="1"} +Inf' in generate_latest(merged).decode()


@pytest.mark.parametrize("buckets", [LATENCY_BUCKETS, BATCH_SIZE_BUCKETS], ids=["latency", "batch size"])
def test_the_loop_histograms_expose_what_the_librarys_histogram_does(buckets):
    """The request path's histograms (``LoopHistogram``) against prometheus_client's own ``Histogram`` given the same
    observations, values on a bucket's bound and past the last one included: the same exposition, line for line."""
    library, ours = CollectorRegistry(), CollectorRegistry()
    theirs = Histogram("h_seconds", "Help.", ["stage"], buckets=buckets, registry=library)
    loop = LoopHistogram("h_seconds", "Help.", ["stage"], buckets=buckets, registry=ours)
    values = [*buckets, *(bound * 0.999 for bound in buckets), *(bound * 1.001 for bound in buckets), 0.0, 1e6]
    for stage in ("queue", "compute"):
        for value in values:
            theirs.labels(stage=stage).observe(value)
            loop.labels(stage=stage).observe(value)
    assert generate_latest(ours).decode() == generate_latest(library).decode()
