"""OpenTelemetry traces of inference requests, when the standard ``OTEL_*`` variables ask for them
(``lifecycle.start_tracing``; docs/guide/observability.md): only then are this module and OpenTelemetry imported.

Each inference request is one span of kind SERVER, named as OpenTelemetry's HTTP conventions name a server's
(``POST /v2/models/{name}/infer``: the method and the route), with one child span per stage it went through
(``Exchange.stage_bounds``: deserialize, preprocess, queue, compute, postprocess, serialize). Their times are those
the exchange took for its metrics (``time.perf_counter``), made nanoseconds since the epoch by an offset read once
per request, at its arrival (``time.time_ns`` less ``time.perf_counter_ns``: about 0.2 µs), so that spans follow the
wall clock as it is stepped or slewed on a long-lived pod: the children nest in their request's span exactly, and
requests computed in one batch show the same compute span to within the clocks' drift between their arrivals. A W3C
``traceparent`` (with its ``tracestate``) on the request makes the span its child. A 5xx sets the span's status to
ERROR; a 4xx is the client's error, not the server's, and leaves it unset; so does a request whose client left.

Each server process (worker) has its own tracer provider, exporting through a batch span processor (a thread of its
own) to the exporters ``OTEL_TRACES_EXPORTER`` names; the SDK reads the rest of its variables itself (the endpoint,
headers and timeout, the sampler, the resource, the batch processor's limits). ``shutdown`` exports what is left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from kubeserve.runtime import __version__
from kubeserve.runtime.config import RuntimeSettings
from kubeserve.runtime.protocol.errors import InferenceError
from kubeserve.runtime.server.messages import Request
from opentelemetry import trace
from opentelemetry.context import Context, attach, detach
from opentelemetry.environment_variables import OTEL_TRACES_EXPORTER
from opentelemetry.sdk.environment_variables import OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_EXPORTER_OTLP_TRACES_PROTOCOL
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.http_attributes import (
    HTTP_REQUEST_METHOD,
    HTTP_RESPONSE_STATUS_CODE,
    HTTP_ROUTE,
)
from opentelemetry.semconv.attributes.network_attributes import NETWORK_PROTOCOL_VERSION
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.semconv.attributes.url_attributes import URL_PATH, URL_SCHEME
from opentelemetry.semconv.attributes.user_agent_attributes import USER_AGENT_ORIGINAL
from opentelemetry.trace import Span, SpanKind, StatusCode, format_span_id, format_trace_id, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from kubeserve.runtime.batcher import Job
    from kubeserve.runtime.server.exchange import StageBounds

log = logging.getLogger("kubeserve.runtime")
T = TypeVar("T")

# Our attributes: on the request's span, the model and the request's batch size (its rows: the first dimension of
# its inputs, as Triton counts a request's); on its compute span, the rows of the batch it was computed in.
MODEL_NAME = "kubeserve.model.name"
MODEL_VERSION = "kubeserve.model.version"
REQUEST_BATCH_SIZE = "kubeserve.request.batch_size"
BATCH_SIZE = "kubeserve.batch.size"
# error.type of a request whose client went away before its answer (asyncio.CancelledError).
CLIENT_DISCONNECTED = "client_disconnected"
# Without OTEL_SERVICE_NAME (or service.name in OTEL_RESOURCE_ATTRIBUTES); the operator sets the InferenceService's.
DEFAULT_SERVICE_NAME = "kubeserve-runtime"
# The exporter OTEL_TRACES_EXPORTER's "otlp" means, by the protocol OTLP is configured with; http/protobuf (the
# specification's default, and the one the runtime images install) unless it says otherwise.
OTLP_EXPORTERS = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}
DEFAULT_OTLP_PROTOCOL = "http/protobuf"
EXPORTER_ENTRY_POINTS = "opentelemetry_traces_exporter"  # where exporter packages register their names
SCHEME_PORT = 80  # server.port of a Host without one: the default of url.scheme (http)


class TracingError(Exception):
    """The environment asks for tracing this installation cannot do; the message says why."""


def span_exporters() -> list[tuple[str, SpanExporter]]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names (``otlp`` when it is unset and only an endpoint is given), each
    made by the entry point its package registers under that name, as OpenTelemetry's auto-configuration makes them."""
    names = os.environ.get(OTEL_TRACES_EXPORTER, "").strip() or "otlp"
    exporters = []
    for name in (part.strip() for part in names.split(",")):
        if name == "none":
            continue
        if name == "otlp":
            protocol = (
                os.environ.get(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL)
                or os.environ.get(OTEL_EXPORTER_OTLP_PROTOCOL)
                or DEFAULT_OTLP_PROTOCOL
            ).strip()
            if protocol not in OTLP_EXPORTERS:
                raise TracingError(f"OTLP protocol {protocol!r} is not one of {', '.join(OTLP_EXPORTERS)}")
            name = OTLP_EXPORTERS[protocol]
        found = entry_points(group=EXPORTER_ENTRY_POINTS, name=name)
        if not found:
            raise TracingError(f"{OTEL_TRACES_EXPORTER} names {name!r}, and no span exporter of that name is installed")
        exporters.append((name, next(iter(found)).load()()))
    return exporters


def _resource() -> Resource:
    """The SDK's resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``), named ``DEFAULT_SERVICE_NAME`` when
    they name no service."""
    named = SERVICE_NAME in OTELResourceDetector().detect().attributes
    return Resource.create({} if named else {SERVICE_NAME: DEFAULT_SERVICE_NAME})


def _server(host: str) -> dict[str, str | int]:
    """``server.address`` and ``server.port`` as a ``Host`` header names them; nothing from one that is not
    ``host[:port]`` (the request is served all the same)."""
    try:
        authority = urlsplit(f"//{host}")
        port = authority.port or SCHEME_PORT
    except ValueError:  # a port that is not one, an IPv6 address without its closing bracket
        return {}
    return {SERVER_ADDRESS: authority.hostname, SERVER_PORT: port} if authority.hostname else {}


class Tracing:
    """One server process's tracing: a span per inference request (``start``), exported by ``provider``'s span
    processors."""

    def __init__(self, provider: TracerProvider, settings: RuntimeSettings) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("kubeserve.runtime", __version__)
        self._propagator = TraceContextTextMapPropagator()
        self._model = {MODEL_NAME: settings.model_name, MODEL_VERSION: settings.model_version}

    @classmethod
    def from_environment(cls, settings: RuntimeSettings) -> Tracing:
        """Tracing as the ``OTEL_*`` variables configure it, a batch span processor per exporter."""
        exporters = span_exporters()
        provider = TracerProvider(resource=_resource(), shutdown_on_exit=False)  # shut down by the server
        for _, exporter in exporters:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        # The process's global provider too: a handler's own spans (``trace.get_tracer(...)``) go where the server's
        # go, children of the stage they are made in (``RequestSpan.in_stage``). Once per process: a server process
        # starts one Tracing.
        trace.set_tracer_provider(provider)
        log.info(
            "tracing inference requests",
            extra={
                "event": "tracing",
                "exporters": [name for name, _ in exporters],
                "service_name": provider.resource.attributes[SERVICE_NAME],
            },
        )
        return cls(provider, settings)

    def start(self, request: Request, arrived: float) -> RequestSpan:
        """The span of an inference request that arrived at ``arrived`` (``time.perf_counter()``), the child of the
        span its ``traceparent`` names, if any."""
        headers = request.headers
        attributes: dict[str, str | int] = {
            HTTP_REQUEST_METHOD: request.method,
            HTTP_ROUTE: request.route,
            URL_PATH: request.path,
            URL_SCHEME: "http",
            NETWORK_PROTOCOL_VERSION: request.version,
            **self._model,
        }
        host = headers.get("host")
        if host:
            attributes.update(_server(host))
        agent = headers.get("user-agent")
        if agent is not None:
            attributes[USER_AGENT_ORIGINAL] = agent
        # perf_counter()'s nanoseconds + this: nanoseconds since the epoch, for this request's span and its children.
        epoch_offset = time.time_ns() - time.perf_counter_ns()
        span = self.tracer.start_span(
            f"{request.method} {request.route}",
            self._propagator.extract(headers),
            SpanKind.SERVER,
            attributes,
            start_time=round(arrived * 1e9) + epoch_offset,
        )
        return RequestSpan(self, span, epoch_offset)

    def shutdown(self) -> None:
        """Export what the span processors hold, and stop them (blocking: not on the event loop)."""
        self.provider.shutdown()


class RequestSpan:
    """One inference request's span, from its arrival; ``answered`` or ``failed`` ends it."""

    __slots__ = ("_epoch_offset", "_running", "_span", "_tracing")

    def __init__(self, tracing: Tracing, span: Span, epoch_offset: int) -> None:
        self._tracing = tracing
        self._span = span
        self._epoch_offset = epoch_offset
        # The spans of the stages a handler's code runs in, started with their stage, ended with the request's.
        self._running: dict[str, Span] = {}

    def in_stage(self, stage: str, start: float, function: Callable[..., T]) -> Callable[..., T]:
        """``function`` made to run with ``stage``'s span (started at ``start``, ``time.perf_counter()``) as the
        current span, in whichever thread calls it: spans the handler's code makes are the stage's children (not
        in a pool of processes, ``holds_gil``: those have no tracer). As it is when the request is not sampled."""
        if not self._span.is_recording():
            return function
        context = self._stage_context(stage, start)

        def in_context(*args: Any) -> T:
            token = attach(context)
            try:
                return function(*args)
            finally:
                detach(token)

        return in_context

    def in_stage_on_loop(
        self, stage: str, start: float, function: Callable[..., Awaitable[T]]
    ) -> Callable[..., Awaitable[T]]:
        """``in_stage`` for a stage awaited on the event loop (``async def``)."""
        if not self._span.is_recording():
            return function
        context = self._stage_context(stage, start)

        async def in_context(*args: Any) -> T:
            token = attach(context)
            try:
                return await function(*args)
            finally:
                detach(token)

        return in_context

    def _stage_context(self, stage: str, start: float) -> Context:
        """A context whose current span is ``stage``'s, started now unless the stage has one already."""
        span = self._running.get(stage)
        if span is None:
            parent = set_span_in_context(self._span)
            span = self._tracing.tracer.start_span(stage, parent, start_time=self.nanoseconds(start))
            self._running[stage] = span
        return set_span_in_context(span)

    def nanoseconds(self, seconds: float) -> int:
        """A ``time.perf_counter()`` time as nanoseconds since the epoch, by this request's offset."""
        return round(seconds * 1e9) + self._epoch_offset

    def log_fields(self) -> dict[str, str]:
        """The request's trace and span, for its log lines."""
        context = self._span.get_span_context()
        return {"trace_id": format_trace_id(context.trace_id), "span_id": format_span_id(context.span_id)}

    def answered(self, bounds: Sequence[StageBounds], job: Job) -> None:
        """A 200: a child span per stage of ``bounds`` (``Exchange.stage_bounds``: the stages, then the total, whose
        end is the span's)."""
        tracer, span, nanoseconds = self._tracing.tracer, self._span, self.nanoseconds
        *stages, (_total, _arrived, done) = bounds
        if span.is_recording():  # sampled
            parent = set_span_in_context(span)
            for stage, start, end in stages:
                child = self._running.pop(stage, None) or tracer.start_span(
                    stage, parent, start_time=nanoseconds(start)
                )
                if stage == "compute":
                    child.set_attribute(BATCH_SIZE, job.batch_rows)
                child.end(nanoseconds(end))
            span.set_attributes({HTTP_RESPONSE_STATUS_CODE: 200, REQUEST_BATCH_SIZE: job.rows})
        span.end(nanoseconds(done))

    def failed(self, status: int | None, error: BaseException, ended: float) -> None:
        """An error answered with ``status`` (None: not answered) at ``ended`` (``time.perf_counter()``). A 5xx, or
        none, is the server's error: status ERROR, with ``error.type``; an unexpected exception is recorded too. A
        request whose client left (``asyncio.CancelledError``) is not: ``error.type`` alone says so."""
        span = self._span
        for running in self._running.values():  # a stage's, cut short with its request
            running.end(self.nanoseconds(ended))
        self._running.clear()
        if status is not None:
            span.set_attribute(HTTP_RESPONSE_STATUS_CODE, status)
        if isinstance(error, asyncio.CancelledError):
            # The HTTP conventions ask for error.type on a cancelled request (their server example of a dropped
            # connection has it), and let an instrumentation that knows more set the status more precisely: the
            # client went away, no fault of the server's, so the status stays unset as a 4xx's does.
            span.set_attribute(ERROR_TYPE, CLIENT_DISCONNECTED)
        elif status is None or status >= 500:
            span.set_attribute(ERROR_TYPE, type(error).__qualname__ if status is None else str(status))
            span.set_status(StatusCode.ERROR, str(error) or None)
            if not isinstance(error, InferenceError):
                span.record_exception(error)
        span.end(self.nanoseconds(ended))
