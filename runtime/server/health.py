"""Liveness, readiness and server metadata."""

from __future__ import annotations

from kubeserve.runtime import __version__
from kubeserve.runtime.server.messages import Request, Response
from kubeserve.runtime.server.responses import json_response
from kubeserve.runtime.server.state import ServerState

EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "parameters", "statistics"]


async def live(state: ServerState, request: Request) -> Response:
    """Alive as long as the process runs, draining included: the kubelet must not restart a drain."""
    return json_response({"live": True})


async def ready(state: ServerState, request: Request) -> Response:
    if state.ready:
        return json_response({"ready": True})
    return json_response({"ready": False, "reason": state.not_ready_reason}, status=503)


async def root(state: ServerState, request: Request) -> Response:
    """KServe V1 clients check liveness here."""
    return json_response({"status": "alive"})


async def server_metadata(state: ServerState, request: Request) -> Response:
    return json_response({"name": "kubeserve", "version": __version__, "extensions": EXTENSIONS})
