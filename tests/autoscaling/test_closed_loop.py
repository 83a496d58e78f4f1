"""The autoscaling loop closed on this machine (``bench/autoscaling_loop.py``): real runtime processes whose batches
take a set time off the CPU, a step of load to 2.5 times one replica's capacity and back down, the adapter rule's
per-pod queue delay from each replica's ``/metrics``, the HPA's algorithm, SIGTERM drains. About 40 s;
``make demo-autoscale`` runs the long version, plots it and prints how many periods the recovery took on this machine.

The verdict never depends on how fast this machine starts processes or keeps the loop's periods: how long new
replicas take to get ready (seconds on a loaded 2-core machine) sets how large a backlog the first one builds, so
the recovery is judged from the loop's own record: once the replicas the HPA asked for are ready and the backlog
the client sees is gone, the metric must follow within the adapter rule's window and two periods as the loop timed
them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from autoscaling_loop import (  # bench/, put on sys.path above
    LoopConfig,
    LoopResult,
    Phase,
    ReplicaConfig,
    parse_queue_delay,
    per_pod_queue_delay,
    prometheus_rate,
    run_loop,
)
from kubeserve.runtime.samples import write_sample


def in_flight(result: LoopResult, t: float) -> int:
    """Requests the client had sent and not yet had answered at ``t`` (the loop's clock, from its start)."""
    return sum(o.sent <= t < o.sent + o.latency for o in result.outcomes)


def backlog_gone(result: LoopResult, start: float, end: float) -> float | None:
    """The first sync during the step at which the replicas in rotation serve more than the step offers and the
    client holds no more in flight than those replicas take in at once (a batch computing and one forming each):
    the backlog the first replica built is gone. ``None``: not before the step ended."""
    config = result.config
    step_rate = max(phase.rate for phase in config.profile)
    for row in result.rows:
        if not start <= row.t < end or row.ready_replicas * config.replica.capacity <= step_rate:
            continue
        if in_flight(result, row.t) <= 2 * row.ready_replicas * config.replica.max_batch_size:
            return row.t
    return None


def test_prometheus_rate_extrapolates_like_prometheus():
    samples = [(1.0, 10.0), (2.0, 20.0), (3.0, 30.0), (4.0, 40.0)]
    assert prometheus_rate(samples, 4.0, 4.0) == pytest.approx(10.0)  # 30 over 3 s, extrapolated to the window
    assert prometheus_rate(samples[:1], 4.0, 4.0) is None  # one scrape: no rate
    assert prometheus_rate([(1.0, 5.0), (2.0, 1.0)], 2.0, 2.0) is not None  # a reset counts from zero


def test_per_pod_value_is_the_ratio_of_rates_and_zero_when_idle():
    sums = [(1.0, 1.0), (2.0, 1.5), (3.0, 2.0)]
    counts = [(1.0, 10.0), (2.0, 20.0), (3.0, 30.0)]
    assert per_pod_queue_delay(sums, counts, 3.0, 3.0) == pytest.approx(0.05)
    idle = [(1.0, 7.0), (2.0, 7.0), (3.0, 7.0)]
    assert per_pod_queue_delay(idle, idle, 3.0, 3.0) == 0.0  # an idle pod pulls the average down
    assert per_pod_queue_delay(sums[:1], counts[:1], 3.0, 3.0) is None  # a new pod: missing, not zero


def test_parse_queue_delay_reads_sum_and_count():
    text = (
        "# TYPE kubeserve_queue_delay_seconds histogram\n"
        'kubeserve_queue_delay_seconds_bucket{model="tiny",le="0.001"} 3.0\n'
        'kubeserve_queue_delay_seconds_count{model="tiny"} 7.0\n'
        'kubeserve_queue_delay_seconds_sum{model="tiny"} 0.25\n'
    )
    assert parse_queue_delay(text) == (0.25, 7.0)


def test_the_loop_scales_up_under_a_step_recovers_and_scales_back_down_without_failing_a_request(tmp_path):
    replica = ReplicaConfig(
        write_sample("tiny", tmp_path / "tiny.onnx"), batch_seconds=0.02, row_seconds=0.0075, max_batch_size=4
    )
    config = LoopConfig(
        replica,
        # Idle; a step to 2.5 times one replica's capacity; half of one replica's capacity (replicas drain while
        # serving it); nothing.
        (Phase(2, 0.0), Phase(18, 2.5 * replica.capacity), Phase(14, 0.5 * replica.capacity), Phase(3, 0.0)),
        target_seconds=0.04,
        min_replicas=1,
        max_replicas=4,
        period=1.0,
        window=4.0,
        scale_down_stabilization=5,
    )
    result = run_loop(config, print)
    print(result.summary())
    start, end = result.step_bounds()
    before = [row for row in result.rows if row.t < start]
    during = [row for row in result.rows if start <= row.t < end]

    assert all(row.spec_replicas == 1 for row in before)
    # The HPA asks for enough replicas to serve the step: what it decides from the metric, whatever the machine.
    step_rate = max(phase.rate for phase in config.profile)
    assert max(row.spec_replicas for row in during) * replica.capacity > step_rate, "replicas rise under the step"
    above = [row.t for row in during if row.mean_queue_delay_ms is not None and row.mean_queue_delay_ms > row.target_ms]
    assert above, "the step pushes the metric above the target"
    gone = backlog_gone(result, start, end)
    # From the moment the loop's own record shows the backlog gone, the metric follows within the rate() window
    # (whose samples then hold only requests queued after it) and two periods as the loop timed them (the next
    # scrape, and the sync that reads it).
    periods = [later.t - earlier.t for earlier, later in zip(result.rows, result.rows[1:], strict=False)]
    deadline = None if gone is None else gone + config.window + 2 * max(periods)
    print(f"backlog gone at t={gone}, metric due under the target by t={deadline}")
    if deadline is not None and deadline < end:
        under = [row.t for row in during if above[0] < row.t <= deadline and row.mean_queue_delay_ms is not None
                 and row.mean_queue_delay_ms <= row.target_ms]  # fmt: skip
        assert under, (
            f"the backlog was gone at t={gone}: the mean queue delay should be back under the target by "
            f"t={deadline:.1f}: {[(row.t, row.mean_queue_delay_ms) for row in during]}"
        )
    assert result.rows[-1].spec_replicas == config.min_replicas, "replicas return to the minimum after the load"
    assert result.rows[-1].ready_replicas == config.min_replicas

    drained = [r for r in result.replicas if r.draining and r.name != result.replicas[0].name]
    assert drained, "replicas were drained"
    assert any(row.draining_replicas and row.offered_rps > 0 for row in result.rows), "drains under load"
    assert all(r.stopped_event.get("exit_code") == 0 and r.stopped_event.get("unanswered") == 0 for r in drained)
    assert len(result.outcomes) == round(2.5 * replica.capacity * 18 + 0.5 * replica.capacity * 14), (
        "every request sent was answered or counted"
    )
    assert result.failed == [], f"no request may fail, draining or not: {result.failed[:5]}"
