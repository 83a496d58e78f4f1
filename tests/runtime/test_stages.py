"""The stage runner (``server/stages.py``): its bound on stages waiting for a thread, and what a stage answered
without running (504, or its client left) still holds."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref

import pytest
from kubeserve.runtime.admission import Rejection
from kubeserve.runtime.config import RuntimeSettings
from kubeserve.runtime.metrics import POSTPROCESS, PREPROCESS
from kubeserve.runtime.protocol.errors import GatewayTimeout, Unavailable
from kubeserve.runtime.server import stages
from kubeserve.runtime.server.stages import WAITING_PER_THREAD, StageRunner


class Body:
    """Stands for a request's arguments: weakly referenced, to see who still holds it."""


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setattr(stages, "available_cpus", lambda: 1)


def _runner(**settings) -> StageRunner:
    return StageRunner(RuntimeSettings(model_path="m.onnx", model_name="m", workers=1, **settings))


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


async def test_stages_past_the_bound_are_refused_with_the_overload_answer():
    runner = _runner()
    release = threading.Event()
    holder, _ = await _occupy(runner, release)
    waiting = [asyncio.create_task(runner.run(PREPROCESS, lambda n=n: n)) for n in range(WAITING_PER_THREAD)]
    await asyncio.sleep(0)
    with pytest.raises(Unavailable) as refused:
        await runner.run(PREPROCESS, lambda: "one too many")
    assert refused.value.status == 503
    assert refused.value.reason is Rejection.QUEUE_FULL
    assert refused.value.headers == {"Retry-After": "1"}
    assert f"{WAITING_PER_THREAD} stages waiting for 1 threads" in str(refused.value)
    release.set()
    assert await holder == "held"
    assert await asyncio.gather(*waiting) == list(range(WAITING_PER_THREAD))
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
