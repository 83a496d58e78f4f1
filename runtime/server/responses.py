"""JSON responses, written with orjson."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from kubeserve.runtime.protocol.errors import InferenceError

JSON = "application/json"
BINARY = "application/octet-stream"


def json_response(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(document), status=status, content_type=JSON, headers=headers)


def error_response(error: InferenceError) -> web.Response:
    return json_response({"error": error.message}, status=error.status, headers=error.headers or None)
