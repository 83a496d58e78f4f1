"""``inference.GRPCInferenceService``, the Open Inference Protocol over gRPC as Triton's clients speak it (KServe's
``grpc_predict_v2.proto`` is a subset of it): health, metadata, Triton's model configuration and statistics,
inference (``ModelInfer``) and inference over one stream (``ModelStreamInfer``).

Every answer is REST's, made by the same code: an inference request goes through the same ``Exchange`` (stages
timed, metrics labelled ``protocol="grpc"``, counted for the drain, traced), the same checks and the same batcher, so
gRPC and REST requests share batches. The client's gRPC deadline is the request's queue deadline (with its
``timeout`` parameter, whichever is sooner), so a request whose caller has given up is never computed. Errors become
gRPC status codes (``grpc.status``); Triton's repository, shared-memory, trace and log calls are not served
(``UNIMPLEMENTED``, the generated servicer's answer).

On a stream, requests are handled as they arrive, several at once (so that they can share a batch), and each answer
is sent as soon as it is ready, with the request's ``id``: answers may come in another order than the requests. A
request's failure is its answer's ``error_message``, and the stream goes on. While the server drains, a stream is
served as long as it is in use; one quiet for ``drain_grace_seconds`` with nothing in flight is ended (status OK), as
an idle keep-alive connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from kubeserve.runtime import __version__
from kubeserve.runtime.config import GRPC
from kubeserve.runtime.grpc import grpc_service_pb2 as pb
from kubeserve.runtime.grpc import grpc_service_pb2_grpc as rpc
from kubeserve.runtime.grpc import model_config_pb2
from kubeserve.runtime.grpc.codec import decode_request, encode_response
from kubeserve.runtime.grpc.status import grpc_status
from kubeserve.runtime.protocol.errors import InferenceError
from kubeserve.runtime.server.exchange import Exchange
from kubeserve.runtime.server.health import EXTENSIONS
from kubeserve.runtime.server.messages import Request
from kubeserve.runtime.server.peers import pod_statistics
from kubeserve.runtime.server.state import LoadedModel, ServerState
from kubeserve.runtime.server.v2 import metadata, triton_config

log = logging.getLogger("kubeserve.runtime")

SERVICE = "inference.GRPCInferenceService"
# An inference call as the exchange and its span see it: the RPC's path.
INFER_PATH = f"/{SERVICE}/ModelInfer"
STREAM_PATH = f"/{SERVICE}/ModelStreamInfer"
INTERNAL = "internal server error"
# While draining, how often an open stream looks whether it has been quiet long enough to end.
STREAM_IDLE_CHECK_SECONDS = 0.25

T = TypeVar("T")
Context = grpc.aio.ServicerContext


class InferenceService(rpc.GRPCInferenceServiceServicer):
    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def _answer(self, context: Context, make: Callable[[], Awaitable[T]]) -> T:
        """``make()``'s answer; an error it raises ends the call with its gRPC status and message."""
        try:
            return await make()
        except InferenceError as error:
            code, trailing = grpc_status(error)
            await context.abort(code, error.message, trailing)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.exception("request failed", extra={"event": "request_failed", "path": INFER_PATH})
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL)
        raise AssertionError("abort() raises")  # pragma: no cover

    def _loaded(self, name: str, version: str) -> LoadedModel:
        request = Request("GET", "", "", {}, b"")
        request.match_info = _model(name, version)
        return self.state.model_for(request)

    # Health and metadata.
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.state.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        async def ready() -> pb.ModelReadyResponse:
            self.state.check_model(request.name, request.version or None)
            return pb.ModelReadyResponse(ready=self.state.ready)

        return await self._answer(context, ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="kubeserve", version=__version__, extensions=EXTENSIONS)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> pb.ModelMetadataResponse:
        async def answer() -> pb.ModelMetadataResponse:
            document = metadata(self.state, self._loaded(request.name, request.version))
            del document["parameters"]  # REST's alone: the message has no such field
            return json_format.ParseDict(document, pb.ModelMetadataResponse())

        return await self._answer(context, answer)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Context) -> pb.ModelConfigResponse:
        async def answer() -> pb.ModelConfigResponse:
            config = triton_config(self.state, self._loaded(request.name, request.version))
            if not self.state.settings.model_version.isdigit():  # Triton's versions are numbers; ours need not be
                del config["version_policy"]
            return pb.ModelConfigResponse(config=json_format.ParseDict(config, model_config_pb2.ModelConfig()))

        return await self._answer(context, answer)

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Context) -> pb.ModelStatisticsResponse:
        async def answer() -> pb.ModelStatisticsResponse:
            if request.name:
                self.state.check_model(request.name, request.version or None)
            statistics = await pod_statistics(self.state)
            return json_format.ParseDict({"model_stats": [statistics]}, pb.ModelStatisticsResponse())

        return await self._answer(context, answer)

    # Inference.
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        answer, timing = await self._answer(context, lambda: self.infer(request, context, INFER_PATH))
        context.set_trailing_metadata((("server-timing", timing),))
        return answer

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        stream = _Stream(self, request_iterator, context)
        async for answer in stream.answers():
            yield answer

    async def infer(
        self, request: pb.ModelInferRequest, context: Context, path: str
    ) -> tuple[pb.ModelInferResponse, str]:
        """The pipeline REST's ``v2.infer`` runs, from a gRPC request: the answer, and its ``Server-Timing``."""
        state = self.state
        remaining = context.time_remaining()  # None: the client set no deadline
        call = Request("POST", path, "", _headers(context) if state.tracing is not None else {}, b"")
        call.route = path
        call.match_info = _model(request.model_name, request.model_version)
        async with Exchange(state, call, GRPC) as exchange:
            loaded = state.model_for(call)
            processing = loaded.model.processing
            signature = processing.signature
            decoded, raw = decode_request(request, signature)
            exchange.deserialized()
            feeds = decoded.inputs
            if processing.preprocesses:
                feeds = await exchange.preprocess(loaded, feeds)
            timeout = decoded.timeout_microseconds
            if remaining is not None:
                # The caller's deadline is the queue's: counted from arrival, as the batcher counts its timeouts.
                deadline = max(1, int(remaining * 1e6))
                timeout = deadline if not timeout else min(timeout, deadline)
            outputs = await exchange.compute(
                loaded.batcher,
                feeds,
                output_names=None if processing.every_output else [output.name for output in decoded.outputs],
                priority=decoded.priority,
                timeout_microseconds=timeout,
            )
            classifications = decoded.classifications
            if classifications or processing.postprocesses:
                outputs = await exchange.postprocess(loaded, outputs, classifications)
            settings = state.settings
            answer = encode_response(settings.model_name, settings.model_version, decoded, outputs, signature, raw)
            return answer, exchange.finish()


class _Stream:
    """One ``ModelStreamInfer`` call: its requests read and handled at once, their answers sent as they are ready."""

    def __init__(
        self, service: InferenceService, requests: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> None:
        self._service = service
        self._requests = requests
        self._context = context
        self._answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()  # None: reading ended
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self._quiet_since = 0.0

    async def answers(self) -> AsyncIterator[pb.ModelStreamInferResponse]:
        loop = asyncio.get_running_loop()
        state = self._service.state
        reading = asyncio.create_task(self._read())
        done_reading = False
        self._quiet_since = loop.time()
        try:
            while not done_reading or self._in_flight:
                try:
                    answer = await asyncio.wait_for(self._answers.get(), STREAM_IDLE_CHECK_SECONDS)
                except TimeoutError:
                    if self._idle_while_draining(loop.time(), state):
                        return
                    continue
                if answer is None:
                    done_reading = True
                    continue
                self._in_flight -= 1
                if not self._in_flight:
                    self._quiet_since = loop.time()
                yield answer
        finally:
            reading.cancel()
            for task in self._tasks:
                task.cancel()

    def _idle_while_draining(self, now: float, state: ServerState) -> bool:
        if not state.draining or self._in_flight:
            return False
        return now - self._quiet_since >= state.settings.drain_grace_seconds

    async def _read(self) -> None:
        try:
            async for request in self._requests:
                self._in_flight += 1
                task = asyncio.create_task(self._handle(request))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            self._answers.put_nowait(None)

    async def _handle(self, request: pb.ModelInferRequest) -> None:
        try:
            answer, _ = await self._service.infer(request, self._context, STREAM_PATH)
            self._answers.put_nowait(pb.ModelStreamInferResponse(infer_response=answer))
        except InferenceError as error:
            self._answers.put_nowait(_failed(request, error.message))
        except Exception:
            log.exception("request failed", extra={"event": "request_failed", "path": STREAM_PATH})
            self._answers.put_nowait(_failed(request, INTERNAL))


def _failed(request: pb.ModelInferRequest, message: str) -> pb.ModelStreamInferResponse:
    """A stream's answer to a request that failed: the message, and the request's id to match it by."""
    answer = pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version, id=request.id)
    return pb.ModelStreamInferResponse(error_message=message, infer_response=answer)


def _model(name: str, version: str) -> dict[str, str]:
    """The model a call names, as the router's ``match_info`` holds it (an empty version: none given)."""
    return {"name": name, "version": version} if version else {"name": name}


def _headers(context: Context) -> dict[str, Any]:
    """The call's metadata as request headers (``traceparent``, ``user-agent``): what tracing reads."""
    return {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
