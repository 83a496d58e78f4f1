"""How the workers of one pod read each other's statistics and metrics: each answers ``GET /stats`` and
``GET /metrics`` (its metric families as JSON: ``metrics.metric_families``) on a Unix socket of its own in the pod's
run directory, and the worker a client asked makes them one (Triton's statistics are per model, and Prometheus
scrapes a pod, not a process)."""

from __future__ import annotations

import asyncio
import importlib
import json
from typing import Any

import orjson
from kubeserve.runtime.metrics import merge_metrics, metric_families
from kubeserve.runtime.protocol.errors import InternalError
from kubeserve.runtime.server.application import Application
from kubeserve.runtime.server.connections import ConnectionTracker
from kubeserve.runtime.server.messages import Request, Response
from kubeserve.runtime.server.responses import json_response
from kubeserve.runtime.server.router import Router
from kubeserve.runtime.server.state import ServerState
from kubeserve.runtime.statistics import merge_model_stats
from prometheus_client import CollectorRegistry

PEER_TIMEOUT_SECONDS = 5.0


def own_statistics(state: ServerState) -> dict[str, Any]:
    settings = state.settings
    return state.metrics.statistics.as_json(settings.model_name, settings.model_version)


async def _statistics(state: ServerState, request: Request) -> Response:
    return json_response(own_statistics(state))


async def _metric_families(state: ServerState, request: Request) -> Response:
    # The standard library's JSON: a gauge may be NaN or infinite, which orjson would write as null.
    return Response(json.dumps(metric_families(state.metrics.registry)).encode())


async def answer_peers(state: ServerState) -> asyncio.Server:
    """Serve this worker's statistics and metrics on its socket, and load the client that asks the other workers
    for theirs (``_ask_peer``); the caller closes the server."""
    assert state.worker is not None
    # Loaded now, at the worker's start: its import blocks the event loop for 150-200 ms, which the first scrape
    # would otherwise cost every request then in flight.
    importlib.import_module("aiohttp")
    router = Router()
    router.get("/stats", _statistics)
    router.get("/metrics", _metric_families)
    return await Application(state, router, ConnectionTracker()).listen_unix(
        str(state.worker.socket_path(state.worker.index))
    )


async def _ask_peer(state: ServerState, index: int, path: str, what: str) -> bytes:
    import aiohttp  # its client, loaded by answer_peers; a server without workers never needs it

    assert state.worker is not None
    connector = aiohttp.UnixConnector(path=str(state.worker.socket_path(index)))
    timeout = aiohttp.ClientTimeout(total=PEER_TIMEOUT_SECONDS)
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.get(f"http://worker{path}") as response,
        ):
            response.raise_for_status()
            return await response.read()
    except (aiohttp.ClientError, TimeoutError) as error:
        reason = str(error) or type(error).__name__  # a TimeoutError says nothing of itself
        raise InternalError(f"worker {index} did not report its {what}: {reason}") from error


async def pod_statistics(state: ServerState) -> dict[str, Any]:
    """The model's statistics over every worker in the pod (this one's alone when it is the only one)."""
    own = own_statistics(state)
    if state.worker is None:
        return own
    peers = await asyncio.gather(*(_ask_peer(state, i, "/stats", "statistics") for i in state.worker.peers))
    return merge_model_stats([own, *(orjson.loads(peer) for peer in peers)])


async def pod_metrics(state: ServerState) -> CollectorRegistry:
    """The pod's metrics: this process's registry, or every worker's merged (``metrics.merge_metrics``)."""
    if state.worker is None:
        return state.metrics.registry
    peers = await asyncio.gather(*(_ask_peer(state, i, "/metrics", "metrics") for i in state.worker.peers))
    return merge_metrics([metric_families(state.metrics.registry), *(json.loads(peer) for peer in peers)])
