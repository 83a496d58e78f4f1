"""The dynamic batcher's rules, on its own: batch forming, delays, deadlines, priorities, overload.

The model here doubles its input (so each caller's rows are checkable); the queue delay and deadlines
run on looptime's fake clock, so "waits 10 s" takes no real time and cannot flake.
"""

from __future__ import annotations

import asyncio
import gc
import random
import weakref
from types import SimpleNamespace

import numpy as np
import pytest
from kubeserve.runtime.admission import Rejected, Rejection
from kubeserve.runtime.batcher import BatchPolicy, ComputeCosts, DynamicBatcher
from kubeserve.runtime.metrics import ServerMetrics
from kubeserve.runtime.protocol.errors import BadRequest, InternalError


def double(feeds, names):
    return {"y": feeds["x"] * 2}


def batcher_for(gate, run=double, costs: ComputeCosts | None = None, **policy) -> DynamicBatcher:
    policy = {"max_batch_size": 8, **policy}
    return DynamicBatcher(gate.wrap(run), BatchPolicy(**policy), ServerMetrics("m", "1"), costs)


def measured_cheap() -> ComputeCosts:
    """Costs as measured for a model whose batches compute in less than a thread hand-off takes."""
    costs = ComputeCosts()
    for _ in range(ComputeCosts.SAMPLES):
        costs.computed(
            SimpleNamespace(started=10.0, finished=10.000005), handed=10.0 - 0.00003, back=10.000005 + 0.00003
        )
    assert costs.cheap
    return costs


def rows(count: int, value: float = 1.0, width: int = 2) -> dict[str, np.ndarray]:
    return {"x": np.full((count, width), value, np.float32)}


async def infer(batcher, feeds, **options):
    outputs, _job = await batcher.infer(feeds, **options)
    return outputs


@pytest.mark.looptime
async def test_a_full_batch_goes_at_once(gate):
    batcher = batcher_for(gate, max_batch_size=4, max_queue_delay_microseconds=10_000_000)
    loop = asyncio.get_running_loop()
    results = await asyncio.gather(infer(batcher, rows(2, 1.0)), infer(batcher, rows(2, 3.0)))
    assert loop.time() < 1
    assert gate.batch_rows == [4]
    np.testing.assert_array_equal(results[0]["y"], np.full((2, 2), 2.0))
    np.testing.assert_array_equal(results[1]["y"], np.full((2, 2), 6.0))
    batcher.close()


@pytest.mark.looptime
async def test_a_partial_batch_waits_for_the_delay_and_gathers_latecomers(gate):
    batcher = batcher_for(gate, max_batch_size=8, max_queue_delay_microseconds=10_000_000)
    loop = asyncio.get_running_loop()
    early = asyncio.create_task(infer(batcher, rows(1)))
    await asyncio.sleep(5)
    assert gate.batch_rows == []
    late = asyncio.create_task(infer(batcher, rows(2)))
    await asyncio.gather(early, late)
    assert 10 <= loop.time() < 11  # the oldest request's delay, not the latecomer's
    assert gate.batch_rows == [3]
    batcher.close()


@pytest.mark.looptime
async def test_a_preferred_size_goes_at_once(gate):
    batcher = batcher_for(gate, max_batch_size=16, preferred_batch_size=(4,), max_queue_delay_microseconds=10_000_000)
    loop = asyncio.get_running_loop()
    four = [asyncio.create_task(infer(batcher, rows(1, i))) for i in range(4)]
    fifth = asyncio.create_task(infer(batcher, rows(1, 9)))
    await asyncio.gather(*four)
    assert loop.time() < 1
    await fifth
    assert loop.time() >= 10
    assert gate.batch_rows == [4, 1]
    batcher.close()


async def test_batches_never_exceed_max_batch_size_and_split_back_exactly(gate):
    batcher = batcher_for(gate, max_batch_size=8)
    gate.close()
    first = asyncio.create_task(infer(batcher, rows(3, -1)))
    await gate.wait_entered()
    calls = [asyncio.create_task(infer(batcher, rows(3, value))) for value in range(10)]
    await asyncio.sleep(0)
    assert batcher.queued == 10
    gate.open()
    results = await asyncio.gather(first, *calls)
    assert gate.batch_rows == [3, 6, 6, 6, 6, 6]
    for value, result in zip(range(-1, 10), results, strict=True):
        np.testing.assert_array_equal(result["y"], np.full((3, 2), 2.0 * value))
    batcher.close()


async def test_requests_with_different_shapes_never_share_a_batch(gate):
    batcher = batcher_for(gate, max_batch_size=8)
    gate.close()
    first = asyncio.create_task(infer(batcher, rows(1, width=2)))
    await gate.wait_entered()
    widths = [3, 3, 5, 3]
    calls = [asyncio.create_task(infer(batcher, rows(1, i, width=w))) for i, w in enumerate(widths)]
    await asyncio.sleep(0)
    gate.open()
    results = await asyncio.gather(first, *calls)
    assert [feeds["x"].shape for feeds in gate.batches] == [(1, 2), (2, 3), (1, 5), (1, 3)]
    for i, (w, result) in enumerate(zip(widths, results[1:], strict=True)):
        np.testing.assert_array_equal(result["y"], np.full((1, w), 2.0 * i))
    batcher.close()


async def test_priority_one_is_served_first_and_unprioritised_last(gate):
    batcher = batcher_for(gate, max_batch_size=1)
    gate.close()
    first = asyncio.create_task(infer(batcher, rows(1, -1)))
    await gate.wait_entered()
    calls = [asyncio.create_task(infer(batcher, rows(1, p), priority=p)) for p in (0, 3, 1, 2, 1)]
    await asyncio.sleep(0)
    gate.open()
    await asyncio.gather(first, *calls)
    assert [float(feeds["x"][0, 0]) for feeds in gate.batches] == [-1, 1, 1, 2, 3, 0]
    batcher.close()


async def test_a_full_queue_refuses_at_once(gate):
    batcher = batcher_for(gate, max_batch_size=1, max_queue_size=2)
    gate.close()
    first = asyncio.create_task(infer(batcher, rows(1)))
    await gate.wait_entered()
    queued = [asyncio.create_task(infer(batcher, rows(1))) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(Rejected) as refused:
        await infer(batcher, rows(1))
    assert refused.value.reason is Rejection.QUEUE_FULL
    assert refused.value.detail == "2 requests waiting"
    gate.open()
    await asyncio.gather(first, *queued)
    batcher.close()


@pytest.mark.looptime
async def test_a_request_past_its_deadline_leaves_the_queue_uncomputed(gate):
    batcher = batcher_for(gate, max_batch_size=1, default_timeout_microseconds=1_000_000)
    gate.close()
    first = asyncio.create_task(infer(batcher, rows(1, 1)))
    await gate.wait_entered()
    late = asyncio.create_task(infer(batcher, rows(1, 2)))
    own_deadline = asyncio.create_task(infer(batcher, rows(1, 3), timeout_microseconds=200_000))
    with pytest.raises(Rejected) as expired:
        await own_deadline
    assert expired.value.reason is Rejection.TIMEOUT
    with pytest.raises(Rejected) as expired:
        await late
    assert expired.value.reason is Rejection.TIMEOUT
    assert batcher.queued == 0
    gate.open()
    await first
    assert [float(feeds["x"][0, 0]) for feeds in gate.batches] == [1]
    batcher.close()


def test_a_request_may_shorten_the_default_timeout_but_not_extend_it(gate):
    async def check():
        batcher = batcher_for(gate, default_timeout_microseconds=1_000_000)
        assert batcher.deadline(100.0, None) == pytest.approx(101.0)
        assert batcher.deadline(100.0, 0) == pytest.approx(101.0)
        assert batcher.deadline(100.0, 500_000) == pytest.approx(100.5)
        assert batcher.deadline(100.0, 5_000_000) == pytest.approx(101.0)
        unlimited = batcher_for(gate)
        assert unlimited.deadline(100.0, None) is None
        assert unlimited.deadline(100.0, 2_000_000) == pytest.approx(102.0)

    asyncio.run(check())


async def test_an_abandoned_request_leaves_the_queue(gate):
    batcher = batcher_for(gate, max_batch_size=1)
    gate.close()
    first = asyncio.create_task(infer(batcher, rows(1, 1)))
    await gate.wait_entered()
    abandoned = asyncio.create_task(infer(batcher, rows(1, 2)))
    await asyncio.sleep(0)
    assert batcher.queued == 1
    abandoned.cancel()
    await asyncio.sleep(0)
    assert batcher.queued == 0
    gate.open()
    await first
    assert len(gate.batches) == 1
    batcher.close()


@pytest.mark.looptime
async def test_a_flush_sends_partial_batches_without_waiting(gate):
    batcher = batcher_for(gate, max_queue_delay_microseconds=60_000_000)
    loop = asyncio.get_running_loop()
    call = asyncio.create_task(infer(batcher, rows(1)))
    await asyncio.sleep(0)
    batcher.flush()
    await call
    assert loop.time() < 1
    batcher.close()


async def test_close_rejects_whatever_is_queued_as_draining(gate):
    batcher = batcher_for(gate, max_batch_size=1)
    gate.close()
    first = asyncio.create_task(infer(batcher, rows(1)))
    await gate.wait_entered()
    queued = asyncio.create_task(infer(batcher, rows(1)))
    await asyncio.sleep(0)
    batcher.close()
    with pytest.raises(Rejected) as closed:
        await queued
    assert closed.value.reason is Rejection.DRAINING
    gate.open()
    first.cancel()


async def test_a_model_failure_fails_its_own_batch_only(gate):
    def fragile(feeds, names):
        if (feeds["x"] < 0).any():
            raise RuntimeError("negative input broke the kernel")
        return double(feeds, names)

    batcher = batcher_for(gate, run=fragile, max_batch_size=1)
    with pytest.raises(InternalError, match="inference failed: negative input broke the kernel"):
        await infer(batcher, rows(1, -1))
    result = await infer(batcher, rows(1, 2))
    np.testing.assert_array_equal(result["y"], np.full((1, 2), 4.0))
    batcher.close()


async def test_outputs_that_lose_the_batch_dimension_are_an_internal_error(gate):
    batcher = batcher_for(gate, run=lambda feeds, names: {"y": feeds["x"].sum(keepdims=True)[0]})
    gate.close()
    first = asyncio.create_task(infer(batcher, rows(1)))
    await gate.wait_entered()
    pair = [asyncio.create_task(infer(batcher, rows(1))) for _ in range(2)]
    await asyncio.sleep(0)
    gate.open()
    await first
    for call in pair:
        with pytest.raises(InternalError, match="not 2 rows"):
            await call
    batcher.close()


async def test_rows_are_checked_before_queueing(gate):
    batcher = batcher_for(gate, max_batch_size=4)
    with pytest.raises(BadRequest, match="exceed the model's max_batch_size of 4"):
        await infer(batcher, rows(5))
    with pytest.raises(BadRequest, match="at least 1"):
        await infer(batcher, rows(0))
    with pytest.raises(BadRequest, match="disagree"):
        await infer(batcher, {"x": np.ones((1, 2)), "z": np.ones((2, 2))})
    assert batcher.queued == 0
    batcher.close()


async def test_requests_that_leave_early_let_go_of_their_tensors(gate):
    batcher = batcher_for(gate, max_batch_size=1, default_timeout_microseconds=60_000_000)
    gate.close()
    first = asyncio.create_task(infer(batcher, rows(1)))
    await gate.wait_entered()
    abandoned_input, closed_input = rows(1, 1.0), rows(1, 2.0)
    abandoned_ref, closed_ref = weakref.ref(abandoned_input["x"]), weakref.ref(closed_input["x"])
    abandoned = asyncio.create_task(infer(batcher, abandoned_input))
    closed = asyncio.create_task(infer(batcher, closed_input))
    del abandoned_input, closed_input
    await asyncio.sleep(0)
    abandoned.cancel()
    await asyncio.wait([abandoned])
    del abandoned  # the task's traceback would keep the tensors alive, not the batcher
    gc.collect()
    assert abandoned_ref() is None
    batcher.close()
    await asyncio.wait([closed])
    assert isinstance(closed.exception(), Rejected)
    del closed
    gc.collect()
    assert closed_ref() is None
    with pytest.raises(Rejected, match="draining"):
        await infer(batcher, rows(1))
    gate.open()
    first.cancel()


# -- the window's wake-up: no request is forgotten ----------------------------------------------------------


@pytest.mark.looptime
async def test_a_lone_request_after_an_earlier_window_still_goes_after_its_own_window(gate):
    """The wake-up timer of a window that already fired must not stop the next window's from being armed."""
    batcher = batcher_for(gate, max_batch_size=8, max_queue_delay_microseconds=2_000)
    loop = asyncio.get_running_loop()
    for burst in range(3):
        started = loop.time()
        async with asyncio.timeout(60):  # fake time: a forgotten request fails the test instead of hanging it
            await infer(batcher, rows(1, burst))
        assert loop.time() - started == pytest.approx(0.002, abs=1e-4)
        await asyncio.sleep(1)  # idle between bursts
    assert gate.batch_rows == [1, 1, 1]
    batcher.close()


@pytest.mark.looptime
async def test_a_request_of_another_shape_does_not_wait_past_its_window_behind_a_newer_batch(gate):
    batcher = batcher_for(gate, max_batch_size=8, max_queue_delay_microseconds=10_000_000)
    loop = asyncio.get_running_loop()
    low = asyncio.create_task(infer(batcher, rows(1, 1.0, width=2), priority=2))
    await asyncio.sleep(5)
    high = asyncio.create_task(infer(batcher, rows(1, 2.0, width=3), priority=1))
    async with asyncio.timeout(60):
        await low
    assert loop.time() == pytest.approx(10, abs=1e-3)  # its own window, not the newcomer's (15 s)
    await high
    batcher.close()


def _random_policy(rng: random.Random) -> BatchPolicy:
    max_batch_size = rng.choice([1, 4, 8, 16])
    preferred = tuple(sorted(rng.sample(range(1, max_batch_size + 1), k=min(2, max_batch_size))))
    return BatchPolicy(
        max_batch_size=max_batch_size,
        max_queue_delay_microseconds=rng.choice([0, 500, 2_000, 10_000, 100_000]),
        preferred_batch_size=rng.choice([(), preferred]),
        default_timeout_microseconds=rng.choice([0, 0, 3_000, 50_000]),
        instance_count=rng.choice([1, 2, 3]),
        max_queue_size=rng.choice([8, 1024]),
    )


@pytest.mark.looptime
@pytest.mark.parametrize("seed", range(25))
async def test_no_request_waits_past_its_window_or_deadline_while_an_instance_is_free(seed):
    """Random arrivals, sizes, shapes, priorities, deadlines and windows. At the moment a request's window
    (or deadline) has passed, it has left the queue, unless every instance is computing (window only: a
    deadline passes regardless, and the request leaves rejected)."""
    rng = random.Random(seed)
    policy = _random_policy(rng)
    batcher = DynamicBatcher(double, policy, ServerMetrics("m", "1"))
    loop = asyncio.get_running_loop()
    window = policy.max_queue_delay_microseconds / 1e6
    late: list[str] = []
    calls: list[asyncio.Task] = []

    def probe(feeds: dict[str, np.ndarray], what: str, deadline: bool) -> None:
        # Whether it is still queued: nothing outside the batcher can tell at this instant (a dispatched request
        # may not have reached its worker thread yet), so this reads the queue itself.
        if any(job.feeds is feeds for job in batcher._in_order()) and (deadline or not batcher.saturated):
            late.append(f"a request still queued {loop.time():.6f} s after its {what}")

    def arrive() -> None:
        feeds = rows(rng.randint(1, policy.max_batch_size), width=rng.choice([2, 2, 3]))
        timeout = rng.choice([None, None, 1_000, 20_000])
        calls.append(
            asyncio.create_task(infer(batcher, feeds, priority=rng.choice([0, 1, 2]), timeout_microseconds=timeout))
        )
        now = loop.time()
        # Strictly after the bound: timers due at the same instant may run in either order.
        loop.call_at(now + window + 1e-5, probe, feeds, "window", False)
        deadline = batcher.deadline(now, timeout)
        if deadline is not None:
            loop.call_at(deadline + 1e-5, probe, feeds, "deadline", True)

    at = loop.time()
    for _ in range(rng.randint(20, 120)):
        # Bursts and gaps: most arrivals close together, some after an idle moment.
        at += rng.choice([0.0, 0.0, 0.0001, 0.001, rng.uniform(0.0, 0.3)])
        loop.call_at(at, arrive)
    await asyncio.sleep(at - loop.time() + 1e-3)
    async with asyncio.timeout(600):  # fake time
        results = await asyncio.gather(*calls, return_exceptions=True)
    assert late == []
    assert len(results) == len(calls)
    assert all(isinstance(r, dict) or (isinstance(r, Rejected) and r.reason is not Rejection.DRAINING) for r in results)
    batcher.close()


async def test_a_request_alone_on_a_cheap_model_is_computed_without_a_trip_through_the_loop(gate):
    """What the server knows (no other request read and waiting) lets the lone request skip the queue: it is
    answered within the caller's step of the loop, where it would otherwise wait for the loop's next turn."""
    batcher = batcher_for(gate, costs=measured_cheap())
    loop = asyncio.get_running_loop()
    turned: list[str] = []
    loop.call_soon(turned.append, "alone")
    outputs = await infer(batcher, rows(1, 2.0), alone=True)
    assert turned == []
    np.testing.assert_array_equal(outputs["y"], np.full((1, 2), 4.0))
    assert gate.batch_rows == [1]
    await asyncio.sleep(0)

    loop.call_soon(turned.append, "not alone")
    await infer(batcher, rows(1), alone=False)  # another request may be on its way: it goes through the queue
    assert turned == ["alone", "not alone"]
    batcher.close()


async def test_a_request_alone_still_joins_what_is_queued(gate):
    batcher = batcher_for(gate, costs=measured_cheap())
    queued = asyncio.create_task(infer(batcher, rows(1, 1.0)))
    await asyncio.sleep(0)  # queued, its batch not dispatched yet
    alone = await infer(batcher, rows(1, 3.0), alone=True)
    np.testing.assert_array_equal(alone["y"], np.full((1, 2), 6.0))
    np.testing.assert_array_equal((await queued)["y"], np.full((1, 2), 2.0))
    assert gate.batch_rows == [2]
    batcher.close()


async def test_a_request_alone_on_an_expensive_model_goes_through_the_queue(gate):
    batcher = batcher_for(gate)  # nothing measured yet: batches go to the worker threads
    turned: list[str] = []
    asyncio.get_running_loop().call_soon(turned.append, "loop turned")
    await infer(batcher, rows(1), alone=True)
    assert turned == ["loop turned"]
    batcher.close()
