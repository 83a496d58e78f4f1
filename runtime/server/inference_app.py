"""The model server's application: Open Inference Protocol V2, KServe V1, health and metrics."""

from __future__ import annotations

from kubeserve.runtime.server.application import Application
from kubeserve.runtime.server.router import Router
from kubeserve.runtime.server.routes import setup_routes
from kubeserve.runtime.server.state import ServerState


def create_app(state: ServerState) -> Application:
    router = Router()
    setup_routes(router)
    return Application(state, router, state.connections, state.settings.access_log)
