"""The aiohttp application: state, middleware and routes."""

from __future__ import annotations

from aiohttp import web
from kubeserve.runtime.server.middleware import errors_and_drain
from kubeserve.runtime.server.routes import setup_routes
from kubeserve.runtime.server.state import STATE, ServerState


def create_app(state: ServerState) -> web.Application:
    app = web.Application(client_max_size=state.settings.max_request_bytes, middlewares=[errors_and_drain])
    app[STATE] = state
    setup_routes(app)
    return app
