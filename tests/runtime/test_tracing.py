"""OpenTelemetry tracing of inference requests (runtime/server/tracing.py): the spans a real server on 127.0.0.1
makes, read by the SDK's in-memory exporter; a real ``kubeserve-runtime serve`` exporting OTLP to a receiver here,
flushed by its drain; and nothing of OpenTelemetry with tracing off."""

from __future__ import annotations

import asyncio
import gzip
import io
import itertools
import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import numpy as np
import pytest
from kubeserve.runtime.config import RuntimeSettings
from kubeserve.runtime.server import tracing as tracing_module
from kubeserve.runtime.server.lifecycle import start_tracing, tracing_configured
from kubeserve.runtime.server.messages import Request
from kubeserve.runtime.server.tracing import Tracing
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id
from PIL import Image

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
FEATURES = json.dumps(
    {"inputs": [{"name": "features", "shape": [3, 32], "datatype": "FP32", "data": [0.5] * 96}]}
).encode()
CNN_IMAGES = {"image": {"resize": [64, 64]}}
HANDLERS = Path(__file__).resolve().parent / "user_handlers"


def classified_image() -> tuple[bytes, dict[str, str]]:
    """A V2 request of one JPEG (Triton's binary tensor extension) asking for its top 3 classes."""
    image = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(image, "JPEG")
    tensor = len(image.getvalue()).to_bytes(4, "little") + image.getvalue()
    header = json.dumps({
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(tensor)}}],
        "outputs": [{"name": "logits", "parameters": {"classification": 3}}],
    }).encode()  # fmt: skip
    return header + tensor, {"Inference-Header-Content-Length": str(len(header))}


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def tracing_for(exporter: InMemorySpanExporter, model: str) -> Tracing:
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider, RuntimeSettings(model_path="m.onnx", model_name=model))


async def finished(exporter: InMemorySpanExporter, count: int) -> list[ReadableSpan]:
    """The spans exported once ``count`` have been (the request's ends just after its answer)."""
    for _ in range(1000):
        spans = exporter.get_finished_spans()
        if len(spans) >= count:
            return sorted(spans, key=lambda span: (span.start_time, span.kind != SpanKind.SERVER))
        await asyncio.sleep(0.001)
    raise AssertionError(f"{len(exporter.get_finished_spans())} spans exported, not {count}")


def server_timing(header: str) -> dict[str, float]:
    """Server-Timing's stages, in milliseconds."""
    return {name: float(duration) for name, duration in (part.split(";dur=") for part in header.split(", "))}


async def test_a_request_is_a_server_span_with_a_child_per_stage_inside_it(serve_in_process, exporter):
    server = await serve_in_process("mlp", tracing=tracing_for(exporter, "mlp"))
    headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=abc", "User-Agent": "tests/1"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server.url}/v2/models/mlp/infer", data=FEATURES, headers=headers) as answer,
    ):
        assert answer.status == 200
        timing = server_timing(answer.headers["Server-Timing"])

    request, *stages = await finished(exporter, 5)
    assert (request.name, request.kind) == ("POST /v2/models/{name}/infer", SpanKind.SERVER)
    assert [stage.name for stage in stages] == ["deserialize", "queue", "compute", "serialize"]
    # The caller's trace, its span the parent; its tracestate carried on.
    assert format_trace_id(request.context.trace_id) == TRACE_ID
    assert format_span_id(request.parent.span_id) == PARENT_ID
    assert request.parent.is_remote
    assert request.context.trace_state.get("vendor") == "abc"
    assert all(stage.parent.span_id == request.context.span_id for stage in stages)
    assert all(stage.context.trace_id == request.context.trace_id for stage in stages)
    assert request.status.status_code is StatusCode.UNSET
    assert dict(request.attributes) == {
        "http.request.method": "POST",
        "http.route": "/v2/models/{name}/infer",
        "url.path": "/v2/models/mlp/infer",
        "url.scheme": "http",
        "network.protocol.version": "1.1",
        "server.address": "127.0.0.1",
        "server.port": int(server.url.rsplit(":", 1)[1]),
        "user_agent.original": "tests/1",
        "kubeserve.model.name": "mlp",
        "kubeserve.model.version": "1",
        "http.response.status_code": 200,
        "kubeserve.request.batch_size": 3,
    }
    assert dict(stages[2].attributes) == {"kubeserve.batch.size": 3}

    # Nested in the request's span, one after another, never overlapping.
    edges = [request.start_time]
    for stage in stages:
        assert edges[-1] <= stage.start_time <= stage.end_time
        edges.append(stage.end_time)
    assert edges[-1] == request.end_time
    # The times Server-Timing reports (one clock): each span lasts its stage's duration, to the header's rounding.
    for span in (*stages, request):
        stage = "total" if span is request else span.name
        assert abs((span.end_time - span.start_time) / 1e6 - timing[stage]) <= 0.0005 + 1e-6
    # Epoch nanoseconds, as the SDK's own clock has them.
    assert abs(request.end_time - time.time_ns()) < 5e9


async def test_an_image_classified_has_all_six_stages(serve_in_process, exporter):
    server = await serve_in_process("cnn", tracing=tracing_for(exporter, "cnn"), image_inputs=CNN_IMAGES)
    body, headers = classified_image()
    url = f"{server.url}/v2/models/cnn/versions/1/infer"
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as answer:
        assert answer.status == 200, await answer.text()

    request, *stages = await finished(exporter, 7)
    assert request.name == "POST /v2/models/{name}/versions/{version}/infer"
    assert [stage.name for stage in stages] == [
        "deserialize", "preprocess", "queue", "compute", "postprocess", "serialize",
    ]  # fmt: skip
    assert request.start_time <= stages[0].start_time and stages[-1].end_time == request.end_time
    assert all(a.end_time <= b.start_time for a, b in itertools.pairwise(stages))


async def test_a_handlers_code_runs_in_its_stages_span(serve_in_process, exporter):
    server = await serve_in_process(
        "mlp", tracing=tracing_for(exporter, "mlp"), handler="words_handler:Traced", handler_path=HANDLERS
    )
    import words_handler

    words_handler.CURRENT_SPANS.clear()
    body = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["cat"]}]}).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server.url}/v2/models/mlp/infer", data=body) as answer,
    ):
        assert answer.status == 200

    request, *stages = await finished(exporter, 7)
    spans = {stage.name: stage for stage in stages}
    assert list(spans) == ["deserialize", "preprocess", "queue", "compute", "postprocess", "serialize"]
    # Its plain preprocess (in a stage thread) and its async postprocess (on the loop) each ran with its stage's span
    # current: what the handler traces is a child of that stage, in the request's trace.
    assert [(stage, context.span_id) for stage, context in words_handler.CURRENT_SPANS] == [
        ("preprocess", spans["preprocess"].context.span_id),
        ("postprocess", spans["postprocess"].context.span_id),
    ]
    assert all(context.trace_id == request.context.trace_id for _, context in words_handler.CURRENT_SPANS)
    assert all(stage.parent.span_id == request.context.span_id for stage in stages)


async def test_a_v1_prediction_is_named_by_its_route_without_the_routes_pattern(serve_in_process, exporter):
    server = await serve_in_process("mlp", tracing=tracing_for(exporter, "mlp"))
    body = json.dumps({"instances": [[0.5] * 32]}).encode()
    url = f"{server.url}/v1/models/mlp:predict"
    async with aiohttp.ClientSession() as session, session.post(url, data=body) as answer:
        assert answer.status == 200

    request, *_stages = await finished(exporter, 5)
    assert request.name == "POST /v1/models/{name}:predict"
    assert request.attributes["http.route"] == "/v1/models/{name}:predict"
    assert request.parent is None  # no traceparent: a trace of its own


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("models.example:8443", {"server.address": "models.example", "server.port": 8443}),
        ("models.example", {"server.address": "models.example", "server.port": 80}),
        ("[::1]:8080", {"server.address": "::1", "server.port": 8080}),
        ("models.example:https", {}),  # not a port: no server attributes, and the request is served all the same
        ("[::1", {}),
    ],
)
async def test_the_server_attributes_come_from_the_host_header(serve_in_process, exporter, host, expected):
    server = await serve_in_process("mlp", tracing=tracing_for(exporter, "mlp"))
    url = f"{server.url}/v2/models/mlp/infer"
    async with aiohttp.ClientSession() as session, session.post(url, data=FEATURES, headers={"Host": host}) as answer:
        assert answer.status == 200

    request, *_stages = await finished(exporter, 5)
    found = {key: value for key, value in request.attributes.items() if key.startswith("server.")}
    assert found == expected


async def test_a_4xx_is_the_clients_error_and_a_5xx_the_servers(serve_in_process, exporter):
    server = await serve_in_process("mlp", tracing=tracing_for(exporter, "mlp"))
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.url}/v2/models/mlp/infer", data=b"{not json") as answer:
            assert answer.status == 400
        (client_error,) = await finished(exporter, 1)
        server.batcher.close()  # what a timed-out drain does: what arrives is refused
        async with session.post(f"{server.url}/v2/models/mlp/infer", data=FEATURES) as answer:
            assert answer.status == 503

    _, server_error = await finished(exporter, 2)
    assert client_error.attributes["http.response.status_code"] == 400
    assert client_error.status.status_code is StatusCode.UNSET
    assert "error.type" not in client_error.attributes
    assert server_error.attributes["http.response.status_code"] == 503
    assert server_error.attributes["error.type"] == "503"
    assert server_error.status.status_code is StatusCode.ERROR
    assert "draining" in server_error.status.description or "shutting down" in server_error.status.description
    # An error's span has no stage spans, and ends after it began.
    for span in (client_error, server_error):
        assert span.kind is SpanKind.SERVER and span.start_time <= span.end_time


async def test_the_access_log_names_the_trace_even_when_it_is_not_sampled(serve_in_process, exporter, caplog):
    server = await serve_in_process("mlp", tracing=tracing_for(exporter, "mlp"), access_log=True)
    unsampled = f"00-{TRACE_ID}-{PARENT_ID}-00"
    with caplog.at_level("INFO", logger="kubeserve.access"):
        async with aiohttp.ClientSession() as session:
            for traceparent in (TRACEPARENT, unsampled):
                url = f"{server.url}/v2/models/mlp/infer"
                async with session.post(url, data=FEATURES, headers={"traceparent": traceparent}) as answer:
                    assert answer.status == 200
            async with session.get(f"{server.url}/v2/health/live") as answer:
                assert answer.status == 200

    await server.state.wait_quiet()  # every request's exchange is over, as the drain waits for them ...
    await asyncio.sleep(0)  # ... and the span ends they scheduled (call_soon, before the last one left) have run
    server.state.tracing.provider.force_flush()
    spans = await finished(exporter, 5)
    assert len(spans) == 5  # the unsampled request exported nothing; health is not traced
    sampled, not_sampled, health = [record for record in caplog.records if record.name == "kubeserve.access"]
    assert (sampled.trace_id, sampled.span_id) == (TRACE_ID, format_span_id(spans[0].context.span_id))
    assert not_sampled.trace_id == TRACE_ID and len(not_sampled.span_id) == 16
    assert not hasattr(health, "trace_id")


def unit_request(route: str = "/v2/models/{name}/infer") -> Request:
    request = Request("POST", "/v2/models/mlp/infer", "", {}, b"")
    request.route = route
    return request


def test_a_request_whose_client_left_is_no_server_error(exporter):
    tracing = tracing_for(exporter, "mlp")
    arrived = time.perf_counter()
    tracing.start(unit_request(), arrived).failed(None, asyncio.CancelledError(), arrived + 0.001)

    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes["error.type"] == "client_disconnected"
    assert "http.response.status_code" not in span.attributes
    assert not span.events  # no exception recorded
    assert span.end_time - span.start_time == pytest.approx(1e6, abs=1e3)


def test_each_request_reads_the_wall_clock_afresh(exporter, monkeypatch):
    tracing = tracing_for(exporter, "mlp")
    step = 3600 * 10**9  # the wall clock stepped an hour between two requests; perf_counter did not
    wall = iter([10**18, 10**18 + step])
    monkeypatch.setattr(tracing_module, "time", SimpleNamespace(time_ns=lambda: next(wall), perf_counter_ns=lambda: 0))
    for _ in range(2):
        tracing.start(unit_request(), 5.0).failed(400, ValueError("bad"), 6.0)

    first, second = exporter.get_finished_spans()
    assert (first.start_time, first.end_time) == (10**18 + 5 * 10**9, 10**18 + 6 * 10**9)
    assert (second.start_time, second.end_time) == (first.start_time + step, first.end_time + step)


# -- when tracing is on -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "mlp", "OTEL_TRACES_SAMPLER": "always_on"}, False),  # nowhere to send spans
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": " None ", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_TRACES_EXPORTER": "", "OTEL_EXPORTER_OTLP_ENDPOINT": ""}, False),  # empty is unset
        ({"OTEL_SDK_DISABLED": "TRUE", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "console"}, True),
    ],
)
def test_tracing_is_on_when_the_environment_says_where_spans_go(environ, on):
    assert tracing_configured(environ) is on


@pytest.mark.parametrize(
    ("variable", "value"), [("OTEL_TRACES_EXPORTER", "carrier-pigeon"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]
)
def test_tracing_that_cannot_start_is_a_warning_and_the_server_serves_untraced(monkeypatch, caplog, variable, value):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv(variable, value)
    with caplog.at_level(logging.WARNING, logger="kubeserve.runtime"):
        assert start_tracing(RuntimeSettings(model_path="m.onnx", model_name="mlp"), os.environ) is None
    (warning,) = [record for record in caplog.records if getattr(record, "event", None) == "tracing_failed"]
    assert value in warning.reason


def test_with_tracing_off_the_request_path_imports_nothing_of_opentelemetry(models):
    """In a fresh interpreter: a request through the application, and no OpenTelemetry module loaded."""
    script = f"""
import asyncio, sys
from kubeserve.runtime.batcher import DynamicBatcher
from kubeserve.runtime.config import RuntimeSettings
from kubeserve.runtime.metrics import ServerMetrics
from kubeserve.runtime.model import OnnxModel
from kubeserve.runtime.server.inference_app import create_app
from kubeserve.runtime.server.lifecycle import start_tracing
from kubeserve.runtime.server.messages import Request
from kubeserve.runtime.server.state import LoadedModel, ServerState

async def main():
    settings = RuntimeSettings(model_path={str(models["mlp"])!r}, model_name="mlp", access_log=True)
    state = ServerState(settings, ServerMetrics("mlp", "1"), tracing=start_tracing(settings, {{}}))
    model = OnnxModel.load(settings.model_path, settings)
    state.loaded = LoadedModel(model, DynamicBatcher(model.run, state.batch_policy(True), state.metrics))
    headers = {{"host": "127.0.0.1", "traceparent": {TRACEPARENT!r}}}
    response = await create_app(state).handle(Request("POST", "/v2/models/mlp/infer", "", headers, {FEATURES!r}))
    await asyncio.sleep(0.01)
    assert response.status == 200, response.body
    assert state.tracing is None
    loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
    assert not loaded, loaded

asyncio.run(main())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "trace_id" not in result.stderr  # the access log line names no trace


# -- a real server exporting OTLP ---------------------------------------------------------------------------------


class Collector:
    """An OTLP/HTTP receiver on 127.0.0.1: every span exported to ``/v1/traces``, with its resource's attributes."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, str], object]] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                exported = ExportTraceServiceRequest.FromString(body)
                for resource_spans in exported.resource_spans:
                    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        collector.spans += [(resource, span) for span in scope_spans.spans]
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    receiver = Collector()
    yield receiver
    receiver.close()


def test_a_server_with_workers_exports_its_spans_over_otlp_and_its_drain_flushes_them(start_runtime, collector):
    environment = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_SERVICE_NAME": "mlp-isvc",
        "OTEL_RESOURCE_ATTRIBUTES": "k8s.namespace.name=ml,service.version=1",
        "OTEL_BSP_SCHEDULE_DELAY": "600000",  # nothing is exported on its own: only the drain's flush sends them
    }
    server = start_runtime("mlp", "--workers", "2", env=environment).wait_ready(workers=2)
    tracing = server.wait_for_events("tracing", 2)
    assert all(event["exporters"] == ["otlp_proto_http"] for event in tracing)
    requests = 6
    for index in range(requests):
        parent = f"00-{TRACE_ID[:-2]}{index:02x}-{PARENT_ID}-01"
        request = urllib.request.Request(
            f"{server.url}/v2/models/mlp/infer", FEATURES, {"traceparent": parent, "Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as answer:  # a connection each, spread over the workers
            assert answer.status == 200
    assert not collector.spans
    server.signal()
    assert server.wait() == 0

    servers = [span for _, span in collector.spans if span.kind == span.SPAN_KIND_SERVER]
    assert len(servers) == requests and len(collector.spans) == requests * 5
    assert sorted(span.trace_id.hex() for span in servers) == [f"{TRACE_ID[:-2]}{i:02x}" for i in range(requests)]
    resource, _ = collector.spans[0]
    assert (resource["service.name"], resource["k8s.namespace.name"], resource["service.version"]) == (
        "mlp-isvc",
        "ml",
        "1",
    )


def test_without_otel_variables_a_server_says_nothing_of_tracing(start_runtime):
    server = start_runtime("mlp").wait_ready()
    server.signal()
    assert server.wait() == 0
    assert not [event for event in server.events if event.get("event") in ("tracing", "tracing_failed")]
