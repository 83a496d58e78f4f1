"""The blocking stages around the model (``preprocess``, ``postprocess``: ``runtime/processing.py``), run off the event
loop in a thread pool of their own, each under its timeout.

The pool has a thread per CPU the worker may use (its share of the pod's: ``available_cpus() // workers``, at least
one); they start with the first stage, so a model with nothing to process starts none. Past its timeout
(``preprocess_timeout_seconds``, ``postprocess_timeout_seconds``) a stage's request is answered 504 at once: the
preprocess stage runs before its request joins the queue, the postprocess stage after it has left its batch, so no
batch waits for either. A stage that waits for a free thread waits within its timeout, and one whose request has been
answered (504, or its client left) before a thread took it up is never run. A thread cannot be stopped: the late
stage finishes in its thread, and its result is dropped.

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

from kubeserve.runtime.config import RuntimeSettings
from kubeserve.runtime.cpus import available_cpus, cpus_per_worker
from kubeserve.runtime.metrics import POSTPROCESS, PREPROCESS
from kubeserve.runtime.protocol.errors import GatewayTimeout

T = TypeVar("T")
# A stage waiting for a thread: the future its request awaits, the function and its arguments; None stops a thread.
_Work = tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]] | None


class StageRunner:
    def __init__(self, settings: RuntimeSettings) -> None:
        self._timeouts = {}
        for stage in (PREPROCESS, POSTPROCESS):
            seconds, setting = settings.stage_timeout(stage)
            self._timeouts[stage] = (seconds, f"the {stage} stage took longer than {setting} ({seconds:g} s)")
        self._count = cpus_per_worker(available_cpus(), settings.workers)
        self._threads: list[threading.Thread] = []
        self._work: queue.SimpleQueue[_Work] = queue.SimpleQueue()

    async def run(self, stage: str, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in a stage thread; a 504 naming ``stage`` past its timeout."""
        seconds, message = self._timeouts[stage]
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        timer = loop.call_later(seconds, _time_out, done, message)
        if not self._threads:
            self._start()
        self._work.put((done, function, args))
        try:
            return await done
        finally:
            timer.cancel()

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
            done, function, args = work
            if done.done():  # answered while it waited for a thread (timed out, or its client left)
                continue
            try:
                outcome = (function(*args), None)
            except BaseException as error:  # whatever it raised, for the request to raise
                outcome = (None, error)
            with contextlib.suppress(RuntimeError):  # the loop has closed (the server stopped): nobody waits
                done.get_loop().call_soon_threadsafe(_settle, done, *outcome)

    def close(self) -> None:
        """Stages not started yet are dropped (their requests cancelled); those running finish in their threads."""
        while True:
            try:
                work = self._work.get_nowait()
            except queue.Empty:
                break
            if work is not None:
                work[0].cancel()
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
