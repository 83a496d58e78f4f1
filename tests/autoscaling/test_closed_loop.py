"""The autoscaling loop closed on this machine (``bench/autoscaling_loop.py``): real runtime processes whose batches
take a set time off the CPU, a step of load to 2.5 times one replica's capacity and back down, the adapter rule's
per-pod queue delay from each replica's ``/metrics``, the HPA's algorithm, SIGTERM drains. About 40 s;
``make demo-autoscale`` runs the long version and plots it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from autoscaling_loop import (  # bench/, put on sys.path above
    LoopConfig,
    Phase,
    ReplicaConfig,
    parse_queue_delay,
    per_pod_queue_delay,
    prometheus_rate,
    run_loop,
)
from kubeserve.runtime.samples import write_sample

# With 1 s periods: the step is seen at the first sync, new replicas are ready a few seconds later, and the backlog
# the first replica built meanwhile drains at its capacity: 10 to 15 periods on a 2-core machine, more the longer
# the new processes take to start.
RECOVERY_PERIODS = 16


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
    assert max(row.spec_replicas for row in during) > 1, "replicas rise under the step"
    recovered = result.periods_to_recover()
    assert recovered is not None and recovered <= RECOVERY_PERIODS, (
        f"the mean queue delay should be back under the target within {RECOVERY_PERIODS} periods of the step: "
        f"{[(row.t, row.mean_queue_delay_ms) for row in during]}"
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
