"""One middleware: every failure becomes ``{"error": ...}`` with its status; each request is counted on its
connection (the drain closes only connections with nothing on their way); and a draining server answers
with ``Connection: close`` so that clients reconnect to a pod that stays."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler
from kubeserve.runtime.protocol.errors import InferenceError
from kubeserve.runtime.server.responses import error_response, json_response
from kubeserve.runtime.server.state import STATE

log = logging.getLogger(__name__)


def _http_error(error: web.HTTPException, request: web.Request) -> web.Response:
    if error.status == 404:
        message = f"no such endpoint: {request.method} {request.path}"
    elif error.status == 405:
        message = f"method {request.method} is not allowed on {request.path}"
    else:
        message = error.text or error.reason
    headers = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
    return json_response({"error": message}, status=error.status, headers=headers)


@web.middleware
async def errors_and_drain(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    connection = state.connections.of(request.transport)
    if connection is not None:
        connection.request_started()
    try:
        response = await _answer(request, handler)
    finally:
        if connection is not None:
            connection.request_finished()
    if state.draining:
        response.force_close()
    return response


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except InferenceError as error:
        return error_response(error)
    except web.HTTPException as error:
        return _http_error(error, request)
    except Exception:
        log.exception("request failed", extra={"event": "request_failed", "path": request.path})
        return json_response({"error": "internal server error"}, status=500)
