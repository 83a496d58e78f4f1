"""``GET /metrics``: this pod's metrics, from its registry (or, with several workers, summed over them)."""

from __future__ import annotations

from aiohttp import web
from kubeserve.runtime.server.state import STATE
from prometheus_client.exposition import choose_encoder


async def metrics(request: web.Request) -> web.Response:
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encode(request.app[STATE].metrics.exposition)
    return web.Response(body=body, headers={"Content-Type": content_type})
