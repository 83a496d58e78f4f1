"""The stage runner (``server/stages.py``): its bound on stages waiting for a thread, what a stage answered without
running (504, or its client left) still holds, and the timeouts of stages awaited on the loop."""

from __future__ import annotations

import asyncio
import gc
import re
import threading
import time
import weakref
from collections import deque

import pytest
from kubeserve.runtime.admission import Rejection
from kubeserve.runtime.config import RuntimeSettings
from kubeserve.runtime.handler_stages import STAGE_DEADLINE
from kubeserve.runtime.metrics import POSTPROCESS, PREPROCESS
from kubeserve.runtime.protocol.errors import GatewayTimeout, Unavailable
from kubeserve.runtime.server.stages import StageRunner


class Body:
    """Stands for a request's arguments: weakly referenced, to see who still holds it."""


def _runner(**settings) -> StageRunner:
    return StageRunner(RuntimeSettings(model_path="m.onnx", model_name="m", **{"processing_threads": 1, **settings}))


async def _occupy(runner: StageRunner, release: threading.Event) -> tuple[asyncio.Task, threading.Event]:
    """The runner's one thread, held until ``release``."""
    started = threading.Event()

    def hold() -> str:
        started.set()
        release.wait(30)
        return "held"

    task = asyncio.create_task(runner.run(POSTPROCESS, hold))
    await asyncio.sleep(0)
    await asyncio.to_thread(started.wait, 30)
    return task, started


async def _outcome(awaitable) -> type[BaseException] | None:
    """What ``awaitable`` raised, keeping no traceback (its frames hold the stage's arguments, as a request would)."""
    try:
        await awaitable
    except (GatewayTimeout, asyncio.CancelledError) as error:
        return type(error)
    return None


QUEUE_SIZE = 8


async def test_stages_past_the_bound_are_refused_with_the_overload_answer():
    runner = _runner(max_queue_size=QUEUE_SIZE)  # as many may wait for a thread as for a batch
    release = threading.Event()
    holder, _ = await _occupy(runner, release)
    waiting = [asyncio.create_task(runner.run(PREPROCESS, lambda n=n: n)) for n in range(QUEUE_SIZE)]
    await asyncio.sleep(0)
    with pytest.raises(Unavailable) as refused:
        await runner.run(PREPROCESS, lambda: "one too many")
    assert refused.value.status == 503
    assert refused.value.reason is Rejection.QUEUE_FULL
    assert refused.value.headers == {"Retry-After": "1"}
    assert f"{QUEUE_SIZE} stages waiting for 1 threads" in str(refused.value)
    release.set()
    assert await holder == "held"
    assert await asyncio.gather(*waiting) == list(range(QUEUE_SIZE))
    assert runner.pending == 0
    assert await runner.run(PREPROCESS, lambda: "room again") == "room again"
    runner.close()


async def test_a_stage_timed_out_or_cancelled_while_queued_lets_go_of_its_arguments():
    runner = _runner(preprocess_timeout_seconds=0.01)
    release = threading.Event()
    holder, _ = await _occupy(runner, release)
    ran = []

    body = Body()
    alive = weakref.ref(body)
    timed_out = runner.run(PREPROCESS, ran.append, body)
    del body
    assert await _outcome(timed_out) is GatewayTimeout
    await asyncio.sleep(0)  # the loop lets go of the handle that woke this task (it holds the answered future)
    gc.collect()
    assert alive() is None  # still queued behind the held thread, and holding nothing

    body = Body()
    alive = weakref.ref(body)
    cancelled = asyncio.create_task(runner.run(POSTPROCESS, ran.append, body))
    del body
    await asyncio.sleep(0)
    cancelled.cancel()
    assert await _outcome(cancelled) is asyncio.CancelledError
    del cancelled
    await asyncio.sleep(0)
    gc.collect()
    assert alive() is None

    assert runner.pending == 1  # the held stage alone
    release.set()
    assert await holder == "held"
    assert await runner.run(POSTPROCESS, lambda: "after") == "after"  # the emptied items were skipped
    assert ran == []
    runner.close()


async def test_a_slow_stage_holds_up_none_of_those_started_with_it():
    """Stages started in one turn of the loop go to the threads together: with a thread free, those queued behind a
    slow one run meanwhile; with none, each outcome still comes back as soon as it is made."""
    release = threading.Event()

    def slow() -> str:
        release.wait(30)
        return "slow"

    runner = _runner(processing_threads=2)
    held = asyncio.create_task(runner.run(PREPROCESS, slow))
    quick = [asyncio.create_task(runner.run(PREPROCESS, lambda n=n: n)) for n in range(20)]
    assert await asyncio.wait_for(asyncio.gather(*quick), 10) == list(range(20))
    assert not held.done()
    release.set()
    assert await held == "slow"
    runner.close()

    release.clear()
    runner = _runner()  # one thread: the quick stage's outcome comes back while the same thread runs the slow one
    first = asyncio.create_task(runner.run(PREPROCESS, lambda: "quick"))
    held = asyncio.create_task(runner.run(PREPROCESS, slow))
    assert await asyncio.wait_for(first, 10) == "quick"
    assert not held.done()
    release.set()
    assert await held == "slow"
    runner.close()


async def test_stages_handed_over_as_the_threads_run_out_of_work_are_taken():
    """The threads stop taking stages when they find the queue empty: stages that join it just then still wake one
    (whether a thread is taking from the queue is judged after they joined). Here the threads finish what they had
    while a hand-over is halfway through adding a stage."""
    release, last_ran = threading.Event(), threading.Event()

    class Halfway(deque):
        def extend(self, stages) -> None:
            if len(self) == 1:  # the hand-over of the fourth stage, while the third still waits for a thread
                release.set()
                last_ran.wait(30)
                time.sleep(0.2)  # the threads find the queue empty and wait for a wake-up
            super().extend(stages)

    def slow() -> str:
        release.wait(30)
        return "slow"

    def third() -> str:
        last_ran.set()
        return "third"

    runner = _runner(processing_threads=2, preprocess_timeout_seconds=30)
    runner._queued = Halfway()  # white-box: before the threads start and take the queue
    first = [asyncio.create_task(runner.run(PREPROCESS, slow)) for _ in range(2)]
    waiting = asyncio.create_task(runner.run(PREPROCESS, third))
    await asyncio.sleep(0.2)  # both threads busy, the third stage queued behind them
    fourth = asyncio.create_task(runner.run(PREPROCESS, lambda: "fourth"))
    assert await asyncio.wait_for(asyncio.gather(*first, waiting, fourth), 10) == ["slow", "slow", "third", "fourth"]
    runner.close()


async def test_closing_cancels_the_stages_no_thread_has_taken():
    release = threading.Event()
    runner = _runner()
    holder, _ = await _occupy(runner, release)
    queued = asyncio.create_task(runner.run(PREPROCESS, lambda: "queued"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # handed over, behind the held stage
    starting = asyncio.create_task(runner.run(PREPROCESS, lambda: "starting"))
    await asyncio.sleep(0)  # started in this turn, not yet handed over
    assert (len(runner._queued), len(runner._starting)) == (1, 1)  # white-box: where each of the two waits
    runner.close()
    assert await _outcome(queued) is asyncio.CancelledError
    assert await _outcome(starting) is asyncio.CancelledError
    with pytest.raises(Unavailable) as refused:  # the server is stopping
        await runner.run(PREPROCESS, lambda: "late")
    assert refused.value.reason is Rejection.DRAINING
    release.set()
    assert await holder == "held"  # the stage a thread had taken finishes


# -- stages awaited on the loop (a handler's async def), on real time --------------------------------------------------

TIMEOUT = 0.2
LATE = f"the preprocess stage took longer than preprocess_timeout_seconds ({TIMEOUT:g} s)"


async def test_an_async_stage_past_its_timeout_is_a_504_even_after_one_that_swallowed_its_cancel():
    runner = _runner(preprocess_timeout_seconds=TIMEOUT)

    async def swallows() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return "kept going"  # a stage that ignores its cancel is answered as it answers
        return "slept"

    async def sleeps() -> str:
        await asyncio.sleep(30)
        return "slept"

    async def requests_on_one_connection() -> list[object]:
        # One task answers a keep-alive connection's requests one after another: what one stage did with its cancel
        # must not change the next one's timeout.
        first = await runner.run_on_loop(PREPROCESS, swallows)
        try:
            await runner.run_on_loop(PREPROCESS, sleeps)
        except GatewayTimeout as late:
            return [first, str(late), asyncio.current_task().cancelling()]
        return [first, "no timeout"]

    assert await asyncio.wait_for(requests_on_one_connection(), 10) == ["kept going", LATE, 0]
    runner.close()


async def test_a_cancel_from_elsewhere_goes_through_even_with_the_timeouts():
    runner = _runner(preprocess_timeout_seconds=TIMEOUT)
    entered = asyncio.Event()

    async def waits() -> None:
        entered.set()
        await asyncio.sleep(30)

    task = asyncio.create_task(runner.run_on_loop(PREPROCESS, waits, deadline=0.0))  # overdue at the first sweep
    await entered.wait()
    task.cancel()  # the client left, in the same pass as the sweep or before it
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)  # a sweep or two: nothing left to cancel
    runner.close()


async def test_a_stage_in_two_parts_keeps_to_one_deadline():
    timeout = 1.0  # long enough for the (started, idle) thread to take the stage up before it passes, however busy
    runner = _runner(preprocess_timeout_seconds=timeout)
    seen, release = [], threading.Event()

    async def on_loop() -> str:
        return "first part"

    def in_thread() -> None:
        seen.append(STAGE_DEADLINE.get())  # what the stage thread runs under, which a handler's pool keeps to
        release.wait(30)

    await runner.run(POSTPROCESS, lambda: None)  # the thread started
    deadline = runner.deadline(PREPROCESS)
    assert await runner.run_on_loop(PREPROCESS, on_loop, deadline=deadline) == "first part"
    with pytest.raises(GatewayTimeout, match=re.escape("longer than preprocess_timeout_seconds (1 s)")):
        await runner.run(PREPROCESS, in_thread, deadline=deadline)
    release.set()
    # The thread part ran under the stage's deadline, not a timeout of its own from when it started.
    assert seen == [deadline]
    runner.close()


async def test_a_stage_still_in_its_thread_when_the_runner_closes_keeps_its_timeout():
    """Closing (the server stopping) lets a running stage finish in its thread; its request is still answered 504 at
    its timeout (within a sweep), not when the thread lets go, on real time."""
    runner = _runner(preprocess_timeout_seconds=TIMEOUT)
    started, release = threading.Event(), threading.Event()

    def holds() -> None:
        started.set()
        release.wait(30)

    task = asyncio.create_task(runner.run(PREPROCESS, holds))
    await asyncio.to_thread(started.wait, 30)
    runner.close()
    with pytest.raises(GatewayTimeout, match=re.escape(LATE)):
        await asyncio.wait_for(task, 10)  # the thread holds for 30 s
    release.set()
