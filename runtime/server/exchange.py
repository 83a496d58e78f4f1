"""One inference request's passage through the server, timed per stage and counted once.

Stages (``metrics.STAGES``), in order: ``deserialize`` (body read and decoded), ``preprocess`` (a Python handler's
preprocess, then images decoded into the model's tensors; only where the model has either), ``queue`` (waiting for its
batch), ``compute`` (its batch's inference; a batched handler's preprocess and postprocess run in it, not as stages of
their own), ``postprocess`` (a handler's postprocess, then top classes picked; only where the model has the one or the
request asks for the other), ``serialize`` (response encoded) and ``total`` (arrival to response ready). They never
overlap. ``stage_bounds`` gives each stage's start and end; their durations go to
``kubeserve_request_duration_seconds``, to Triton's statistics (``statistics``: preprocess counts in
``compute_input`` and postprocess in ``compute_output``, as Triton counts an ensemble's), and back to the caller in a
``Server-Timing`` header. ``preprocess`` and ``postprocess`` run the model's ``Processing`` as those stages (a
handler's ``async def`` part on the event loop, the blocking part off it: ``server.stages``), under the stage's
timeout, timed. While tracing
(``server.tracing``), the request is a span from its arrival, with a child span for each of ``stage_bounds``.

Compressed request bodies are inflated, and answers compressed when the client accepts it, as
``server.codings`` says.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
from kubeserve.runtime.admission import Rejected, Rejection
from kubeserve.runtime.batcher import DynamicBatcher, Job, Outputs
from kubeserve.runtime.config import HTTP
from kubeserve.runtime.metrics import POSTPROCESS, PREPROCESS, STAGES
from kubeserve.runtime.processing import Processing
from kubeserve.runtime.protocol.errors import GatewayTimeout, InferenceError, NotFound, Unavailable
from kubeserve.runtime.server.codings import accepted_coding, inflate
from kubeserve.runtime.server.messages import Request, Response
from kubeserve.runtime.server.state import LoadedModel, ServerState
from kubeserve.runtime.server.unavailable import unavailable

T = TypeVar("T")
# A stage, and when it started and ended (time.perf_counter()).
StageBounds = tuple[str, float, float]
# The stages a request passed through, by whether it had a preprocess and a postprocess stage.
_STAGES_PASSED = {
    (preprocessed, postprocessed): tuple(
        stage for stage in STAGES if (stage != PREPROCESS or preprocessed) and (stage != POSTPROCESS or postprocessed)
    )
    for preprocessed in (False, True)
    for postprocessed in (False, True)
}
# Server-Timing's template for each list of stages a request may go through.
_SERVER_TIMING: dict[tuple[str, ...], str] = {}


def server_timing(stages: tuple[str, ...], durations: Sequence[float]) -> str:
    """The ``Server-Timing`` header: each stage's duration in milliseconds."""
    template = _SERVER_TIMING.get(stages)
    if template is None:
        template = _SERVER_TIMING[stages] = ", ".join(f"{stage};dur={{:.3f}}" for stage in stages)
    return template.format(*[seconds * 1e3 for seconds in durations])


class Exchange:
    __slots__ = (
        "_request",
        "_state",
        "arrived",
        "arrived_on_loop",
        "deserialized_at",
        "job",
        "postprocessed",
        "preprocessed",
        "protocol",
        "resumed_at",
        "task",
    )

    def __init__(self, state: ServerState, request: Request, protocol: str = HTTP) -> None:
        self._state = state
        self._request = request
        self.protocol = protocol  # the wire it came on (``config.PROTOCOLS``): its metrics' label
        self.arrived = time.perf_counter()
        self.arrived_on_loop = asyncio.get_running_loop().time()
        self.deserialized_at = 0.0
        self.resumed_at = 0.0
        self.job: Job | None = None
        # The preprocess and postprocess stages' start and end (``time.perf_counter()``); None: it had none.
        self.preprocessed: tuple[float, float] | None = None
        self.postprocessed: tuple[float, float] | None = None
        # The task answering the request, once a stage on the loop has looked it up (the other stage needs it too).
        self.task: asyncio.Task[Any] | None = None
        if state.tracing is not None:
            request.trace = state.tracing.start(request, self.arrived)

    async def __aenter__(self) -> Exchange:
        self._state.request_started()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _trace: TracebackType | None
    ) -> None:
        metrics = self._state.metrics
        refused = False
        status = None  # of an error's answer
        if isinstance(error, InferenceError):
            status = error.status
            metrics.answered(status, self.protocol)
            if isinstance(error, Unavailable):
                metrics.rejected[error.reason].inc()
                refused = error.reason is Rejection.DRAINING
        elif error is not None and not isinstance(error, asyncio.CancelledError):
            status = 500
            metrics.answered(status, self.protocol)
        if error is not None and (trace := self._request.trace) is not None:
            trace.failed(status, error, time.perf_counter())
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

    async def preprocess(self, loaded: LoadedModel, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The preprocess stage: the tensors the client sent as the model takes them (its images decoded)."""
        processing = loaded.model.processing
        if processing.images:  # rows the batcher would refuse are refused before any image is decoded
            loaded.batcher.batch_shape(feeds)
        started = time.perf_counter()
        self._state.arriving += 1  # it may yet share a batch: no request computes alone meanwhile
        try:
            feeds = await self._stage(
                PREPROCESS, started, processing, processing.preprocess_on_loop, processing.preprocesses_in_thread,
                processing.preprocess, feeds,
            )  # fmt: skip
        finally:
            self._state.arriving -= 1
        self.preprocessed = (started, time.perf_counter())
        return feeds

    async def postprocess(self, loaded: LoadedModel, outputs: Outputs, classifications: dict[str, int]) -> Outputs:
        """The postprocess stage: the model's outputs as the client asked for them (top classes)."""
        processing = loaded.model.processing
        started = time.perf_counter()
        outputs = await self._stage(
            POSTPROCESS, started, processing, processing.postprocess_on_loop,
            processing.postprocesses_in_thread(classifications), processing.postprocess, outputs, classifications,
        )  # fmt: skip
        self.postprocessed = (started, time.perf_counter())
        return outputs

    async def _stage(
        self,
        name: str,
        started: float,
        processing: Processing,
        on_loop: Callable[[T], Awaitable[object]] | None,
        in_thread: bool,
        function: Callable[..., T],
        tensors: T,
        *args: Any,
    ) -> T:
        """The stage ``name`` (``PREPROCESS``, ``POSTPROCESS``) from ``started``, in its two parts, both by one
        deadline (504 past it: ``StageRunner.deadline``): ``await on_loop(tensors)`` (a handler's ``async def``, what
        it makes and raises judged by the handler) on the event loop, then (``in_thread``) ``function(tensors,
        *args)``, which blocks, off it. The handler's call is awaited here, not in a coroutine of its own: on every
        request's path, each frame costs."""
        stages = self._state.stages
        # Both parts by one deadline; a stage of one part takes its own from now, as this would.
        deadline = stages.deadline(name) if on_loop is not None and in_thread else None
        trace = self._request.trace
        if on_loop is not None:
            handler = processing.handler
            assert handler is not None
            if trace is not None:
                on_loop = trace.in_stage_on_loop(name, started, on_loop)
            task = self.task
            if task is None:
                task = self.task = asyncio.current_task()
            try:
                made = await stages.run_on_loop(name, on_loop, tensors, deadline=deadline, task=task)
            except GatewayTimeout:  # the stage's timeout (or one the handler raised, as in a thread): a 504
                raise
            except (Exception, SystemExit, asyncio.CancelledError) as error:  # the user's code's, and cancels
                failure = handler.on_loop_failure(name, error)
                if failure is error:
                    raise
                raise failure from None
            tensors = handler.on_loop_output(name, made)  # type: ignore[assignment]  (checked: the stage's tensors)
        if in_thread:
            if trace is not None:
                function = trace.in_stage(name, started, function)
            tensors = await stages.run(name, function, tensors, *args, deadline=deadline)
        return tensors

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

    def stage_bounds(self, done: float) -> list[StageBounds]:
        """The stages the request went through, in ``STAGES``' order, each with its start and end; ``done``: the
        response is ready."""
        job = self.job
        assert job is not None, "stages are reported after compute()"
        bounds = [("deserialize", self.arrived, self.deserialized_at)]
        if (preprocessed := self.preprocessed) is not None:
            bounds.append((PREPROCESS, *preprocessed))
        bounds += [("queue", job.queued, job.started), ("compute", job.started, job.finished)]
        if (postprocessed := self.postprocessed) is not None:
            bounds.append((POSTPROCESS, *postprocessed))
        serialized_from = postprocessed[1] if postprocessed is not None else self.resumed_at
        bounds += [("serialize", serialized_from, done), ("total", self.arrived, done)]
        return bounds

    def respond(self, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> Response:
        response_headers = {"Server-Timing": self.finish()}
        if headers:
            response_headers.update(headers)
        response = Response(body, 200, content_type, response_headers)
        accept = self._request.headers.get("accept-encoding")
        if accept is not None:
            response.coding = accepted_coding(accept)
        return response

    def finish(self) -> str:
        """The answer is ready: its stages are recorded (once it is on its way) and traced; what ``Server-Timing``
        says of them."""
        done = time.perf_counter()
        job = self.job
        assert job is not None, "respond() follows compute()"
        preprocessed, postprocessed = self.preprocessed, self.postprocessed
        # Each stage's duration, as ``stage_bounds`` has them, with no more work than the model's stages alone need.
        durations = [self.deserialized_at - self.arrived]
        if preprocessed is not None:
            durations.append(preprocessed[1] - preprocessed[0])
        durations += (job.started - job.queued, job.finished - job.started)
        if postprocessed is not None:
            durations.append(postprocessed[1] - postprocessed[0])
        serialized_from = self.resumed_at if postprocessed is None else postprocessed[1]
        durations += (done - serialized_from, done - self.arrived)
        stages = _STAGES_PASSED[preprocessed is not None, postprocessed is not None]
        # Recorded once the answer is on its way: bookkeeping is no part of the client's latency.
        loop = asyncio.get_running_loop()
        loop.call_soon(self._record, job, stages, durations)
        trace = self._request.trace
        if trace is not None:
            loop.call_soon(trace.answered, self.stage_bounds(done), job)
        return server_timing(stages, durations)

    def _record(self, job: Job, stages: tuple[str, ...], durations: Sequence[float]) -> None:
        metrics = self._state.metrics
        histograms = metrics.stages[self.protocol]
        for stage, seconds in zip(stages, durations, strict=True):
            histograms[stage].observe(seconds)
        metrics.answered(200, self.protocol)
        metrics.statistics.request_succeeded(
            job.rows,
            total=durations[-1],
            queue=job.started - job.queued,
            compute_input=job.inferring - job.started + _seconds(self.preprocessed),
            compute_infer=job.inferred - job.inferring,
            compute_output=job.finished - job.inferred + _seconds(self.postprocessed),
        )


def _seconds(bounds: tuple[float, float] | None) -> float:
    """How long a stage with these bounds took; 0 for one that did not run (None)."""
    return bounds[1] - bounds[0] if bounds is not None else 0.0
