"""JSON responses, written with orjson."""

from __future__ import annotations

from typing import Any

import orjson
from kubeserve.runtime.protocol.errors import InferenceError
from kubeserve.runtime.server.messages import Response

JSON = "application/json"
BINARY = "application/octet-stream"


def json_response(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(document), status, JSON, headers)


def error_response(error: InferenceError) -> Response:
    return json_response({"error": error.message}, status=error.status, headers=error.headers or None)
