"""The server's life: listen, load the model (then report ready), serve, and drain on SIGTERM.

Listening starts before the model loads, so liveness answers during a slow load. A model that cannot
load makes the server report why (logs, ``/ready``, the termination message) and exit 3; a port that
cannot be listened on, exit 4.

On SIGTERM or SIGINT readiness turns false at once while liveness stays true, and the listener closes
(new connections are refused). Requests on connections opened before the signal are served as usual,
each answer carrying ``Connection: close`` so that the client's pool moves elsewhere; queued batches go
out without waiting for their window. A connection with nothing on its way is closed once it has been
quiet for ``drain_grace_seconds``. The server exits 0 when no connection is left, or at
``drain_timeout_seconds``: then whatever is still queued or arrives is answered 503 (``draining``).

With ``workers`` above 1 a supervisor (``server.supervisor``) runs that many of these servers on the one port,
each as described here; ``kubeserve.runtime.workers`` says what they share.

Each server traces its inference requests when the ``OTEL_*`` variables ask for it (``start_tracing``), and
exports the spans it still holds once it has stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from kubeserve.runtime.batcher import DynamicBatcher
from kubeserve.runtime.config import GRPC, HTTP, MSG_GPU_WORKERS, RuntimeSettings
from kubeserve.runtime.logs import configure_logging
from kubeserve.runtime.metrics import ServerMetrics
from kubeserve.runtime.model import GPU_PROVIDERS, ModelLoadError, OnnxModel
from kubeserve.runtime.server.exits import EXIT_MODEL_LOAD_FAILED, EXIT_OK, listen_failed
from kubeserve.runtime.server.inference_app import create_app
from kubeserve.runtime.server.peers import answer_peers
from kubeserve.runtime.server.state import LoadedModel, ServerState
from kubeserve.runtime.termination import write_termination_message
from kubeserve.runtime.workers import STOP_SIGNALS, Heartbeat, WorkerContext

if TYPE_CHECKING:
    from kubeserve.runtime.grpc.server import GrpcServer
    from kubeserve.runtime.server.tracing import Tracing

log = logging.getLogger("kubeserve.runtime")

# After a timed-out drain, answers still being made get this long to be written.
SHUTDOWN_TIMEOUT_SECONDS = 1.0
# OpenTelemetry's variables that say where spans go: tracing is on when one is set (and the SDK not disabled). The
# specification's default exporter is otlp to localhost; this server exports nothing unless told where.
EXPORTER_VARIABLES = ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def serve(settings: RuntimeSettings) -> int:
    """The server alone in its process (``workers: 1``)."""
    configure_logging(settings.log_level)
    return run_server(settings)


def run_server(settings: RuntimeSettings, worker: WorkerContext | None = None) -> int:
    """One server process on its own event loop (uvloop where installed) until it stops; its exit code."""
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    tracing = start_tracing(settings, os.environ)
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(_serve(settings, worker, tracing))
    finally:
        if tracing is not None:
            tracing.shutdown()  # the spans still held are exported, the event loop closed: nothing waits on it


def tracing_configured(environ: Mapping[str, str]) -> bool:
    """Whether the environment asks for spans: an exporter other than ``none``, or (none named) an OTLP endpoint,
    and ``OTEL_SDK_DISABLED`` not ``true``. An empty variable is an unset one, as OpenTelemetry reads them."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter, *endpoints = (environ.get(name, "").strip() for name in EXPORTER_VARIABLES)
    return exporter.lower() != "none" if exporter else any(endpoints)


def start_tracing(settings: RuntimeSettings, environ: Mapping[str, str]) -> Tracing | None:
    """This process's tracing when the environment asks for it (``tracing_configured``); None otherwise, and then
    OpenTelemetry is not even imported. Tracing that cannot start is a warning: the server serves untraced."""
    if not tracing_configured(environ):
        return None
    try:
        from kubeserve.runtime.server.tracing import Tracing, TracingError
    except ImportError as error:
        reason = f"{error}: pip install 'kubeserve[tracing]'"
        log.warning("tracing is configured but cannot start", extra={"event": "tracing_failed", "reason": reason})
        return None
    try:
        return Tracing.from_environment(settings)
    except TracingError as error:
        log.warning("tracing is configured but cannot start", extra={"event": "tracing_failed", "reason": str(error)})
        return None


async def _serve(settings: RuntimeSettings, worker: WorkerContext | None, tracing: Tracing | None) -> int:
    metrics = ServerMetrics(settings.model_name, settings.model_version)
    state = ServerState(settings, metrics, worker=worker, tracing=tracing)
    # Signals first: a worker starts with them blocked (server.supervisor), and takes them from here on.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    heartbeat = Heartbeat(worker) if worker is not None else None
    if heartbeat is not None:
        heartbeat.start()
    listener: asyncio.Server | None = None
    grpc_server: GrpcServer | None = None
    try:
        if HTTP in settings.protocols:
            listener = await create_app(state).listen(settings.host, settings.port, reuse_port=worker is not None)
        if GRPC in settings.protocols:
            from kubeserve.runtime.grpc.server import start_grpc  # gRPC's modules only where it is served

            grpc_server = await start_grpc(state, reuse_port=worker is not None)
    except OSError as error:
        if listener is not None:
            listener.close()
        return listen_failed(settings, error)
    if listener is not None:
        host, port = listener.sockets[0].getsockname()[:2]
        log.info("listening", extra={"event": "listening", "host": host, "port": port, "model": settings.model_name})
    if grpc_server is not None:
        log.info(
            "listening for gRPC",
            extra={
                "event": "grpc_listening",
                "host": settings.host,
                "port": grpc_server.port,
                "model": settings.model_name,
            },
        )
    peers = await answer_peers(state) if worker is not None else None

    exit_code = EXIT_OK
    loading = asyncio.create_task(_load(state))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if loading.done() and state.loaded is None:
        exit_code = EXIT_MODEL_LOAD_FAILED
        # Keep answering /ready with the reason for a while, so a person (or the operator) can read it.
        if settings.load_failure_exit_seconds > 0:
            log.info(
                "exiting after load_failure_exit_seconds; /ready reports why meanwhile",
                extra={"event": "exit_delayed", "seconds": settings.load_failure_exit_seconds},
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.load_failure_exit_seconds)
    elif loading.done():
        await stop.wait()
        await _drain(state, listener, grpc_server)
    else:
        log.info("stopping before the model loaded", extra={"event": "stopping"})
    loading.cancel()
    stopping.cancel()
    if listener is not None:
        listener.close()
    if state.loaded is not None:
        state.loaded.batcher.close()  # after a timed-out drain: whatever is still queued is answered 503
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(state.wait_quiet(), SHUTDOWN_TIMEOUT_SECONDS)  # let those 503s be written
    if grpc_server is not None:
        await grpc_server.stop(None)  # calls still open past the drain are cancelled (their 503s were written above)
    state.connections.close_all()
    state.stages.close()
    if state.loaded is not None:
        state.loaded.model.processing.close()  # a handler's processes
    if peers is not None:
        peers.close()
    if heartbeat is not None:
        heartbeat.stop()
    log.info(
        "stopped",
        extra={
            "event": "stopped",
            "exit_code": exit_code,
            "accepted": state.accepted,
            "answered": state.answered,
            "refused": state.refused,
            "unanswered": state.in_flight,
            "connections_closed_idle": state.connections.closed_idle,
            "connections_timed_out": state.connections.timed_out,
            "connections_closed_with_request_unread": state.connections.closed_with_request_unread,
        },
    )
    return exit_code


async def _load(state: ServerState) -> None:
    settings = state.settings
    started = time.perf_counter()
    log.info("loading model", extra={"event": "model_loading", "path": str(settings.model_path)})
    try:
        model = await asyncio.to_thread(OnnxModel.load, settings.model_path, settings)
        if state.worker is not None and model.providers[0] in GPU_PROVIDERS:
            raise ModelLoadError(MSG_GPU_WORKERS)
    except Exception as error:  # a model that cannot load is reported, whatever the cause
        state.load_error = str(error) if isinstance(error, ModelLoadError) else f"{type(error).__name__}: {error}"
        state.publish()
        log.error("model failed to load", extra={"event": "model_load_failed", "reason": state.load_error})
        write_termination_message(settings.termination_message_path, f"model failed to load: {state.load_error}")
        return
    seconds = time.perf_counter() - started
    batchable = model.signature.batchable
    if settings.max_batch_size and not batchable:
        log.info(
            "the model has no dynamic batch dimension: requests run unbatched",
            extra={"event": "batching_disabled"},
        )
    processing = model.processing
    batcher = DynamicBatcher(
        model.run,
        state.batch_policy(batchable),
        state.metrics,
        preprocess=processing.batch_preprocess,
        postprocess=processing.batch_postprocess,
    )
    state.loaded = LoadedModel(model, batcher)
    state.publish()
    state.metrics.model_load_seconds.set(seconds)
    state.metrics.model_ready.set(1)
    log.info(
        "model ready",
        extra={
            "event": "model_ready",
            "seconds": round(seconds, 3),
            "providers": model.providers,
            "warmup": model.warmup,
            **model.optimization.as_parameters(),
            "inputs": {s.name: [s.datatype.name, list(s.shape)] for s in model.signature.inputs},
            "outputs": {s.name: [s.datatype.name, list(s.shape)] for s in model.signature.outputs},
            "image_inputs": sorted(model.processing.images),
            "labels": len(model.processing.labels),
            "handler": settings.handler,
            "max_batch_size": state.loaded.batcher.policy.max_batch_size,
        },
    )


async def _drain(state: ServerState, listener: asyncio.Server | None, grpc_server: GrpcServer | None) -> None:
    """Serve what the open connections still send, each answer closing its connection; close idle ones once
    quiet; stop when no connection is left, or at the drain timeout. gRPC alike: GOAWAY, calls in progress served
    (a stream as long as it is used: ``grpc.service``), the server stopped when none is left."""
    settings = state.settings
    loop = asyncio.get_running_loop()
    signalled = loop.time()
    state.draining = True
    state.publish()
    state.metrics.model_ready.set(0)
    if listener is not None:
        listener.close()  # new connections are refused: nothing was sent on them, any client may retry elsewhere
    # New calls are refused (GOAWAY); those in progress have until the drain's timeout.
    grpc_stopped = (
        asyncio.ensure_future(grpc_server.stop(settings.drain_timeout_seconds)) if grpc_server is not None else None
    )
    log.info(
        "draining",
        extra={
            "event": "draining",
            "in_flight": state.in_flight,
            "connections": len(state.connections),
            "timeout_seconds": settings.drain_timeout_seconds,
        },
    )
    assert state.loaded is not None
    try:
        async with asyncio.timeout(settings.drain_timeout_seconds):
            state.loaded.batcher.flush()
            await state.connections.close_when_quiet(since=signalled, grace=settings.drain_grace_seconds)
            if grpc_stopped is not None:
                await asyncio.shield(grpc_stopped)
            await state.wait_quiet()  # a handler whose client went away still finishes its compute
    except TimeoutError:
        log.warning(
            "drain timed out; answering what is left with 503",
            extra={"event": "drain_timeout", "in_flight": state.in_flight, "connections": len(state.connections)},
        )
        return
    log.info("drained", extra={"event": "drained", "accepted": state.accepted, "answered": state.answered})
