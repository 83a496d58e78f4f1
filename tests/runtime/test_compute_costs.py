"""Where a batch is computed: on the event loop while that costs less than a thread hand-off, as measured."""

from __future__ import annotations

from types import SimpleNamespace

from kubeserve.runtime.batcher import ComputeCosts


def batch(compute: float, *, at: float = 100.0) -> SimpleNamespace:
    """A batch's first job as the batcher times it: compute started at ``at`` and took ``compute`` seconds."""
    return SimpleNamespace(started=at, finished=at + compute)


def hand(costs: ComputeCosts, compute: float, handoff: float) -> None:
    """A batch computed by a worker thread: half the hand-off to get there, half to come back."""
    job = batch(compute)
    costs.computed(job, handed=job.started - handoff / 2, back=job.finished + handoff / 2)


def test_threads_until_both_costs_are_measured_then_the_loop_for_a_cheap_model():
    costs = ComputeCosts()
    for _ in range(ComputeCosts.SAMPLES - 1):
        assert not costs.inline()
        hand(costs, compute=0.00002, handoff=0.00008)  # 20 µs of compute, 80 µs of hand-off
    hand(costs, compute=0.00002, handoff=0.00008)
    decisions = [costs.inline() for _ in range(ComputeCosts.REFRESH)]
    # On the loop, but every REFRESH-th batch still goes to a thread, to keep the hand-off's cost current.
    assert decisions.count(False) == 1 and decisions[-1] is False


def test_an_expensive_model_never_runs_on_the_loop():
    costs = ComputeCosts()
    for _ in range(ComputeCosts.SAMPLES * 4):
        hand(costs, compute=0.005, handoff=0.00008)  # 5 ms of compute
    assert not any(costs.inline() for _ in range(ComputeCosts.REFRESH))


def test_compute_that_grows_past_the_hand_off_goes_back_to_threads():
    costs = ComputeCosts()
    for _ in range(ComputeCosts.SAMPLES):
        hand(costs, compute=0.00002, handoff=0.00008)
    assert costs.inline()
    # Bigger batches now: measured on the loop, their cost moves the average past the hand-off's.
    for _ in range(40):
        costs.computed(batch(0.001), inline=True)
    assert not any(costs.inline() for _ in range(ComputeCosts.REFRESH))
