"""The dynamic batcher: requests wait in a bounded priority queue and leave it in batches.

Triton's rules and names: a batch goes out as soon as it is full (``max_batch_size`` rows) or reaches a
``preferred_batch_size``; otherwise it waits up to ``max_queue_delay_microseconds`` from its oldest
request for more to join. Requests with different non-batch shapes never share a batch. Up to
``instance_count`` batches compute at once in worker threads; while they compute, the next batch forms.

Deadlines (``default_timeout_microseconds``, or a request's shorter ``timeout``) count from the request's
arrival; a request still queued at its deadline leaves the queue rejected (``Rejection.TIMEOUT``) and
costs no compute. A full queue rejects at once. Priority 1 is served first, then 2, ...; requests without one come last.

Everything but the compute itself runs on the event loop, so the queue needs no locks.

A batch's compute may run code around the model on the batch's stacked rows (``preprocess``, ``postprocess``: a
batched Python handler's stages). Its time is the compute's, split as Triton's statistics report it (preprocess in
``compute_input``, postprocess in ``compute_output``); such a compute always runs in a worker thread, never on the
loop, whatever ``ComputeCosts`` measures. A ``BadRequest`` it raises answers every request of the batch 400.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import itertools
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from kubeserve.runtime.admission import Rejected, Rejection
from kubeserve.runtime.metrics import ServerMetrics
from kubeserve.runtime.protocol.errors import BadRequest, InternalError

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
RunModel = Callable[[dict[str, np.ndarray], Sequence[str] | None], Outputs]
BatchStage = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]

# Requests that name no priority are served after every level that is named.
UNPRIORITISED = sys.maxsize


class JobState(enum.Enum):
    QUEUED = enum.auto()
    COMPUTING = enum.auto()
    DONE = enum.auto()  # answered: computed, expired or abandoned


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_batch_size: int  # 0: every request runs alone
    max_queue_delay_microseconds: int = 0
    preferred_batch_size: tuple[int, ...] = ()
    max_queue_size: int = 1024
    default_timeout_microseconds: int = 0
    instance_count: int = 1

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 0


@dataclass(eq=False, slots=True)
class Job:
    """One request's place in the queue, and the times the server reports for it."""

    feeds: dict[str, np.ndarray]
    rows: int
    shape_key: tuple
    output_names: frozenset[str] | None  # None: all of them
    priority: int
    # Scheduling (batch delay, deadline) runs on the loop's clock; reported durations on perf_counter().
    queued_on_loop: float
    deadline: float | None
    arrived: float
    future: asyncio.Future[Outputs]
    state: JobState = JobState.QUEUED
    queued: float = 0.0
    # Compute, split as Triton's statistics report it: inputs stacked, model run, outputs split.
    started: float = 0.0
    inferring: float = 0.0
    inferred: float = 0.0
    finished: float = 0.0
    batch_rows: int = 0  # of the batch it was computed in, its own and the others'
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class ComputeCosts:
    """Whether a batch is cheaper to compute on the event loop than to hand to a worker thread, from measurements.

    A hand-off costs two thread wake-ups (to the worker, and the answer back to the loop): tens of microseconds,
    more when the loop is busy. A tiny model computes in less. Both are measured as batches go (moving averages):
    while a batch's compute costs less than a hand-off, batches run on the loop; when compute grows past it (bigger
    batches, a slower model) they go back to the threads. Every ``REFRESH``-th batch goes to a thread anyway, so
    the hand-off's cost stays current. Nothing to configure: a model that is never cheap never runs on the loop.
    """

    SAMPLES = 16  # batches handed to threads, measured, before deciding
    REFRESH = 64
    WEIGHT = 0.1  # of the newest measurement in the moving averages

    def __init__(self) -> None:
        self._compute = 0.0
        self._handoff = 0.0
        self._handed = 0
        self._since_refresh = 0

    def inline(self) -> bool:
        if self._handed < self.SAMPLES:
            return False
        self._since_refresh += 1
        if self._since_refresh >= self.REFRESH:
            self._since_refresh = 0
            return False
        return self._compute < self._handoff

    @property
    def cheap(self) -> bool:
        """Batches cost less on the loop than a hand-off, as last measured (``inline`` without its refresh)."""
        return self._handed >= self.SAMPLES and self._compute < self._handoff

    def computed(self, job: Job, *, inline: bool = False, handed: float = 0.0, back: float = 0.0) -> None:
        """A batch's costs, from its first job's times: its compute, and (handed to a thread) the hand-off."""
        self._compute = self._average(self._compute, job.finished - job.started, self._handed)
        if not inline:
            handoff = (job.started - handed) + (back - job.finished)
            self._handoff = self._average(self._handoff, handoff, self._handed)
            self._handed += 1

    def _average(self, current: float, value: float, count: int) -> float:
        return value if count == 0 else current + self.WEIGHT * (value - current)


class DynamicBatcher:
    def __init__(
        self,
        run_model: RunModel,
        policy: BatchPolicy,
        metrics: ServerMetrics,
        costs: ComputeCosts | None = None,
        *,
        preprocess: BatchStage | None = None,
        postprocess: BatchStage | None = None,
    ) -> None:
        self._run_model = run_model
        self._preprocess = preprocess
        self._postprocess = postprocess
        # User code around the model is never run on the loop, however cheap the compute measures.
        self._may_inline = preprocess is None and postprocess is None
        self.policy = policy
        self._metrics = metrics
        self._preferred = frozenset(policy.preferred_batch_size)
        self._delay = policy.max_queue_delay_microseconds / 1e6
        self._levels: dict[int, deque[Job]] = {}
        self._level_order: list[int] = []
        self._queued = 0
        self._computing = 0
        self._wake_timer: asyncio.TimerHandle | None = None
        self._wake_at = 0.0
        self._flushing = False
        self._closed = False
        self._dispatch_scheduled = False
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(policy.instance_count, thread_name_prefix="inference")
        self._costs = costs or ComputeCosts()
        metrics.queue_depth.set_function(lambda: self._queued)  # read when scraped

    # -- admission ---------------------------------------------------------------------------------

    def batch_shape(self, feeds: dict[str, np.ndarray]) -> tuple[int, tuple]:
        """Rows and the shape key of a request, or a 400 if it cannot be batched as given."""
        if not self.policy.batching:
            return 1, ()
        rows = {array.shape[0] for array in feeds.values()}
        if len(rows) != 1:
            raise BadRequest(f"inputs disagree on the batch (first) dimension: {sorted(rows)}")
        count = rows.pop()
        if count < 1:
            raise BadRequest("the batch (first) dimension must be at least 1")
        if count > self.policy.max_batch_size:
            raise BadRequest(f"{count} rows exceed the model's max_batch_size of {self.policy.max_batch_size}")
        return count, tuple((name, feeds[name].shape[1:]) for name in sorted(feeds))

    def deadline(self, arrived_on_loop: float, timeout_microseconds: int | None) -> float | None:
        """Triton's rule: a request may shorten the default timeout, not extend it; 0 means none."""
        limits = [t for t in (timeout_microseconds or 0, self.policy.default_timeout_microseconds) if t > 0]
        return arrived_on_loop + min(limits) / 1e6 if limits else None

    async def infer(
        self,
        feeds: dict[str, np.ndarray],
        *,
        output_names: Sequence[str] | None = None,
        priority: int = 0,
        timeout_microseconds: int | None = None,
        arrived: float | None = None,
        arrived_on_loop: float | None = None,
        alone: bool = False,
    ) -> tuple[Outputs, Job]:
        """Queue a request, wait for its batch, and return its rows of the outputs (with its timings).

        ``alone``: no other request has arrived that could join its batch (the server knows what it has read);
        then, with nothing queued or computing, no window, and a model cheap enough to run on the loop, it is
        computed at once, without a trip through the queue: the batch of one it would leave in anyway."""
        rows, shape_key = self.batch_shape(feeds)
        now = time.perf_counter()
        now_on_loop = self._loop.time()
        job = Job(
            feeds=feeds,
            rows=rows,
            shape_key=shape_key,
            output_names=frozenset(output_names) if output_names is not None else None,
            priority=priority or UNPRIORITISED,
            queued_on_loop=now_on_loop,
            deadline=self.deadline(arrived_on_loop or now_on_loop, timeout_microseconds),
            arrived=arrived or now,
            future=self._loop.create_future(),
            queued=now,
        )
        if (
            alone
            and not self._queued
            and not self._computing
            and not self._delay
            and self._may_inline
            and self._costs.cheap
        ):
            return self._compute_alone(job), job
        self._admit(job)
        try:
            return await job.future, job
        except asyncio.CancelledError:
            self._abandon(job)
            raise

    def _admit(self, job: Job) -> None:
        if self._closed:
            raise Rejected(Rejection.DRAINING)
        if self._queued >= self.policy.max_queue_size:
            raise Rejected(Rejection.QUEUE_FULL, f"{self.policy.max_queue_size} requests waiting")
        level = self._levels.get(job.priority)
        if level is None:
            level = self._levels[job.priority] = deque()
            bisect.insort(self._level_order, job.priority)
        level.append(job)
        self._queued += 1
        if job.deadline is not None:
            job.timer = self._loop.call_at(job.deadline, self._expire, job)
        # Dispatch at the end of this loop iteration, not now: requests read from the same poll of the
        # sockets then share a batch instead of the first one leaving alone.
        if not self._dispatch_scheduled:
            self._dispatch_scheduled = True
            self._loop.call_soon(self._scheduled_dispatch)

    def _scheduled_dispatch(self) -> None:
        self._dispatch_scheduled = False
        self._dispatch()

    def _leave_queue(self, job: Job) -> None:
        job.state = JobState.DONE
        if job.timer is not None:
            job.timer.cancel()
        self._queued -= 1
        if not self._queued:
            # Whatever the deques still hold left early (expired, abandoned): drop it with its tensors.
            self._levels.clear()
            self._level_order.clear()

    def _leave_early(self, job: Job) -> None:
        """Out of the queue before compute; its tensors go now, not when a later batch passes its entry."""
        self._leave_queue(job)
        job.feeds = {}

    def _expire(self, job: Job) -> None:
        if job.state is not JobState.QUEUED:
            return
        self._leave_early(job)
        # It waited this long and never computed: count it, or overload would look like a short queue.
        self._metrics.queue_delay.observe(time.perf_counter() - job.arrived)
        job.future.set_exception(Rejected(Rejection.TIMEOUT))

    def _abandon(self, job: Job) -> None:
        if job.state is JobState.QUEUED:
            self._leave_early(job)

    # -- forming batches ---------------------------------------------------------------------------

    def _dispatch(self) -> None:
        while self._queued and not self.saturated:
            batch = self._next_batch()
            if not batch:
                return
            self._start(batch)

    def _next_batch(self) -> list[Job]:
        """The batch to send now, or [] (with a wake-up set) when it should wait for more requests."""
        chosen: list[Job] = []
        rows = 0
        preferred_count = 0
        send_now = self._flushing or not self.policy.batching
        for job in self._in_order():
            if chosen and (job.shape_key != chosen[0].shape_key or rows + job.rows > self.policy.max_batch_size):
                send_now = True
                break
            chosen.append(job)
            rows += job.rows
            if rows in self._preferred:
                preferred_count = len(chosen)
            if not self.policy.batching or rows == self.policy.max_batch_size:
                send_now = True
                break
        if not chosen:
            return []
        if not send_now and preferred_count:
            chosen = chosen[:preferred_count]
            send_now = True
        if not send_now:
            # Waiting batches hold every queued request (anything left out made send_now true), so the
            # window of the oldest in this batch bounds every queued request's wait.
            ready_at = min(job.queued_on_loop for job in chosen) + self._delay
            if ready_at > self._loop.time():
                self._wake_at_time(ready_at)
                return []
        self._take(chosen)
        return chosen

    def _in_order(self) -> itertools.chain[Job]:
        """Queued jobs, by priority and then arrival (skipping those that left early)."""
        return itertools.chain.from_iterable(
            (job for job in self._levels[level] if job.state is JobState.QUEUED) for level in self._level_order
        )

    def _take(self, chosen: list[Job]) -> None:
        """Remove ``chosen`` (the first queued jobs in order) and anything stale in front of them."""
        remaining = len(chosen)
        for level in list(self._level_order):
            jobs = self._levels[level]
            while jobs and (remaining or jobs[0].state is not JobState.QUEUED):
                if jobs.popleft().state is JobState.QUEUED:
                    remaining -= 1
            if not jobs:
                del self._levels[level]
                self._level_order.remove(level)
            if not remaining:
                break

    def _wake_at_time(self, wake_at: float) -> None:
        """Dispatch again at ``wake_at``: one timer, armed for the earliest time anyone needs."""
        if self._wake_timer is not None:
            if self._wake_at <= wake_at:
                return
            self._wake_timer.cancel()
        self._wake_at = wake_at
        self._wake_timer = self._loop.call_at(wake_at, self._wake)

    def _wake(self) -> None:
        # A fired handle is neither None nor cancelled: forget it, or no later wake-up would ever be armed.
        self._wake_timer = None
        self._dispatch()

    # -- computing ---------------------------------------------------------------------------------

    def _start(self, batch: list[Job]) -> None:
        for job in batch:
            self._leave_queue(job)
            job.state = JobState.COMPUTING
        self._computing += 1
        wanted = [job.output_names for job in batch]
        names = None if None in wanted else sorted(frozenset().union(*wanted))
        if self._may_inline and self._costs.inline():
            # Cheaper than the two thread wake-ups it would take (measured: ComputeCosts): computed on the loop.
            done: asyncio.Future[list[Outputs]] = self._loop.create_future()
            try:
                done.set_result(self._compute(batch, names))
            except Exception as error:  # as the worker thread's would, the failure goes to the batch's requests
                done.set_exception(error)
            else:
                self._costs.computed(batch[0], inline=True)
            self._finish(batch, done, dispatch=False)  # the dispatch loop that started it goes on
            return
        # The loop's own executor hand-off: the answer comes back on the loop (and a closed loop drops it).
        handed = time.perf_counter()
        future = self._loop.run_in_executor(self._executor, self._compute, batch, names)
        future.add_done_callback(lambda done: self._handed_back(batch, done, handed))

    def _compute_alone(self, job: Job) -> Outputs:
        """``job`` as a batch of its own, on the loop, now (``infer``'s ``alone``)."""
        if self._closed:
            raise Rejected(Rejection.DRAINING)
        job.state = JobState.COMPUTING
        self._computing += 1
        done: asyncio.Future[list[Outputs]] = self._loop.create_future()
        try:
            done.set_result(self._compute([job], sorted(job.output_names) if job.output_names is not None else None))
        except Exception as error:
            done.set_exception(error)
        else:
            self._costs.computed(job, inline=True)
        self._finish([job], done, dispatch=False)
        return job.future.result()

    def _handed_back(self, batch: list[Job], done: asyncio.Future[list[Outputs]], handed: float) -> None:
        if not done.cancelled() and done.exception() is None:
            self._costs.computed(batch[0], handed=handed, back=time.perf_counter())
        self._finish(batch, done)

    def _compute(self, batch: list[Job], names: list[str] | None) -> list[Outputs]:
        """Runs in a worker thread: stack the requests, preprocess, run the model, postprocess, split the outputs."""
        # Compute starts here, not at dispatch: waiting for a worker thread (and the GIL) is still waiting.
        started = time.perf_counter()
        for job in batch:
            job.started = started  # set now: a failed batch still reports its queue delay
        if len(batch) == 1:
            feeds = batch[0].feeds
            inferring = started
        else:
            feeds = {name: np.concatenate([job.feeds[name] for job in batch]) for name in batch[0].feeds}
            inferring = time.perf_counter()
        if self._preprocess is not None:
            feeds = self._preprocess(feeds)
            inferring = time.perf_counter()
        outputs = self._run_model(feeds, names)
        inferred = time.perf_counter()
        if self._postprocess is not None:
            outputs = self._postprocess(outputs)
        total = sum(job.rows for job in batch)
        if len(batch) == 1:
            per_job = [outputs]
        else:
            for name, array in outputs.items():
                if array.ndim == 0 or array.shape[0] != total:
                    raise InternalError(
                        f"output '{name}' has shape {list(array.shape)}, not {total} rows for a batch of {total}"
                    )
            per_job = []
            start = 0
            for job in batch:
                end = start + job.rows
                per_job.append({name: array[start:end] for name, array in outputs.items()})
                start = end
        finished = time.perf_counter()
        for job in batch:
            job.inferring = inferring
            job.inferred = inferred
            job.finished = finished
            job.batch_rows = total
        return per_job

    def _finish(self, batch: list[Job], done: asyncio.Future[list[Outputs]], *, dispatch: bool = True) -> None:
        self._computing -= 1
        failure: Exception | None = None
        if done.cancelled():  # close() let the worker threads go before this batch started
            failure = Rejected(Rejection.DRAINING)
        elif isinstance(error := done.exception(), BadRequest):  # a stage around the model refused the batch's rows
            failure = error
        elif error is not None:
            log.error("inference failed", extra={"event": "inference_failed", "error": str(error)})
            failure = error if isinstance(error, InternalError) else InternalError(f"inference failed: {error}")
        # Recorded once the answers are on their way: bookkeeping is no part of anyone's latency.
        self._loop.call_soon(self._record, batch, failure is None)
        for index, job in enumerate(batch):
            job.state = JobState.DONE
            if job.future.done():
                continue
            if failure is not None:
                job.future.set_exception(failure)
            else:
                job.future.set_result(done.result()[index])
        if dispatch:
            self._dispatch()

    def _record(self, batch: list[Job], computed: bool) -> None:
        self._metrics.batch_size.observe(sum(job.rows for job in batch))
        for job in batch:
            if job.started:
                self._metrics.queue_delay.observe(job.started - job.arrived)
        if computed:
            first = batch[0]
            self._metrics.statistics.batch_computed(
                sum(job.rows for job in batch),
                first.inferring - first.started,
                first.inferred - first.inferring,
                first.finished - first.inferred,
            )

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def saturated(self) -> bool:
        """Every instance is computing: queued requests wait for a batch to finish, not for the window."""
        return self._computing >= self.policy.instance_count

    def flush(self) -> None:
        """From now on every batch goes as soon as it can: nobody waits for a window any more (a drain)."""
        self._flushing = True
        self._dispatch()

    def close(self) -> None:
        """Reject whatever is still queued (or arrives later) as draining, and let the worker threads go."""
        self._closed = True
        for job in list(self._in_order()):
            self._leave_early(job)
            job.future.set_exception(Rejected(Rejection.DRAINING))
        if self._wake_timer is not None:
            self._wake_timer.cancel()
            self._wake_timer = None
        self._executor.shutdown(wait=False, cancel_futures=True)
