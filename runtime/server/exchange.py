"""One inference request's passage through the server, timed per stage and counted once.

Stages (``metrics.STAGES``), in order: ``deserialize`` (body read and decoded), ``preprocess`` (a Python handler's
preprocess, then images decoded into the model's tensors; only where the model has either), ``queue`` (waiting for its
batch), ``compute`` (its batch's inference; a batched handler's preprocess and postprocess run in it, not as stages of
their own), ``postprocess`` (a handler's postprocess, then top classes picked; only where the model has the one or the
request asks for the other), ``serialize`` (response encoded) and ``total`` (arrival to response ready). They never
overlap. ``stage_bounds`` gives each stage's start and end; their durations go to
``kubeserve_request_duration_seconds``, to Triton's statistics (``statistics``: preprocess counts in
``compute_input`` and postprocess in ``compute_output``, as Triton counts an ensemble's), and back to the caller in a
``Server-Timing`` header. ``preprocess`` and ``postprocess`` run the model's ``Processing`` as those stages, through
``stage``: a blocking function off the event loop, under its stage's timeout, timed. While tracing
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
from kubeserve.runtime.protocol.errors import InferenceError, NotFound, Unavailable
from kubeserve.runtime.server.codings import accepted_coding, inflate
from kubeserve.runtime.server.messages import Request, Response
from kubeserve.runtime.server.state import LoadedModel, ServerState
from kubeserve.runtime.server.unavailable import unavailable

T = TypeVar("T")
# A stage, and when it started and ended (time.perf_counter()).
StageBounds = tuple[str, float, float]
# The stages of a request without a preprocess or postprocess stage: the model's alone.
MODEL_STAGES = tuple(stage for stage in STAGES if stage not in (PREPROCESS, POSTPROCESS))
# Server-Timing's template for each list of stages a request may go through.
_SERVER_TIMING: dict[tuple[str, ...], str] = {}


def server_timing(stages: tuple[str, ...], durations: tuple[float, ...]) -> str:
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
        "processed",
        "protocol",
        "resumed_at",
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
        # The stages run by ``stage`` (preprocess, postprocess), with their start and end; None: none ran.
        self.processed: dict[str, tuple[float, float]] | None = None
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
        deadline = self._state.stages.deadline(PREPROCESS)  # one timeout for the stage's parts together
        self._state.arriving += 1  # it may yet share a batch: no request computes alone meanwhile
        try:
            if (on_loop := processing.preprocess_on_loop) is not None:
                feeds = await self.stage_on_loop(PREPROCESS, deadline, on_loop, feeds)
            if processing.preprocesses_in_thread:
                feeds = await self.stage(PREPROCESS, deadline, processing.preprocess, feeds)
            return feeds
        finally:
            self._state.arriving -= 1

    async def postprocess(self, loaded: LoadedModel, outputs: Outputs, classifications: dict[str, int]) -> Outputs:
        """The postprocess stage: the model's outputs as the client asked for them (top classes)."""
        processing = loaded.model.processing
        deadline = self._state.stages.deadline(POSTPROCESS)
        if (on_loop := processing.postprocess_on_loop) is not None:
            outputs = await self.stage_on_loop(POSTPROCESS, deadline, on_loop, outputs)
        if processing.postprocesses_in_thread(classifications):
            outputs = await self.stage(POSTPROCESS, deadline, processing.postprocess, outputs, classifications)
        return outputs

    async def stage(self, name: str, deadline: float, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)``, a blocking stage around the model (``PREPROCESS``, ``POSTPROCESS``): off the event
        loop, by ``deadline`` (504 past it: ``StageRunner.deadline``), timed."""
        started = time.perf_counter()
        if (trace := self._request.trace) is not None:
            function = trace.in_stage(name, started, function)
        result = await self._state.stages.run(name, function, *args, deadline=deadline)
        self._processed(name, started)
        return result

    async def stage_on_loop(self, name: str, deadline: float, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await function(*args)``, a stage's part written ``async def``: on the event loop, by ``deadline``, timed
        as part of the stage."""
        started = time.perf_counter()
        if (trace := self._request.trace) is not None:
            function = trace.in_stage_on_loop(name, started, function)
        result = await self._state.stages.run_on_loop(name, function, *args, deadline=deadline)
        self._processed(name, started)
        return result

    def _processed(self, name: str, started: float) -> None:
        """The stage ``name`` ran from ``started`` until now: from its first part's start, if it had one before."""
        if self.processed is None:
            self.processed = {}
        first = self.processed.get(name)
        self.processed[name] = (started if first is None else first[0], time.perf_counter())

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
        processed = self.processed or {}
        bounds = [("deserialize", self.arrived, self.deserialized_at)]
        if (preprocess := processed.get(PREPROCESS)) is not None:
            bounds.append((PREPROCESS, *preprocess))
        bounds += [("queue", job.queued, job.started), ("compute", job.started, job.finished)]
        if (postprocess := processed.get(POSTPROCESS)) is not None:
            bounds.append((POSTPROCESS, *postprocess))
        serialized_from = postprocess[1] if postprocess is not None else self.resumed_at
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
        if self.processed is None:
            # The model's stages alone (``stage_bounds``' without processing), timed with no more work than they
            # were before the processing stages existed: one tuple, one template.
            stages = MODEL_STAGES
            durations = (
                self.deserialized_at - self.arrived,
                job.started - job.queued,
                job.finished - job.started,
                done - self.resumed_at,
                done - self.arrived,
            )
        else:
            bounds = self.stage_bounds(done)
            stages = tuple(stage for stage, _, _ in bounds)
            durations = tuple(end - start for _, start, end in bounds)
        # Recorded once the answer is on its way: bookkeeping is no part of the client's latency.
        loop = asyncio.get_running_loop()
        loop.call_soon(self._record, job, stages, durations)
        trace = self._request.trace
        if trace is not None:
            loop.call_soon(trace.answered, self.stage_bounds(done), job)
        return server_timing(stages, durations)

    def _record(self, job: Job, stages: tuple[str, ...], durations: tuple[float, ...]) -> None:
        metrics = self._state.metrics
        histograms = metrics.stages[self.protocol]
        for stage, seconds in zip(stages, durations, strict=True):
            histograms[stage].observe(seconds)
        metrics.answered(200, self.protocol)
        metrics.statistics.request_succeeded(
            job.rows,
            total=durations[-1],
            queue=job.started - job.queued,
            compute_input=job.inferring - job.started + self._processed_seconds(PREPROCESS),
            compute_infer=job.inferred - job.inferring,
            compute_output=job.finished - job.inferred + self._processed_seconds(POSTPROCESS),
        )

    def _processed_seconds(self, stage: str) -> float:
        """How long a stage run by ``stage`` took; 0 if it did not run."""
        bounds = self.processed.get(stage) if self.processed is not None else None
        return bounds[1] - bounds[0] if bounds is not None else 0.0
