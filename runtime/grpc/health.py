"""``grpc.health.v1.Health`` (grpc-health-checking's servicer), for Kubernetes' native gRPC probes and for clients
and proxies that check a backend's health.

Services: ``""`` (the server) and ``inference.GRPCInferenceService`` answer the server's readiness, as
``/v2/health/ready`` does (``NOT_SERVING`` while the model loads, failed to load, or the server drains, and while
another worker of the pod is not ready); ``liveness`` answers ``SERVING`` as long as the process serves, as
``/v2/health/live`` does, so that a liveness probe never restarts a drain. Another name is ``NOT_FOUND``. ``Check``
reads readiness when asked; ``Watch`` sees it change within ``WATCH_SECONDS``.
"""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio
from kubeserve.runtime.grpc.service import SERVICE
from kubeserve.runtime.server.state import ServerState

LIVENESS = "liveness"
READINESS = ("", SERVICE)
# How often readiness is looked at for Watch's callers (it can change without an event: another worker's load).
WATCH_SECONDS = 0.5
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health(aio.HealthServicer):  # the library's asyncio servicer, as its public name says
    def __init__(self, state: ServerState) -> None:
        super().__init__()
        self._state = state
        self._watching: asyncio.Task[None] | None = None

    def _status(self) -> health_pb2.HealthCheckResponse.ServingStatus:
        return SERVING if self._state.ready else NOT_SERVING

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        if request.service in READINESS:
            return health_pb2.HealthCheckResponse(status=self._status())
        return await super().Check(request, context)

    async def start(self) -> None:
        """Statuses set, and kept in step with readiness for ``Watch``."""
        await self.set(LIVENESS, SERVING)
        await self._publish()
        self._watching = asyncio.create_task(self._watch())

    async def _publish(self) -> None:
        status = self._status()
        for service in READINESS:
            await self.set(service, status)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            await self._publish()

    def stop(self) -> None:
        if self._watching is not None:
            self._watching.cancel()
