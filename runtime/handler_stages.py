"""A Python handler (the ``handler`` setting), loaded and run as a request's stages: ``Handler`` is what
``Processing`` calls in the stage threads (``server/stages.py``), under each stage's timeout.

- **In the stage threads** (the default): one instance of the class, loaded in the server process, its methods
  called by whichever stage thread runs the request (several at once). A call that hangs holds its thread: the
  request is answered 504 at its timeout, and the thread stays with the call until it returns.
- **In processes** (``holds_gil = True``): code that holds the GIL would take turns with the event loop, so it runs in
  a pool of processes of its own (``HandlerProcesses``), one instance loaded in each. As many as the stage threads
  (``processing_threads``): a stage thread hands the request's tensors to a free process and waits for the answer. A
  process still busy at the stage's timeout (its request's: ``STAGE_DEADLINE``) is killed (its request has its 504,
  the stage timeout's), and so is one that died (a crash: 500); a new one is started in the background and joins the
  pool once it has loaded. Restarts are paced: the first after a quiet minute at once, each next 1 s after the one
  before, doubling to 60 s, so input that crashes every process it reaches restarts no storm of them; a replacement
  that fails to load is logged and tried again at that pace. Meanwhile a request that finds no process free waits,
  within its timeout (past it, the same 504), and one whose timeout passed while it waited is not sent to one.
- **Batched** (``batched = True``): one instance in the server process, its stages called by the batcher (``Processing``
  hands them over: ``batch_preprocess``, ``batch_postprocess``) in the batch's compute, in its inference thread, once
  for the rows of all the batch's requests; each stage must return as many rows as it got. No stage timeout applies
  there (the compute has none), and a pool of processes cannot be asked for: the load refuses ``holds_gil`` with it,
  and a model that does not batch.

- **On the event loop** (a stage written ``async def``): awaited in the server's event loop, under the stage's
  timeout, with no hand-off to a thread: for stages that wait on I/O (a feature store, another service through an
  asyncio client) rather than compute, and for the cheapest stages, which a thread's hand-off would cost more than
  they do. Such a stage must not block: the loop serves every request of this process. Neither a pool of processes
  nor a batched handler can have one (the load refuses them), and warm-up leaves it out (it belongs to the loop).

Errors: ``InvalidInput`` is the client's mistake, a 400 with its message. Anything else (the handler raised, returned
what it must not, or its process died) is the handler's: one ``handler_failed`` log line with the stage
and the traceback (or what became of the process), and a 500 whose message says no more.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import multiprocessing
import os
import queue
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from kubeserve.runtime.config import RuntimeSettings
from kubeserve.runtime.cpus import processing_threads
from kubeserve.runtime.handler import HandlerContext, InvalidInput
from kubeserve.runtime.handler_code import (
    ANSWER,
    FAILED,
    INVALID,
    READY,
    Expected,
    HandlerError,
    StageOutput,
    Tensors,
    checked_stage_output,
    declared,
    handler_failed,
    import_handler,
    instantiate,
    run_batched_stage,
    run_stage,
    serve,
)
from kubeserve.runtime.metrics import POSTPROCESS, PREPROCESS
from kubeserve.runtime.protocol.errors import BadRequest, GatewayTimeout, InternalError
from kubeserve.runtime.signature import ModelSignature

log = logging.getLogger("kubeserve.runtime.handler")
# A pool's restarts (a process replaced, or a replacement that failed to load, tried again): the first after a quiet
# spell at once, each next this long after the one before, doubling up to the most (and that long quiet resets it).
RESTART_FIRST_SECONDS = 1.0
RESTART_MOST_SECONDS = 60.0


# When the stage a thread runs must be done by (``time.monotonic()``), set by the stage threads (``server/stages.py``)
# for the call they make: a pool's process is not sent a stage whose request has its 504 already, nor kept past it.
STAGE_DEADLINE: ContextVar[float | None] = ContextVar("stage_deadline", default=None)


class HandlerFailed(Exception):
    """A stage in a pool's process failed: the message (its traceback, or what became of the process) is the log's."""


@dataclass(frozen=True, slots=True)
class Handler:
    """A loaded handler: what clients see of the model through it, and its stages."""

    name: str  # module:Class
    signature: ModelSignature  # served: what clients send and get
    preprocesses: bool
    postprocesses: bool
    run: Callable[[str, Tensors], Tensors]  # a stage on one request's (or batch's) tensors, checked, here or in a pool
    processes: HandlerProcesses | None = None
    batched: bool = False  # its stages run on a batch's rows, in the batch's compute (``batched = True``)
    on_loop: frozenset[str] = frozenset()  # its stages written ``async def``, awaited on the event loop
    # The instance in this process (None: in a pool's processes), whose ``async def`` stages the server awaits
    # (``stage_on_loop``), and what each stage must make.
    instance: object = None
    expected: Expected | None = None

    def preprocess(self, inputs: Tensors) -> Tensors:
        return self._stage(PREPROCESS, inputs)

    def postprocess(self, outputs: Tensors) -> Tensors:
        return self._stage(POSTPROCESS, outputs)

    def stage_on_loop(self, stage: str) -> Callable[[Tensors], Awaitable[object]]:
        """The instance's ``async def`` ``stage`` (one of ``on_loop``): what the server awaits on its loop, under the
        stage's timeout; what it makes goes through ``on_loop_output``, what it raises through ``on_loop_failure``."""
        return getattr(self.instance, stage)

    def on_loop_output(self, stage: str, made: object) -> Tensors:
        """What a stage of ``on_loop`` made, checked, as a stage in a thread has it checked."""
        assert self.expected is not None
        try:
            return checked_stage_output(stage, made, self.expected)
        except (Exception, SystemExit):  # a broken contract, or what an odd object it returned raised when looked at
            failure = traceback.format_exc()
        raise self._failed(stage, failure)

    def on_loop_failure(self, stage: str, error: BaseException) -> BaseException:
        """What the request raises for ``error``, raised by a stage of ``on_loop`` (the stage's timeout is the 504 of
        ``StageRunner.run_on_loop``, not this): a 400 for ``InvalidInput``, a cancel of the request (its client gone,
        the server stopping) as it is, and a 500 for anything else the user's code raises."""
        if isinstance(error, InvalidInput):
            return BadRequest(str(error))
        if isinstance(error, asyncio.CancelledError):
            task = asyncio.current_task()
            if task is None or task.cancelling():  # this request was cancelled
                return error
        # A cancel of the handler's own (of something it awaited) too.
        return self._failed(stage, "".join(traceback.format_exception(error)))

    def _stage(self, stage: str, tensors: Tensors) -> Tensors:
        try:
            return self.run(stage, tensors)
        except InvalidInput as error:
            raise BadRequest(str(error)) from None
        except GatewayTimeout:  # a pool's process past the stage's timeout: the stage timeout's own 504, not logged
            raise
        except HandlerFailed as error:
            failure = str(error)
        except BaseException:  # whatever the user's code raises (sys.exit() too), a broken contract included
            failure = traceback.format_exc()
        raise self._failed(stage, failure)

    def _failed(self, stage: str, failure: str) -> InternalError:
        handler_failed(self.name, stage, failure)
        return InternalError(f"the handler's {stage} failed (the server's log says why: event handler_failed)")

    def close(self) -> None:
        if self.processes is not None:
            self.processes.close()


def load_handler(name: str, settings: RuntimeSettings, inner: ModelSignature) -> Handler:
    """The class ``name`` (the ``handler`` setting), loaded around ``inner`` (what its preprocess makes and its
    postprocess gets: the model's tensors, image inputs as BYTES); ``HandlerError`` says why it cannot be."""
    handler_class = import_handler(name, settings.handler_path)
    batching = settings.max_batch_size > 0 and inner.batchable
    inputs = declared(handler_class, name, "inputs", batching)
    outputs = declared(handler_class, name, "outputs", batching)
    preprocesses = callable(getattr(handler_class, PREPROCESS, None))
    postprocesses = callable(getattr(handler_class, POSTPROCESS, None))
    for what, tensors, stage, defined in (
        ("inputs", inputs, PREPROCESS, preprocesses),
        ("outputs", outputs, POSTPROCESS, postprocesses),
    ):
        if tensors is not None and not defined:
            raise HandlerError(f"handler {name} declares {what}, but has no {stage} to make them")
    batched = getattr(handler_class, "batched", False)
    holds_gil = getattr(handler_class, "holds_gil", False)
    on_loop = frozenset(
        stage for stage in (PREPROCESS, POSTPROCESS) if inspect.iscoroutinefunction(getattr(handler_class, stage, None))
    )
    if on_loop and (batched or holds_gil):
        raise HandlerError(
            f"handler {name} has an async {' and '.join(sorted(on_loop))} and is "
            f"{'batched' if batched else 'holds_gil'}: an async stage is awaited on the server's event loop, not in "
            f"{'the batch' if batched else 'a pool of processes'}; make it a plain def, or drop "
            f"{'batched' if batched else 'holds_gil'}"
        )
    if batched and holds_gil:
        raise HandlerError(
            f"handler {name} is batched and holds_gil: a batched handler runs in the batch's inference thread, not in "
            "a pool of processes; drop one of them"
        )
    if batched and not batching:
        raise HandlerError(
            f"handler {name} is batched, but the model does not batch requests (max_batch_size is 0, or a tensor of "
            "the model has no dynamic first dimension)"
        )
    served = ModelSignature(inputs=inputs or inner.inputs, outputs=outputs or inner.outputs)
    expected = {
        PREPROCESS: StageOutput(inner.inputs, "the model's inputs"),
        POSTPROCESS: StageOutput(served.outputs, "the outputs served"),
    }
    context = HandlerContext(
        inner, settings.model_name, settings.model_version, settings.model_path, settings.handler_path
    )
    if holds_gil:
        processes = HandlerProcesses(name, settings, context, expected)
        return Handler(name, served, preprocesses, postprocesses, processes.call, processes)
    instance = instantiate(handler_class, name, context)
    run = partial(run_batched_stage if batched else run_stage, instance, expected=expected)
    return Handler(name, served, preprocesses, postprocesses, run, None, batched, on_loop, instance, expected)


@dataclass(eq=False, slots=True)
class _Process:
    process: BaseProcess
    connection: Connection


class HandlerProcesses:
    """The pool of processes a handler with ``holds_gil`` runs in; ``call`` blocks (a stage thread's)."""

    def __init__(self, name: str, settings: RuntimeSettings, context: HandlerContext, expected: Expected) -> None:
        self._name = name
        self._arguments = (name, settings.handler_path, context, expected, settings.log_level)
        self._timeouts = {stage: settings.stage_timeout(stage) for stage in expected}
        self._spawn = multiprocessing.get_context("spawn")  # nothing of the server is forked
        self._idle: queue.SimpleQueue[_Process] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running: set[_Process] = set()
        self._closed = False
        self._closing = threading.Event()  # set with _closed: a restart waiting its turn gives up
        # Restarts' pace (``_pace``): when the last one started (or will), and how long the next waits after it.
        self._last_start = -RESTART_MOST_SECONDS - 1.0
        self._delay = 0.0
        started = [self._start() for _ in range(processing_threads(settings.processing_threads, settings.workers))]
        try:
            for each in started:
                self._loaded(each)
        except BaseException:
            self.close()
            raise
        for each in started:
            self._idle.put(each)

    def call(self, stage: str, tensors: Tensors, deadline: float | None = None) -> Tensors:
        """The handler's ``stage`` on one request's tensors, in a free process, by ``deadline`` (``time.monotonic()``:
        the request's, its stage timeout's; None: the stage thread's ``STAGE_DEADLINE``, else the stage's timeout from
        now). Past it, the 504 the stage timeout gives (``GatewayTimeout``, the same message): no process free in time,
        or the call ran past it. A stage whose deadline has passed while it waited for a process is not sent to one."""
        seconds, setting = self._timeouts[stage]
        if deadline is None:
            deadline = STAGE_DEADLINE.get()
        if deadline is None:
            deadline = time.monotonic() + seconds
        late = f"the {stage} stage took longer than {setting} ({seconds:g} s)"
        try:
            each = self._idle.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise GatewayTimeout(late) from None
        if time.monotonic() >= deadline:  # answered (504) while it waited for a process: not sent
            self._idle.put(each)
            raise GatewayTimeout(late)
        try:
            each.connection.send((stage, tensors))
            if not each.connection.poll(max(0.0, deadline - time.monotonic())):
                self._replace(each)  # still busy: killed, and another started
                raise GatewayTimeout(late)
            kind, answer = each.connection.recv()
        except (OSError, EOFError):  # it died: a broken pipe to it, or the end of its answers
            self._replace(each)
            raise HandlerFailed(f"the handler's process died in the {stage} stage; another is started") from None
        self._idle.put(each)
        if kind == INVALID:
            raise InvalidInput(answer)
        if kind == FAILED:
            raise HandlerFailed(answer)
        assert kind == ANSWER
        return answer

    def close(self) -> None:
        """Kill every process (idle or busy); none is started after."""
        with self._lock:
            self._closed = True
            running = list(self._running)
        self._closing.set()
        for each in running:
            each.process.kill()  # all of them at once, then each reaped
        for each in running:
            self._discard(each)

    def _start(self) -> _Process:
        ours, theirs = self._spawn.Pipe()
        process = self._spawn.Process(
            target=serve, args=(theirs, os.getpid(), *self._arguments), name="kubeserve-handler", daemon=True
        )
        process.start()
        theirs.close()
        started = _Process(process, ours)
        with self._lock:
            self._running.add(started)
        return started

    def _loaded(self, started: _Process) -> None:
        """Until ``started`` has loaded the handler; ``HandlerError`` if it could not."""
        try:
            kind, message = started.connection.recv()
        except (EOFError, OSError):  # it died (or close() killed it)
            started.process.join()
            raise HandlerError(
                f"handler {self._name}: its process exited (code {started.process.exitcode}) before it loaded"
            ) from None
        if kind != READY:
            raise HandlerError(message)

    def _replace(self, gone: _Process) -> None:
        """Kill ``gone`` (busy past its timeout, or dead) and start another in the background."""
        gone.process.kill()
        threading.Thread(target=self._restart, args=(gone,), name="handler-restart", daemon=True).start()

    def _restart(self, gone: _Process) -> None:
        """Start a process in place of ``gone``, paced (``_pace``), until one loads or the pool is closed: each
        failure is logged, and the next try waits longer."""
        self._discard(gone)
        facts = {"pid": gone.process.pid, "exit_code": gone.process.exitcode}
        while self._pace():
            started = self._start()
            try:
                self._loaded(started)
            except HandlerError as error:
                self._discard(started)
                if self._closed:
                    return
                log.error(
                    "a handler process could not be replaced; trying again",
                    extra={"event": "handler_process_failed", **facts, "reason": str(error)},
                )
                continue
            if self._closed:  # close() came while it loaded
                self._discard(started)
                return
            self._idle.put(started)
            log.warning(
                "a handler process was replaced",
                extra={"event": "handler_process_replaced", **facts, "new_pid": started.process.pid},
            )
            return

    def _pace(self) -> bool:
        """Wait for this start's turn; False: the pool was closed meanwhile. The first start after a quiet spell
        (``RESTART_MOST_SECONDS`` without one) goes at once; each next one waits ``RESTART_FIRST_SECONDS``, doubling
        to ``RESTART_MOST_SECONDS``, after the one before: a replacement that cannot load, or input that crashes
        every process it reaches, restarts processes at that pace, not in a storm."""
        with self._lock:
            now = time.monotonic()
            if now - self._last_start > RESTART_MOST_SECONDS:
                self._delay = 0.0
            start = max(now, self._last_start + self._delay)
            self._last_start = start
            self._delay = min(max(2 * self._delay, RESTART_FIRST_SECONDS), RESTART_MOST_SECONDS)
        return not self._closing.wait(start - now)

    def _discard(self, each: _Process) -> None:
        """Kill ``each``, reap it and close its connection, once: close() and a restart may both come to it."""
        with self._lock:
            if each not in self._running:
                return
            self._running.remove(each)
        each.process.kill()
        each.process.join()
        each.connection.close()
