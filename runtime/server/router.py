"""Which handler answers a method and path: routes as patterns with ``{variable}`` (or ``{variable:regex}``)
segments, tried in the order they were added; 404 for a path no route has, 405 (with ``Allow``) for a
method the path's routes do not take. Every GET route answers HEAD too."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from kubeserve.runtime.protocol.errors import MethodNotAllowed, NotFound
from kubeserve.runtime.server.messages import Request, Response

if TYPE_CHECKING:
    from kubeserve.runtime.server.state import ServerState

Handler = Callable[["ServerState", Request], Awaitable[Response]]
_VARIABLE = re.compile(r"\{(\w+)(?::([^{}]+))?\}")
# Resolved paths kept (a server sees a handful: its model's); past this many the memo starts again.
_MEMO_SIZE = 512


def _compile(pattern: str) -> re.Pattern[str]:
    regex, end = "", 0
    for variable in _VARIABLE.finditer(pattern):
        regex += re.escape(pattern[end : variable.start()]) + f"(?P<{variable[1]}>{variable[2] or '[^/]+'})"
        end = variable.end()
    return re.compile(regex + re.escape(pattern[end:]) + r"\Z")


class Router:
    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], dict[str, Handler]]] = []
        self._by_pattern: dict[str, dict[str, Handler]] = {}
        self._memo: dict[str, list[tuple[str, dict[str, Handler], dict[str, str]]]] = {}

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        methods = self._by_pattern.get(pattern)
        if methods is None:
            methods = self._by_pattern[pattern] = {}
            # The route as requests report it (``http.route``): its variables without their regular expressions.
            self._routes.append((_VARIABLE.sub(r"{\1}", pattern), _compile(pattern), methods))
        methods[method] = handler
        if method == "GET":
            methods.setdefault("HEAD", handler)
        self._memo.clear()

    def get(self, pattern: str, handler: Handler) -> None:
        self.add("GET", pattern, handler)

    def post(self, pattern: str, handler: Handler) -> None:
        self.add("POST", pattern, handler)

    def _matches(self, path: str) -> list[tuple[str, dict[str, Handler], dict[str, str]]]:
        """Every route whose pattern matches ``path``, in order, with the path's variables."""
        found = self._memo.get(path)
        if found is None:
            found = []
            for route, regex, methods in self._routes:
                match = regex.match(path)
                if match is not None:
                    found.append((route, methods, match.groupdict()))
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[path] = found
        return found

    def resolve(self, request: Request) -> Handler:
        """The handler for ``request``, whose ``match_info`` and ``route`` it fills in: the first route matching both
        its path and its method."""
        found = self._matches(request.path)
        for route, methods, variables in found:
            handler = methods.get(request.method)
            if handler is not None:
                request.match_info = variables
                request.route = route
                return handler
        if not found:
            raise NotFound(f"no such endpoint: {request.method} {request.path}")
        allowed = sorted({method for _, methods, _ in found for method in methods})
        raise MethodNotAllowed(f"method {request.method} is not allowed on {request.path}", allowed=allowed)
