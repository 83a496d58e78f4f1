"""The gRPC server of one server process: the inference service and health, on ``grpc_port``, in the process's event
loop beside the HTTP server (``server.lifecycle`` starts and drains both).

Messages up to ``max_request_bytes`` are read (larger: ``RESOURCE_EXHAUSTED``, gRPC's own answer); answers may be
any size. With workers, each listens on the port with ``SO_REUSEPORT``, as the HTTP server does; alone, it does not,
so that a port another process holds is an error rather than a shared port. ``stop`` is the drain: GOAWAY (new calls
go elsewhere), calls in progress finish within the grace.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2_grpc
from kubeserve.runtime.grpc import grpc_service_pb2_grpc as rpc
from kubeserve.runtime.grpc.health import Health
from kubeserve.runtime.grpc.service import InferenceService
from kubeserve.runtime.server.state import ServerState


@dataclass
class GrpcServer:
    server: grpc.aio.Server
    health: Health
    port: int

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls, let those in progress finish for ``grace`` seconds (None: cancel them now)."""
        self.health.stop()
        await self.server.stop(grace)


async def start_grpc(state: ServerState, reuse_port: bool = False) -> GrpcServer:
    """Listen and serve; ``OSError`` when the port cannot be listened on."""
    settings = state.settings
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_request_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", int(reuse_port)),
        ]
    )
    rpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(state), server)
    health = Health(state)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    try:
        port = server.add_insecure_port(f"{host}:{settings.grpc_port}")
    except RuntimeError as error:  # grpc's way of saying the address cannot be bound
        raise OSError(f"cannot listen on gRPC port {settings.grpc_port}: {error}") from error
    await server.start()
    await health.start()
    return GrpcServer(server, health, port)
