"""``GET /metrics``: this pod's metrics, from its registry (or, with several workers, summed over them)."""

from __future__ import annotations

from kubeserve.runtime.server.messages import Request, Response
from kubeserve.runtime.server.state import ServerState
from prometheus_client.exposition import choose_encoder


async def metrics(state: ServerState, request: Request) -> Response:
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(state.metrics.exposition), content_type=content_type)
