"""The blocking stages around the model (``preprocess``, ``postprocess``: ``runtime/processing.py``), run off the event
loop in a thread pool of their own, each under its timeout.

The pool has a thread per CPU the worker may use (its share of the pod's: ``available_cpus() // workers``, at least
one); they start with the first stage, so a model with nothing to process starts none. Past its timeout
(``preprocess_timeout_seconds``, ``postprocess_timeout_seconds``) a stage's request is answered 504 at once: the
preprocess stage runs before its request joins the queue, the postprocess stage after it has left its batch, so no
batch waits for either. A stage that waits for a free thread waits within its timeout, and one whose request has been
answered (504, or its client left) before a thread took it up is never run, and lets go of its arguments at once (a
request body can be tens of MB): the queue keeps only an emptied item until a thread skips it. A thread cannot be
stopped: the late stage finishes in its thread, and its result is dropped.

The stages waiting for a thread are bounded: ``WAITING_PER_THREAD`` per thread, counted as the stages whose requests
are still unanswered less one per thread (those taken up). Past it a stage is refused at once with the overload answer
(``Rejection.QUEUE_FULL``, its detail naming the stages: 503 with ``Retry-After``, ``server/unavailable.py``), as the
batcher's queue refuses past ``max_queue_size``. The bound is the runner's own rather than ``max_queue_size``: one
runner serves every request's stages, before the request joins its model's queue and after it left, and what it
bounds is the waiting for its few threads; eight stages per thread is well past what keeps the threads busy, and far
below what would hold much memory. A thread keeps nothing of a stage once it has handed back its outcome.

The hand-off is kept lean, since a Python handler's stages are on every request's path: a stage goes into
one queue that the threads take from, and its result comes back with one ``call_soon_threadsafe``; under load a thread
takes the next stage without waiting and the loop wakes once for several results. (A stage that does nothing, 32 at a
time on the bench machine: 29 to 32 µs of CPU each through ``run_in_executor`` under ``wait_for``, 11 µs here; one at
a time, both about 90 µs, the threads' wake-ups.)
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from kubeserve.runtime.admission import Rejected, Rejection
from kubeserve.runtime.config import RuntimeSettings
from kubeserve.runtime.cpus import available_cpus, cpus_per_worker
from kubeserve.runtime.metrics import POSTPROCESS, PREPROCESS
from kubeserve.runtime.protocol.errors import GatewayTimeout
from kubeserve.runtime.server.unavailable import unavailable

T = TypeVar("T")
# Stages that may wait for a thread, per thread; more are refused (503).
WAITING_PER_THREAD = 8


class _Stage:
    """A stage waiting for a thread: the future its request awaits, the function and its arguments; emptied (None)
    once the request has its answer, so a stage answered without running (504, or its client left) holds nothing
    while it stays queued, not even its future (whose exception's traceback holds the arguments)."""

    __slots__ = ("job",)

    def __init__(self, done: asyncio.Future[Any], function: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.job: tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]] | None = (done, function, args)


# None stops a thread.
_Work = _Stage | None


class StageRunner:
    def __init__(self, settings: RuntimeSettings) -> None:
        self._timeouts = {}
        for stage in (PREPROCESS, POSTPROCESS):
            seconds, setting = settings.stage_timeout(stage)
            self._timeouts[stage] = (seconds, f"the {stage} stage took longer than {setting} ({seconds:g} s)")
        self._count = cpus_per_worker(available_cpus(), settings.workers)
        self._threads: list[threading.Thread] = []
        self._work: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        # Stages whose requests await them (waiting for a thread, or running); counted on the loop.
        self.pending = 0
        self._most_pending = self._count * (1 + WAITING_PER_THREAD)

    async def run(self, stage: str, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in a stage thread; a 504 naming ``stage`` past its timeout, a 503 when too many
        stages wait for a thread."""
        if self.pending >= self._most_pending:
            waiting = self.pending - self._count
            raise unavailable(Rejected(Rejection.QUEUE_FULL, f"{waiting} stages waiting for {self._count} threads"))
        seconds, message = self._timeouts[stage]
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        timer = loop.call_later(seconds, _time_out, done, message)
        if not self._threads:
            self._start()
        work = _Stage(done, function, args)
        self.pending += 1
        done.add_done_callback(lambda _: self._answered(work))
        self._work.put(work)
        try:
            return await done
        finally:
            timer.cancel()

    def _answered(self, work: _Stage) -> None:
        """On the loop: a stage's request has its answer (the stage's outcome, 504, or its client left)."""
        self.pending -= 1
        work.job = None  # a stage still queued lets go of its arguments

    def _start(self) -> None:
        for index in range(self._count):
            thread = threading.Thread(target=self._serve, name=f"stage-{index}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self) -> None:
        """A stage thread: run what comes, until told to stop."""
        while True:
            work = self._work.get()
            if work is None:
                return
            job = work.job  # read once: the loop may empty it meanwhile
            if job is None:  # answered while it waited for a thread (timed out, or its client left)
                continue
            done, function, args = job
            del job
            if done.done():  # answered just now
                continue
            try:
                outcome = (function(*args), None)
            except BaseException as error:  # whatever it raised, for the request to raise
                outcome = (None, error)
            with contextlib.suppress(RuntimeError):  # the loop has closed (the server stopped): nobody waits
                done.get_loop().call_soon_threadsafe(_settle, done, *outcome)
            del work, done, function, args, outcome  # nothing of this stage is held while the thread waits

    def close(self) -> None:
        """Stages not started yet are dropped (their requests cancelled); those running finish in their threads."""
        while True:
            try:
                work = self._work.get_nowait()
            except queue.Empty:
                break
            if work is not None and (job := work.job) is not None:
                job[0].cancel()
        for _ in self._threads:
            self._work.put(None)


def _settle(done: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """On the loop: a stage's outcome to its request, unless it was answered already (504, or its client left)."""
    if done.done():
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)


def _time_out(done: asyncio.Future[Any], message: str) -> None:
    if not done.done():
        done.set_exception(GatewayTimeout(message))
