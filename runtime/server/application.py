"""An application: the state its handlers share, its routes, and the rule every answer follows (a failure
becomes ``{"error": ...}`` with its status); ``listen`` serves it (``server.http`` speaks HTTP). The model
server is one (``server.inference_app``), each worker's statistics socket another (``server.peers``)."""

from __future__ import annotations

import asyncio
import logging
import time

from kubeserve.runtime.protocol.errors import InferenceError
from kubeserve.runtime.server.codings import compress
from kubeserve.runtime.server.connections import ConnectionTracker, Deadlines
from kubeserve.runtime.server.http import HttpConnection, Refusal
from kubeserve.runtime.server.messages import Request, Response
from kubeserve.runtime.server.responses import error_response, json_response
from kubeserve.runtime.server.router import Router
from kubeserve.runtime.server.state import ServerState

log = logging.getLogger("kubeserve.runtime")
access_log = logging.getLogger("kubeserve.access")

LISTEN_BACKLOG = 1024


class Application:
    def __init__(
        self, state: ServerState, router: Router, connections: ConnectionTracker, access_log: bool = False
    ) -> None:
        self.state = state
        self.router = router
        self.connections = connections
        self.max_request_bytes = state.settings.max_request_bytes
        self.max_buffered_bytes = state.settings.max_buffered_request_bytes
        self.access_log = access_log

    @property
    def draining(self) -> bool:
        """Answers close their connections, so that clients reconnect to a pod that stays."""
        return self.state.draining

    def received(self) -> None:
        """A request has been read whole from its connection; ``handle`` will start it."""
        self.state.arriving += 1

    def dropped(self, count: int) -> None:
        """``count`` requests read whole will never be handled: their connection closed first."""
        self.state.arriving -= count

    def hold(self, size: int) -> bool:
        """Count ``size`` bytes of a request body arriving against ``max_buffered_request_bytes``; False (nothing
        counted) past it."""
        if self.state.body_bytes_held + size > self.max_buffered_bytes:
            return False
        self.state.body_bytes_held += size
        return True

    def release(self, size: int) -> None:
        """``size`` bytes of bodies counted by ``hold`` are handled, or dropped."""
        self.state.body_bytes_held -= size

    def refused(self, reason: Refusal) -> None:
        """The HTTP layer answered a request itself, for ``reason``."""
        self.state.metrics.http_refused(reason)

    async def handle(self, request: Request) -> Response:
        self.state.arriving -= 1
        started = time.perf_counter() if self.access_log else 0.0
        try:
            handler = self.router.resolve(request)
            response = await handler(self.state, request)
            if response.coding is not None:
                response.body = await compress(response.body, response.coding)
        except InferenceError as error:
            response = error_response(error)
        except Exception:
            extra = {"event": "request_failed", "path": request.path, **_trace_fields(request)}
            log.exception("request failed", extra=extra)
            response = json_response({"error": "internal server error"}, status=500)
        if self.access_log:
            access_log.info(
                "request",
                extra={
                    "event": "request",
                    "method": request.method,
                    "path": request.path,
                    "status": response.status,
                    "bytes": len(response.body),
                    "seconds": round(time.perf_counter() - started, 6),
                    **_trace_fields(request),
                },
            )
        return response

    async def listen(self, host: str, port: int, reuse_port: bool = False) -> asyncio.Server:
        """Serve on ``host:port``; ``reuse_port`` lets the pod's other workers listen on the same port."""
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(self.connection, host, port, backlog=LISTEN_BACKLOG, reuse_port=reuse_port)
        settings = self.state.settings
        self.connections.expire(
            Deadlines(
                idle_seconds=settings.idle_timeout_seconds,
                head_seconds=settings.request_head_timeout_seconds,
                body_bytes_per_second=settings.min_request_body_bytes_per_second,
                body_window_seconds=settings.request_body_rate_window_seconds,
            )
        )
        return listener

    async def listen_unix(self, path: str) -> asyncio.Server:
        return await asyncio.get_running_loop().create_unix_server(self.connection, path)

    def connection(self) -> HttpConnection:
        """A new connection's protocol (``loop.create_server``'s factory)."""
        return HttpConnection(self, self.connections)


def _trace_fields(request: Request) -> dict[str, str]:
    """A traced request's trace and span ids, for its log lines; nothing for another."""
    return request.trace.log_fields() if request.trace is not None else {}
