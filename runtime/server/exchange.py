"""One inference request's passage through the server, timed per stage and counted once.

Stages: ``deserialize`` (body read and decoded), ``queue`` (waiting for its batch), ``compute`` (its
batch's inference), ``serialize`` (response encoded) and ``total`` (arrival to response ready). They go
to ``kubeserve_request_duration_seconds``, to Triton's statistics (``statistics``), and back to the
caller in a ``Server-Timing`` header.

Compressed request bodies are inflated, and answers compressed when the client accepts it, as
``server.codings`` says.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from types import TracebackType

import numpy as np
from kubeserve.runtime.admission import Rejected, Rejection
from kubeserve.runtime.batcher import DynamicBatcher, Job, Outputs
from kubeserve.runtime.metrics import STAGES
from kubeserve.runtime.protocol.errors import InferenceError, NotFound, Unavailable
from kubeserve.runtime.server.codings import accepted_coding, inflate
from kubeserve.runtime.server.messages import Request, Response
from kubeserve.runtime.server.state import ServerState
from kubeserve.runtime.server.unavailable import unavailable

SERVER_TIMING = ", ".join(f"{stage};dur={{:.3f}}" for stage in STAGES)  # milliseconds, as the header has them


class Exchange:
    __slots__ = ("_request", "_state", "arrived", "arrived_on_loop", "deserialized_at", "job", "resumed_at")

    def __init__(self, state: ServerState, request: Request) -> None:
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
        self, kind: type[BaseException] | None, error: BaseException | None, _trace: TracebackType | None
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

    async def read_body(self) -> bytes | memoryview:
        """The request's body, inflated when it came compressed."""
        request = self._request
        coding = request.headers.get("content-encoding")
        if coding is None:
            return request.body
        return await inflate(request.body, coding, self._state.settings.max_request_bytes)

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
                alone=not self._state.arriving,
            )
        except Rejected as rejected:
            raise unavailable(rejected) from None
        self.resumed_at = time.perf_counter()
        return outputs

    def respond(self, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> Response:
        done = time.perf_counter()
        job = self.job
        assert job is not None, "respond() follows compute()"
        # In STAGES' order: deserialize, queue, compute, serialize, total.
        stages = (
            self.deserialized_at - self.arrived,
            job.started - job.queued,
            job.finished - job.started,
            done - self.resumed_at,
            done - self.arrived,
        )
        # Recorded once the answer is on its way: bookkeeping is no part of the client's latency.
        asyncio.get_running_loop().call_soon(self._record, job, stages)
        timing = SERVER_TIMING.format(*(seconds * 1e3 for seconds in stages))
        response_headers = {"Server-Timing": timing}
        if headers:
            response_headers.update(headers)
        response = Response(body, 200, content_type, response_headers)
        accept = self._request.headers.get("accept-encoding")
        if accept is not None:
            response.coding = accepted_coding(accept)
        return response

    def _record(self, job: Job, stages: tuple[float, ...]) -> None:
        metrics = self._state.metrics
        for histogram, seconds in zip(metrics.stage.values(), stages, strict=True):
            histogram.observe(seconds)
        metrics.answered(200)
        metrics.statistics.request_succeeded(
            job.rows,
            total=stages[-1],
            queue=stages[1],
            compute_input=job.inferring - job.started,
            compute_infer=job.inferred - job.inferring,
            compute_output=job.finished - job.inferred,
        )
