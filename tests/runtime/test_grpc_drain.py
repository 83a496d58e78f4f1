"""The drain on SIGTERM as gRPC clients see it: 32 closed-loop clients, half unary (one channel each), half streaming
(each stream sends its requests one at a time, then ends and the next opens). Counted on the client side: every call
that the server took is answered; after the signal, only new calls are turned away, never processed, and the server's
own counts agree with the clients'.

A new call turned away is mostly ``UNAVAILABLE`` (GOAWAY, then the closed listener); one that reached the server in
the instant its shutdown began, before the server took it, is ``CANCELLED``: gRPC core cancels such calls rather than
refusing them (grpc/grpc#41785, open), and a stream opened then may end with ``INTERNAL``. Whatever its status, the
server's counts (every call it accepted answered, and as many as the clients got) show no such call was processed."""

from __future__ import annotations

import asyncio
import collections
import signal

import grpc
import numpy as np
from kubeserve.runtime.grpc import grpc_service_pb2 as service_pb2
from kubeserve.runtime.grpc import grpc_service_pb2_grpc as service_pb2_grpc

ROWS = 8
PER_STREAM = 10  # requests on one stream before it ends and the next opens
# Each client its own connection, as separate client processes have (channels in one process share them otherwise).
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def _request(request_id: str) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="mlp", id=request_id)
    request.inputs.add(name="features", datatype="FP32", shape=[ROWS, 32])
    request.raw_input_contents.append(np.full((ROWS, 32), 0.5, dtype=np.float32).tobytes())
    return request


class GrpcLoad:
    def __init__(self, address: str, unary: int, streaming: int) -> None:
        self.address = address
        self.unary = unary
        self.streaming = streaming
        self.signalled = False
        self.sent = 0
        self.answered = 0
        self.answered_before_signal = 0
        self.refused_before_signal = 0
        self.refused_after_signal = 0
        self.turned_away: collections.Counter[str] = collections.Counter()  # after the signal, by status
        self.failures: list[str] = []  # calls the server took that got no answer, or a wrong one
        self.enough = asyncio.Event()

    async def run(self) -> None:
        clients = [self._unary(index) for index in range(self.unary)]
        clients += [self._streaming(index) for index in range(self.streaming)]
        await asyncio.gather(*clients)

    def _answered(self) -> None:
        self.answered += 1
        if not self.signalled:
            self.answered_before_signal += 1
            if self.answered_before_signal >= 20 * (self.unary + self.streaming):
                self.enough.set()

    def _refused(self, error: grpc.aio.AioRpcError) -> bool:
        """A new call turned away after the signal (the test checks on the server's counts that none was processed);
        before it, a refusal is counted, and fails the test."""
        if self.signalled:
            self.refused_after_signal += 1
            self.turned_away[error.code().name] += 1
            return True
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            self.refused_before_signal += 1
            return True
        return False

    async def _unary(self, index: int) -> None:
        async with grpc.aio.insecure_channel(self.address, options=OWN_CONNECTION) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            for number in range(1_000_000):
                request_id = f"u{index}-{number}"
                try:
                    response = await stub.ModelInfer(_request(request_id))
                except grpc.aio.AioRpcError as error:
                    if not self._refused(error):
                        self.failures.append(f"{request_id}: {error.code()} {error.details()}")
                    return
                self.sent += 1
                if response.id != request_id:
                    self.failures.append(f"{request_id}: answered as {response.id}")
                self._answered()

    async def _streaming(self, index: int) -> None:
        async with grpc.aio.insecure_channel(self.address, options=OWN_CONNECTION) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            for stream in range(1_000_000):
                call = stub.ModelStreamInfer()
                for number in range(PER_STREAM):
                    request_id = f"s{index}-{stream}-{number}"
                    try:
                        await call.write(_request(request_id))
                        response = await call.read()
                    except grpc.aio.AioRpcError as error:
                        # The stream's first request on a stream the server never took: refused.
                        if not (number == 0 and self._refused(error)):
                            self.failures.append(f"{request_id}: {error.code()} {error.details()}")
                        return
                    self.sent += 1
                    if response is grpc.aio.EOF:
                        self.failures.append(f"{request_id}: the stream ended without its answer")
                        return
                    if response.error_message or response.infer_response.id != request_id:
                        self.failures.append(f"{request_id}: {response.error_message or response.infer_response.id}")
                    self._answered()
                await call.done_writing()
                if await call.code() != grpc.StatusCode.OK:
                    self.failures.append(f"stream {index}-{stream} ended {await call.code()}")
                    return


def test_sigterm_under_32_unary_and_streaming_grpc_clients_answers_every_call_sent(start_runtime):
    for _ in range(2):  # a race: one lucky run proves little
        server = start_runtime("mlp", "--drain-grace-seconds", "5").wait_ready()
        load = GrpcLoad(server.grpc_address, 16, 16)
        asyncio.run(server.sigterm_under(load))

        assert load.failures == []
        assert load.refused_before_signal == 0
        assert load.refused_after_signal >= 1  # new calls were turned away
        assert server.wait() == 0
        stopped = server.wait_for_event("stopped")
        assert stopped["refused"] == 0  # nobody was told "shutting down"
        assert stopped["answered"] == stopped["accepted"] == load.sent == load.answered


def test_sigterm_to_a_pod_of_workers_drains_every_workers_grpc_calls(start_runtime):
    server = start_runtime("mlp", "--workers", "2", "--drain-grace-seconds", "5").wait_ready(workers=2)
    load = GrpcLoad(server.grpc_address, 16, 16)
    asyncio.run(server.sigterm_under(load))

    assert load.failures == []
    assert load.refused_before_signal == 0
    assert server.wait() == 0
    stopped = [event for event in server.events if event.get("event") == "stopped" and event["worker"] in (0, 1)]
    assert len(stopped) == 2
    assert all(event["refused"] == 0 and event["answered"] == event["accepted"] for event in stopped)
    assert sum(event["answered"] for event in stopped) == load.answered
    assert all(event["answered"] > 0 for event in stopped)  # 32 connections: the kernel spread them over both


def test_an_idle_stream_is_ended_once_quiet_for_the_grace_and_the_server_exits(start_runtime):
    """A stream left open with nothing in flight does not hold the drain to its timeout: quiet for
    ``drain_grace_seconds``, it is ended (status OK), and the server exits 0."""
    server = start_runtime("mlp", "--drain-grace-seconds", "0.5", "--drain-timeout-seconds", "60").wait_ready()

    async def idle_stream() -> tuple[grpc.StatusCode, float]:
        async with grpc.aio.insecure_channel(server.grpc_address) as channel:
            call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()
            await call.write(_request("only"))
            answer = await call.read()
            assert answer.infer_response.id == "only"
            loop = asyncio.get_running_loop()
            signalled = loop.time()
            server.signal(signal.SIGTERM)
            assert await call.read() is grpc.aio.EOF  # ended by the server, the client still holding it open
            return await call.code(), loop.time() - signalled

    code, seconds = asyncio.run(idle_stream())
    assert code == grpc.StatusCode.OK
    assert seconds < 30  # the grace (0.5 s), not the drain's timeout (60 s)
    assert server.wait() == 0
    stopped = server.wait_for_event("stopped")
    assert stopped["answered"] == stopped["accepted"] == 1
