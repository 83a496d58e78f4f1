"""How the workers of one pod read each other's statistics: each answers ``GET /stats`` on a Unix socket of its
own in the pod's run directory, and the worker a client asked sums them (Triton's statistics are per model, not
per process)."""

from __future__ import annotations

import asyncio
from typing import Any

from kubeserve.runtime.protocol.errors import InternalError
from kubeserve.runtime.server.application import Application
from kubeserve.runtime.server.connections import ConnectionTracker
from kubeserve.runtime.server.messages import Request, Response
from kubeserve.runtime.server.responses import json_response
from kubeserve.runtime.server.router import Router
from kubeserve.runtime.server.state import ServerState
from kubeserve.runtime.statistics import merge_model_stats

PEER_TIMEOUT_SECONDS = 5.0


def own_statistics(state: ServerState) -> dict[str, Any]:
    settings = state.settings
    return state.metrics.statistics.as_json(settings.model_name, settings.model_version)


async def _statistics(state: ServerState, request: Request) -> Response:
    return json_response(own_statistics(state))


async def answer_peers(state: ServerState) -> asyncio.Server:
    """Serve this worker's statistics on its socket; the caller closes the server."""
    assert state.worker is not None
    router = Router()
    router.get("/stats", _statistics)
    return await Application(state, router, ConnectionTracker()).listen_unix(
        str(state.worker.socket_path(state.worker.index))
    )


async def _peer_statistics(state: ServerState, index: int) -> dict[str, Any]:
    import aiohttp  # its client; a server without workers never needs it

    assert state.worker is not None
    connector = aiohttp.UnixConnector(path=str(state.worker.socket_path(index)))
    timeout = aiohttp.ClientTimeout(total=PEER_TIMEOUT_SECONDS)
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.get("http://worker/stats") as response,
        ):
            response.raise_for_status()
            return await response.json()
    except (aiohttp.ClientError, TimeoutError) as error:
        reason = str(error) or type(error).__name__  # a TimeoutError says nothing of itself
        raise InternalError(f"worker {index} did not report its statistics: {reason}") from error


async def pod_statistics(state: ServerState) -> dict[str, Any]:
    """The model's statistics over every worker in the pod (this one's alone when it is the only one)."""
    own = own_statistics(state)
    if state.worker is None:
        return own
    peers = await asyncio.gather(*(_peer_statistics(state, index) for index in state.worker.peers))
    return merge_model_stats([own, *peers])
