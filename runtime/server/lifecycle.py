"""The server's life: listen, load the model (then report ready), serve, and drain on SIGTERM.

Listening starts before the model loads, so liveness answers during a slow load. A model that cannot
load makes the server report why (logs, ``/ready``, the termination message) and exit 3. On SIGTERM or
SIGINT readiness turns false at once while liveness stays true; idle keep-alive connections close,
responses carry ``Connection: close``, queued batches go out without waiting to fill, and the server
exits 0 once every accepted request is answered (at most ``drain_timeout_seconds`` later).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

from aiohttp import web
from kubeserve.runtime.batcher import DynamicBatcher
from kubeserve.runtime.config import RuntimeSettings
from kubeserve.runtime.logs import configure_logging
from kubeserve.runtime.metrics import ServerMetrics
from kubeserve.runtime.model import ModelLoadError, OnnxModel
from kubeserve.runtime.server.app import create_app
from kubeserve.runtime.server.state import LoadedModel, ServerState
from kubeserve.runtime.termination import write_termination_message

log = logging.getLogger("kubeserve.runtime")

EXIT_OK = 0
EXIT_MODEL_LOAD_FAILED = 3
# How long a connection accepted just before the listener closed may take to send its request.
FRESH_CONNECTION_GRACE = 1.0
CONNECTION_POLL_SECONDS = 0.01


def serve(settings: RuntimeSettings) -> int:
    configure_logging(settings.log_level)
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_serve(settings))


async def _serve(settings: RuntimeSettings) -> int:
    state = ServerState(settings, ServerMetrics(settings.model_name, settings.model_version))
    runner = web.AppRunner(
        create_app(state),
        handle_signals=False,
        # After the drain (or its timeout), handlers still running get this long before they are cancelled.
        shutdown_timeout=1.0,
        access_log=logging.getLogger("aiohttp.access") if settings.access_log else None,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
    await site.start()
    address = runner.addresses[0]
    log.info(
        "listening",
        extra={"event": "listening", "host": address[0], "port": address[1], "model": settings.model_name},
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    exit_code = EXIT_OK
    drained = False
    loading = asyncio.create_task(_load(state))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if loading.done() and state.loaded is None:
        exit_code = EXIT_MODEL_LOAD_FAILED
        # Keep answering /ready with the reason for a while, so a person (or the operator) can read it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.load_failure_exit_seconds)
    elif loading.done():
        await stop.wait()
        drained = await _drain(state, runner, site)
    else:
        log.info("stopping before the model loaded", extra={"event": "stopping"})
    loading.cancel()
    stopping.cancel()
    batcher = state.loaded.batcher if state.loaded is not None else None
    if batcher is not None and not drained:
        batcher.close()  # a timed-out drain: what is still queued is answered 503 before connections close
    await runner.cleanup()  # closes connections; a request still running gets shutdown_timeout to finish
    if batcher is not None:
        batcher.close()
    log.info(
        "stopped",
        extra={
            "event": "stopped",
            "exit_code": exit_code,
            "accepted": state.accepted,
            "unanswered": state.in_flight,
        },
    )
    return exit_code


async def _load(state: ServerState) -> None:
    settings = state.settings
    started = time.perf_counter()
    log.info("loading model", extra={"event": "model_loading", "path": str(settings.model_path)})
    try:
        model = await asyncio.to_thread(OnnxModel.load, settings.model_path, settings)
    except Exception as error:  # a model that cannot load is reported, whatever the cause
        state.load_error = str(error) if isinstance(error, ModelLoadError) else f"{type(error).__name__}: {error}"
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
    state.loaded = LoadedModel(model, DynamicBatcher(model.run, state.batch_policy(batchable), state.metrics))
    state.metrics.model_load_seconds.set(seconds)
    state.metrics.model_ready.set(1)
    log.info(
        "model ready",
        extra={
            "event": "model_ready",
            "seconds": round(seconds, 3),
            "providers": model.providers,
            "inputs": {s.name: [s.datatype.name, list(s.shape)] for s in model.signature.inputs},
            "outputs": {s.name: [s.datatype.name, list(s.shape)] for s in model.signature.outputs},
            "max_batch_size": state.loaded.batcher.policy.max_batch_size,
        },
    )


async def _drain(state: ServerState, runner: web.AppRunner, site: web.TCPSite) -> bool:
    """Whether every accepted request was answered within the drain timeout."""
    settings = state.settings
    state.draining = True
    state.metrics.model_ready.set(0)
    log.info(
        "draining",
        extra={"event": "draining", "in_flight": state.in_flight, "timeout_seconds": settings.drain_timeout_seconds},
    )
    _close_idle_connections(runner)
    assert state.loaded is not None
    try:
        async with asyncio.timeout(settings.drain_timeout_seconds):
            await state.loaded.batcher.drain()
            await state.wait_quiet()
            # Stop listening, then answer whatever arrived before the listener closed.
            await site.stop()
            await _settle_connections(state, runner)
    except TimeoutError:
        log.warning(
            "drain timed out; answering what is left with 503",
            extra={"event": "drain_timeout", "in_flight": state.in_flight},
        )
        return False
    log.info("drained", extra={"event": "drained", "accepted": state.accepted})
    return True


async def _settle_connections(state: ServerState, runner: web.AppRunner) -> None:
    """Once the listener is closed, wait until every connection has closed: busy ones after their response,
    idle ones at once. A connection accepted just before the listener closed gets FRESH_CONNECTION_GRACE
    seconds to send its request; aiohttp's own cleanup would cut such a request off mid-body."""
    loop = asyncio.get_running_loop()
    silent_until = loop.time() + FRESH_CONNECTION_GRACE
    while runner.server is not None and runner.server.connections:
        await state.wait_quiet()
        _close_idle_connections(runner)
        if not runner.server.connections or (state.in_flight == 0 and loop.time() >= silent_until):
            return
        await asyncio.sleep(CONNECTION_POLL_SECONDS)


def _close_idle_connections(runner: web.AppRunner) -> None:
    """Close keep-alive connections waiting for a next request. Busy ones close after their response
    (``Connection: close``), brand-new ones after their first request.

    aiohttp's own ``pre_shutdown()`` will not do: its ``close()`` makes a busy connection drop the rest of a
    request body still on its way, and leaves an idle one's socket open. Which connections are idle is
    aiohttp's private state: pinned in constraints.txt and covered by the drain tests, which fail if it
    changes."""
    if runner.server is None:
        return
    for connection in runner.server.connections:
        if _waits_for_next_request(connection):
            connection.force_close()


def _waits_for_next_request(connection: object) -> bool:
    # A wait not yet answered, no request parsed and pending, and at least one request served already.
    waiter = getattr(connection, "_waiter", None)
    return (
        waiter is not None
        and not waiter.done()
        and not getattr(connection, "_messages", None)
        and getattr(connection, "_request_count", 0) > 0
    )
