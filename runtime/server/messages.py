"""What a handler receives and what it answers with: an HTTP request and response, apart from the wire
(``server.http`` reads and writes them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kubeserve.runtime.server.tracing import RequestSpan


class Request:
    """One request, its body read whole (a memoryview when it came in pieces). Header names are lower-case."""

    __slots__ = ("body", "headers", "keep_alive", "match_info", "method", "path", "query", "route", "trace", "version")

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body: bytes | memoryview,
        keep_alive: bool = True,
        version: str = "1.1",
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive  # what the client asked for; the server may still close
        self.version = version  # HTTP's: "1.1" or "1.0"
        self.match_info: dict[str, str] = {}  # the path's variables, set by the router
        self.route = ""  # the pattern the router matched (``/v2/models/{name}/infer``)
        self.trace: RequestSpan | None = None  # an inference request's span, while tracing (``server.tracing``)


class Response:
    """An answer: its status, body and headers. ``coding`` (gzip or deflate) compresses the body before it
    is written (``server.codings``)."""

    __slots__ = ("body", "coding", "content_type", "headers", "status")

    def __init__(
        self,
        body: bytes = b"",
        status: int = 200,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.body = body
        self.status = status
        self.content_type = content_type
        self.headers: dict[str, str] = headers if headers is not None else {}
        self.coding: str | None = None
