"""The blocking stages around the model (``preprocess``, ``postprocess``: ``runtime/processing.py``), run off the event
loop in a thread pool of their own, each under its timeout.

The pool has ``processing_threads`` threads (by default one per CPU the worker may use, its share of the pod's:
``available_cpus() // workers``, at least one); they start with the first stage, so a model with nothing to process
starts none. Past its timeout (``preprocess_timeout_seconds``, ``postprocess_timeout_seconds``) a stage's request is
answered 504, within ``SWEEP_SECONDS``: the preprocess stage runs before its request joins the queue, the postprocess
stage after it has left its batch, so no batch waits for either. A stage that waits for a free thread waits within its
timeout, and one whose request has been answered (504, or its client left) before a thread took it up is never run,
and lets go of its arguments at once (a request body can be tens of MB): the queue keeps only an emptied item until a
thread skips it. A thread cannot be stopped: the late stage finishes in its thread, and its result is dropped.

The stages waiting for a thread are bounded as the batcher's queue is, at ``max_queue_size``, counted as the stages
whose requests are still unanswered less one per thread (those taken up). Past it a stage is refused at once with the
overload answer (``Rejection.QUEUE_FULL``, its detail naming the stages: 503 with ``Retry-After``,
``server/unavailable.py``). A request waiting for a stage thread holds what one waiting in the queue holds (its
tensors), and the clients that keep a pod's threads busy are as many as keep its batches full: a bound of a few stages
per thread would refuse an ordinary 32 clients on a pod of two cores. (So a process may hold up to twice
``max_queue_size`` requests' tensors: as many waiting for a stage thread as for a batch.) A thread keeps nothing of a
stage once it has handed back its outcome.

The hand-off is kept lean, since a Python handler's stages are on every request's path, and on a few shared cores each
wake-up of a thread (and each time it then waits for the GIL while the loop runs) costs more than a stage that does
little. So the stages started in one turn of the event loop are handed over together, by one callback that the first of
them schedules (``_hand_over``): they join one queue, and one thread is woken to take them, one after another (none,
when a thread is taking stages from the queue already: it takes these too). A thread that takes a stage while others
wait behind it first calls one more thread, unless a call is outstanding (``_helper_called``), so a slow stage never
holds up the rest while a thread is free; for cheap stages the one called finds little left. Each outcome is handed back
as soon as it is made, and the loop is woken once for all those made before it settles them (``_settle_all``: one
``call_soon_threadsafe``). The timeouts cost no timer per stage: one timer (``_sweep``, every ``SWEEP_SECONDS`` while
stages run) answers those past theirs. A handler's stage written ``async def`` needs no thread: it is awaited on the
loop (``run_on_loop``) under the same timeout, and costs what the call costs.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from kubeserve.runtime.admission import Rejected, Rejection
from kubeserve.runtime.config import RuntimeSettings
from kubeserve.runtime.cpus import processing_threads
from kubeserve.runtime.handler_stages import STAGE_DEADLINE
from kubeserve.runtime.metrics import POSTPROCESS, PREPROCESS
from kubeserve.runtime.protocol.errors import GatewayTimeout
from kubeserve.runtime.server.unavailable import unavailable

T = TypeVar("T")


class _Stage:
    """A stage waiting for a thread: the future its request awaits, the function and its arguments; emptied (None)
    once the request has its answer, so a stage answered without running (504, or its client left) holds nothing
    while it stays queued, not even its future (whose exception's traceback holds the arguments)."""

    __slots__ = ("deadline", "job", "late")

    def __init__(
        self,
        done: asyncio.Future[Any],
        function: Callable[..., Any],
        args: tuple[Any, ...],
        deadline: float,
        late: str,
    ) -> None:
        self.job: tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]] | None = (done, function, args)
        self.deadline = deadline  # time.monotonic() when its timeout passes
        self.late = late  # the 504's message

    def expire(self) -> None:
        """Its timeout has passed: its request is answered 504 (a thread that has it finishes it, to no one)."""
        job = self.job
        if job is not None and not job[0].done():
            job[0].set_exception(GatewayTimeout(self.late))


# How often the stages are checked against their timeouts (how late past it a 504 may come): one timer for them all,
# since one per stage would cost more than a cheap stage does.
SWEEP_SECONDS = 0.05
# An outcome for its request: the stage's result, or what it raised.
_Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


class StageRunner:
    def __init__(self, settings: RuntimeSettings) -> None:
        self._timeouts = {}
        for stage in (PREPROCESS, POSTPROCESS):
            seconds, setting = settings.stage_timeout(stage)
            self._timeouts[stage] = (seconds, f"the {stage} stage took longer than {setting} ({seconds:g} s)")
        self._count = processing_threads(settings.processing_threads, settings.workers)
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the one the stages' requests await on
        self._starting: list[_Stage] = []  # stages started in this turn of the loop, handed over in the next
        self._queued: deque[_Stage] = deque()  # stages for the threads to take, in order
        # Wakes a thread to take stages (True), or stops one (None).
        self._wake: queue.SimpleQueue[bool | None] = queue.SimpleQueue()
        self._helper_called = False  # a thread has been called to help with the queued stages, and none has woken since
        self._closed = False  # the server is stopping: no stage is taken any more
        self._outcomes: deque[_Outcome] = deque()  # made by the threads, for the loop to settle
        self._settle_called = False  # the loop has been asked to settle them, and has not yet
        # Stages whose requests await them (waiting for a thread, or running); counted on the loop.
        self.pending = 0
        # The stages whose requests await them, and the timer that sweeps them for timeouts (``_sweep``): those for
        # a thread, and the tasks awaiting a stage on the loop (a task awaits one at a time), each with its deadline.
        self._in_threads: set[_Stage] = set()
        self._on_loop: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()  # of those tasks, the ones the sweep cancelled
        self._sweeper: asyncio.TimerHandle | None = None
        self._most_pending = self._count + settings.max_queue_size

    def deadline(self, stage: str) -> float:
        """When ``stage``, starting now, must be done by (``time.monotonic()``): for a stage run in two parts (on the
        loop, then in a thread), both keep to it."""
        return time.monotonic() + self._timeouts[stage][0]

    async def run(self, stage: str, function: Callable[..., T], *args: Any, deadline: float | None = None) -> T:
        """``function(*args)`` in a stage thread; a 504 naming ``stage`` past its timeout (by ``deadline``, else from
        now), a 503 when too many stages wait for a thread."""
        if self._closed:  # the server is stopping: no thread will take it
            raise unavailable(Rejected(Rejection.DRAINING))
        if self.pending >= self._most_pending:
            waiting = self.pending - self._count
            raise unavailable(Rejected(Rejection.QUEUE_FULL, f"{waiting} stages waiting for {self._count} threads"))
        if deadline is None:
            deadline = self.deadline(stage)
        loop = self._loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        if not self._threads:
            self._start()
        work = _Stage(done, function, args, deadline, self._timeouts[stage][1])
        self._in_threads.add(work)
        if self._sweeper is None:
            self._sweep_soon()
        self.pending += 1
        if not self._starting:
            loop.call_soon(self._hand_over)
        self._starting.append(work)
        try:
            return await done
        finally:  # the stage's outcome, its 504, or its client gone
            self.pending -= 1
            self._in_threads.discard(work)
            work.job = None  # a stage still queued lets go of its arguments

    async def run_on_loop(
        self,
        stage: str,
        function: Callable[..., Awaitable[T]],
        *args: Any,
        deadline: float | None = None,
        task: asyncio.Task[Any] | None = None,
    ) -> T:
        """``await function(*args)`` on the event loop, under ``stage``'s timeout (by ``deadline``, else from now):
        past it (``_sweep``), cancelled and the same 504 as a stage in a thread. A cancel from elsewhere (the client
        gone, the server stopping) goes through as it is, even one that comes with the timeout's. ``task``: the one
        running this, where the caller has it already (on every request's path, looking it up costs)."""
        if task is None:
            task = asyncio.current_task()
            assert task is not None
        baseline = task.cancelling()
        self._on_loop[task] = self.deadline(stage) if deadline is None else deadline
        if self._sweeper is None:
            self._sweep_soon()
        try:
            return await function(*args)
        except BaseException:
            if task in self._expired:
                self._expired.discard(task)
                if task.uncancel() <= baseline:  # the timeout's cancel alone: whatever the stage made of it, a 504
                    raise GatewayTimeout(self._timeouts[stage][1]) from None
            raise
        finally:
            del self._on_loop[task]
            if task in self._expired:  # the stage let the timeout's cancel go and returned: undone (as asyncio.timeout)
                self._expired.discard(task)
                task.uncancel()

    def _sweep_soon(self) -> None:
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_SECONDS, self._sweep)

    def _sweep(self) -> None:
        """Every ``SWEEP_SECONDS`` while stages run: those past their timeout are answered 504 (a stage in a thread's
        request at once; a stage on the loop cancelled, which ``run_on_loop`` makes the 504)."""
        now = time.monotonic()
        for work in [work for work in self._in_threads if work.deadline <= now]:
            work.expire()
        for task in [task for task, deadline in self._on_loop.items() if deadline <= now]:
            if task not in self._expired:
                self._expired.add(task)
                task.cancel()
        if self._in_threads or self._on_loop:
            self._sweep_soon()
        else:
            self._sweeper = None

    def _start(self) -> None:
        for index in range(self._count):
            thread = threading.Thread(target=self._serve, name=f"stage-{index}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _hand_over(self) -> None:
        """In the loop's next turn: the stages started in this one join the queue, and a thread is woken for them
        unless one is taking stages from it already (it takes these too, since it stops only when it finds the queue
        empty). Whether one is, is judged after they joined: judged before, a thread could find the queue empty and
        stop between the two, leaving them to no one."""
        starting, self._starting = self._starting, []
        if self._closed:  # what it had started was cancelled
            return
        queued = self._queued
        queued.extend(starting)
        if len(queued) <= len(starting):  # nothing queued before them is left: no thread may be taking from it
            self._wake.put(True)

    def _serve(self) -> None:
        """A stage thread: when woken, run the queued stages until none is left, until told to stop."""
        queued, outcomes = self._queued, self._outcomes
        while self._wake.get():
            self._helper_called = False
            while True:
                try:
                    work = queued.popleft()
                except IndexError:
                    break
                if queued and not self._helper_called:  # a slow stage must not hold up those behind it
                    self._helper_called = True
                    self._wake.put(True)
                job, deadline = work.job, work.deadline  # the job read once: the loop may empty it meanwhile
                del work
                if job is None:  # answered while it waited for a thread (timed out, or its client left)
                    continue
                done, function, args = job
                del job
                if done.done():  # answered just now
                    del done, function, args  # nothing of a stage is held while the thread waits
                    continue
                # A handler's pool of processes keeps to it. Not reset after: this thread runs stages alone, each
                # setting its own.
                STAGE_DEADLINE.set(deadline)
                try:
                    outcomes.append((done, function(*args), None))
                except BaseException as error:  # whatever it raised, for the request to raise
                    outcomes.append((done, None, error))
                del done, function, args
                self._hand_back()

    def _hand_back(self) -> None:
        """In a stage thread: the loop is asked to settle the outcomes made, unless it has been already."""
        if self._settle_called:
            return
        self._settle_called = True
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._settle_all)
        except RuntimeError:  # the loop has closed (the server stopped): nobody waits, nothing is kept
            self._outcomes.clear()
            self._settle_called = False

    def _settle_all(self) -> None:
        """On the loop: each outcome made to its request. Cleared first: an outcome made meanwhile asks again."""
        self._settle_called = False
        outcomes = self._outcomes
        while outcomes:
            _settle(*outcomes.popleft())

    def close(self) -> None:
        """Stages no thread has taken are dropped (their requests cancelled), and later ones refused as draining;
        those running finish in their threads, their requests still answered 504 past their timeouts."""
        self._closed = True
        waiting = self._starting
        self._starting = []
        while True:  # one at a time: a thread may be taking from the queue meanwhile
            try:
                waiting.append(self._queued.popleft())
            except IndexError:
                break
        for work in waiting:
            if (job := work.job) is not None:
                job[0].cancel()
        for _ in self._threads:
            self._wake.put(None)
        if self._sweeper is not None and not (self._in_threads or self._on_loop):  # else it keeps their timeouts
            self._sweeper.cancel()
            self._sweeper = None


def _settle(done: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """On the loop: a stage's outcome to its request, unless it was answered already (504, or its client left)."""
    if done.done():
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)
