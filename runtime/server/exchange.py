"""One inference request's passage through the server, timed per stage and counted once.

Stages: ``deserialize`` (body read and decoded), ``queue`` (waiting for its batch), ``compute`` (its
batch's inference), ``serialize`` (response encoded) and ``total`` (arrival to response ready). They go
to ``kubeserve_request_duration_seconds``, to Triton's statistics (``statistics``), and back to the
caller in a ``Server-Timing`` header.

Compressed request bodies (``Content-Encoding: gzip`` or ``deflate``) are inflated by aiohttp's parser,
within ``max_request_bytes``. The answer is compressed when the client's ``Accept-Encoding`` names gzip or
deflate; as in Triton, only inference answers are, which is what Triton's clients expect.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from types import TracebackType

import numpy as np
from aiohttp import hdrs, web
from kubeserve.runtime.batcher import DynamicBatcher, Job, Outputs
from kubeserve.runtime.protocol.errors import BadRequest, InferenceError, NotFound, PayloadTooLarge, Unavailable
from kubeserve.runtime.rejection import Rejected, Rejection
from kubeserve.runtime.server.rejections import unavailable
from kubeserve.runtime.server.state import ServerState


class Exchange:
    __slots__ = ("_request", "_state", "arrived", "arrived_on_loop", "deserialized_at", "job", "resumed_at")

    def __init__(self, state: ServerState, request: web.Request) -> None:
        self._state = state
        self._request = request
        self.arrived = time.perf_counter()
        self.arrived_on_loop = asyncio.get_running_loop().time()
        self.deserialized_at = 0.0
        self.resumed_at = 0.0
        self.job: Job | None = None

    async def __aenter__(self) -> Exchange:
        self._state.request_started()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        metrics = self._state.metrics
        refused = False
        if isinstance(error, InferenceError):
            metrics.answered(error.status)
            if isinstance(error, Unavailable):
                metrics.rejected[error.reason].inc()
                refused = error.reason is Rejection.DRAINING
        elif error is not None and not isinstance(error, asyncio.CancelledError):
            metrics.answered(500)
        # A request for another model is none of this model's failures; one whose client left is unanswered.
        if error is not None and not isinstance(error, (NotFound, asyncio.CancelledError)):
            metrics.statistics.request_failed(time.perf_counter() - self.arrived)
        self._state.request_finished(answered=not isinstance(error, asyncio.CancelledError), refused=refused)

    async def read_body(self) -> bytes:
        try:
            return await self._request.read()
        except web.HTTPRequestEntityTooLarge:
            limit = self._state.settings.max_request_bytes
            raise PayloadTooLarge(f"request body exceeds max_request_bytes ({limit} bytes)") from None
        except web.RequestPayloadError:  # a body its Content-Encoding cannot inflate, say
            encoding = self._request.headers.get(hdrs.CONTENT_ENCODING, "identity")
            raise BadRequest(f"cannot read the request body (Content-Encoding: {encoding}): it is malformed") from None

    def deserialized(self) -> None:
        self.deserialized_at = time.perf_counter()

    async def compute(
        self,
        batcher: DynamicBatcher,
        feeds: dict[str, np.ndarray],
        output_names: Sequence[str] | None = None,
        priority: int = 0,
        timeout_microseconds: int | None = None,
    ) -> Outputs:
        try:
            outputs, self.job = await batcher.infer(
                feeds,
                output_names=output_names,
                priority=priority,
                timeout_microseconds=timeout_microseconds,
                arrived=self.arrived,
                arrived_on_loop=self.arrived_on_loop,
            )
        except Rejected as rejected:
            raise unavailable(rejected) from None
        self.resumed_at = time.perf_counter()
        return outputs

    def respond(self, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> web.Response:
        done = time.perf_counter()
        job = self.job
        assert job is not None, "respond() follows compute()"
        stages = (
            ("deserialize", self.deserialized_at - self.arrived),
            ("queue", job.started - job.queued),
            ("compute", job.finished - job.started),
            ("serialize", done - self.resumed_at),
            ("total", done - self.arrived),
        )
        metrics = self._state.metrics
        for stage, seconds in stages:
            metrics.stage[stage].observe(seconds)
        metrics.answered(200)
        metrics.statistics.request_succeeded(
            job.rows,
            total=done - self.arrived,
            queue=job.started - job.queued,
            compute_input=job.inferring - job.started,
            compute_infer=job.inferred - job.inferring,
            compute_output=job.finished - job.inferred,
        )
        response_headers = {
            "Content-Type": content_type,
            "Server-Timing": ", ".join(f"{stage};dur={seconds * 1e3:.3f}" for stage, seconds in stages),
        }
        if headers:
            response_headers.update(headers)
        response = web.Response(body=body, headers=response_headers)
        if hdrs.ACCEPT_ENCODING in self._request.headers:
            # aiohttp picks the coding from Accept-Encoding (identity: none) and compresses a large body in
            # a worker thread, off the event loop.
            response.enable_compression()
        return response
