"""``GET /metrics``: this pod's metrics (with several workers, theirs merged: ``server.peers``)."""

from __future__ import annotations

from kubeserve.runtime.server.messages import Request, Response
from kubeserve.runtime.server.peers import pod_metrics
from kubeserve.runtime.server.state import ServerState
from prometheus_client.exposition import choose_encoder


async def metrics(state: ServerState, request: Request) -> Response:
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(await pod_metrics(state)), content_type=content_type)
