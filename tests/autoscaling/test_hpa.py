"""The HPA model (bench/hpa_model.py) against the worked examples of the Kubernetes documentation and of the
controller's own tests.

Sources: https://kubernetes.io/docs/concepts/workloads/autoscaling/horizontal-pod-autoscale/ ("Algorithm details",
"Scaling policies", "Stabilization window", "Default behavior", the "Example: ..." sections), and
kubernetes/kubernetes pkg/controller/podautoscaler/replica_calculator_test.go (the ``podMetric`` cases, whose values
are milli-units: 20000 there is "20" here). Every clock is explicit; nothing sleeps.
"""

from __future__ import annotations

import itertools
import random
import sys
from decimal import Decimal
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from hpa_model import (  # bench/, put on sys.path above
    DEFAULT_SCALE_DOWN_RULES,
    DEFAULT_SCALE_UP_RULES,
    HorizontalController,
    HPABehavior,
    HPAScalingPolicy,
    HPAScalingRules,
    HPASpec,
    MetricsUnavailableError,
    PodSample,
    Simulation,
    Tolerances,
    calc_plain_metric_replicas,
    default_behavior,
    milli_value,
    parse_quantity,
    uniform_pods,
)


def calc(current: int, values: list, target: str, **kwargs) -> tuple[int, int]:
    """calcPlainMetricReplicas over running, ready pods with these values (None: missing)."""
    pods = [PodSample(f"pod-{i}", value) for i, value in enumerate(values)]
    return calc_plain_metric_replicas(current, pods, milli_value(target), **kwargs)


def behavior(
    up: HPAScalingRules | None = None, down: HPAScalingRules | None = None, *, down_window: int | None = None
) -> HPABehavior:
    if down_window is not None:
        down = HPAScalingRules(
            stabilization_window_seconds=down_window,
            select_policy=down.select_policy if down else None,
            policies=down.policies if down else None,
        )
    return HPABehavior(scale_up=up, scale_down=down)


def policies(*items: tuple[str, int, int]) -> tuple[HPAScalingPolicy, ...]:
    return tuple(HPAScalingPolicy(kind, value, period) for kind, value, period in items)  # type: ignore[arg-type]


# --- Quantities: what the HPA reads -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "milli"),
    [("200m", 200), ("100m", 100), (0.2, 200), ("0.2", 200), (1, 1000), ("1.5k", 1_500_000), ("2Ki", 2_048_000)],
)
def test_quantities_in_milli_units(quantity, milli):
    assert milli_value(quantity) == milli


def test_milli_value_rounds_up_like_quantity_milli_value():
    """Quantity.MilliValue() rounds up: a 1.3 ms delay served in seconds reads as 2m, equal to a 2 ms target."""
    assert milli_value(0.0013) == 2
    assert milli_value("1300u") == 2
    assert milli_value("1001u") == 2
    assert milli_value("1000u") == 1
    assert milli_value(0) == 0
    assert parse_quantity("5e-3") == Decimal("0.005")


def test_quantity_rejects_garbage():
    with pytest.raises(ValueError, match="not a quantity"):
        parse_quantity("fast")


# --- Algorithm details: the ratio and the tolerance ---------------------------------------------------------------


def test_docs_200m_against_100m_doubles():
    """Docs: "if the current metric value is 200m, and the desired value is 100m, the number of replicas will be
    doubled, since 200.0 / 100.0 == 2.0"."""
    assert calc(1, ["200m"], "100m") == (2, 200)
    assert calc(3, ["200m"] * 3, "100m") == (6, 200)


def test_docs_50m_against_100m_halves():
    """Docs: "If the current value is instead 50m, you'll halve the number of replicas"."""
    assert calc(4, ["50m"] * 4, "100m") == (2, 50)


def test_docs_example_through_the_controller():
    """The same 1 -> 2 through a whole sync, with and without a behavior (both allow it at once)."""
    for spec_behavior in (None, HPABehavior()):
        controller = HorizontalController(HPASpec(max_replicas=10, target_average_value="100m", behavior=spec_behavior))
        result = controller.reconcile(0.0, 1, [PodSample("pod-0", "200m")])
        assert (result.desired_replicas, result.rescale, result.current_value_milli) == (2, True, 200)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("90m", 10),  # ratio 0.9: on the edge, inside (1 - 0.1 <= ratio)
        ("95m", 10),
        ("100m", 10),
        ("105m", 10),
        ("110m", 10),  # ratio 1.1: on the edge, inside (ratio <= 1 + 0.1)
        ("111m", 12),  # ceil(1.11 * 10)
        ("89m", 9),  # ceil(0.89 * 10)
    ],
)
def test_docs_tolerance_band(value, expected):
    """Docs: "The control plane skips any scaling action if the ratio is sufficiently close to 1.0 (within a
    configurable tolerance, 0.1 by default)" (Tolerances.isWithin: 1 - down <= ratio <= 1 + up)."""
    assert calc(10, [value] * 10, "100m")[0] == expected


def test_configurable_tolerance_per_direction():
    """Docs "Tolerance": with scaleUp.tolerance 0.05 and a 100 target, scale up only above 105."""
    assert calc(10, ["104"] * 10, "100", tolerances=Tolerances(scale_down=0.1, scale_up=0.05))[0] == 10
    assert calc(10, ["106"] * 10, "100", tolerances=Tolerances(scale_down=0.1, scale_up=0.05))[0] == 11
    spec = HPASpec(
        max_replicas=20,
        target_average_value="100",
        behavior=HPABehavior(scale_up=HPAScalingRules(tolerance=0.05)),
    )
    controller = HorizontalController(spec)
    assert controller.tolerances() == Tolerances(scale_down=0.1, scale_up=0.05)
    assert controller.reconcile(0.0, 10, uniform_pods(10, "106")).desired_replicas == 11


# --- replica_calculator_test.go, the podMetric cases --------------------------------------------------------------


def test_k8s_scale_up_cm():
    """TestReplicaCalcScaleUpCM: levels 20000, 10000, 30000 against 15000 -> 4, usage 20000."""
    assert calc(3, ["20", "10", "30"], "15") == (4, 20000)


def test_k8s_scale_down_cm():
    """TestReplicaCalcScaleDownCM: five pods at 12000 against 20000 -> 3."""
    assert calc(5, ["12"] * 5, "20") == (3, 12000)


def test_k8s_tolerance_cm():
    """TestReplicaCalcToleranceCM: 20000, 21000, 21000 against 20000: mean 20666 (integer), within 10%."""
    assert calc(3, ["20", "21", "21"], "20") == (3, 20666)


def test_k8s_configurable_tolerance_cm():
    """TestReplicaCalcConfigurableToleranceCM: the same with a 1% scale-up tolerance -> 4."""
    assert calc(3, ["20", "21", "21"], "20", tolerances=Tolerances(scale_down=0.1, scale_up=0.01)) == (4, 20666)


def test_k8s_missing_metrics_no_change_eq():
    """TestPlainMetricReplicaCalcMissingMetricsNoChangeEq: 5 replicas, metrics for 3 at exactly the target."""
    assert calc(5, ["20", "19", "21", None, None], "20") == (5, 20000)


def test_k8s_rolling_update_with_max_surge_cm():
    """TestReplicaCalcDuringRollingUpdateWithMaxSurgeCM: spec.replicas 2, 3 running pods (one surge pod without a
    metric), 10000 each against 17000. The missing pod at the target gives ratio 0.725 and ceil(0.725*3) = 3, more
    than the 2 replicas although below target: the last direction check keeps 2."""
    assert calc(2, ["10", "10", None], "17") == (2, 10000)


def test_k8s_unready_pods_count_for_custom_metrics():
    """TestReplicaCalcScaleUpCMUnreadyHotCpuNoLessScale: for a metric other than CPU, groupPods does not set aside
    a running pod that is not Ready: 50000, 10000, 30000 (the last unready) against 15000 -> 6, usage 30000."""
    pods = [PodSample("a", "50"), PodSample("b", "10"), PodSample("c", "30", ready=False)]
    assert calc_plain_metric_replicas(3, pods, milli_value("15")) == (6, 30000)


def test_k8s_unready_pods_scale_would_scale_down():
    """TestReplicaCalcScaleUpCMUnreadyHotCpuScaleWouldScaleDown: 50000 (unready), 15000, 30000 (unready) against
    15000 -> 7, usage 31666 (the integer mean)."""
    pods = [PodSample("a", "50", ready=False), PodSample("b", "15"), PodSample("c", "30", ready=False)]
    assert calc_plain_metric_replicas(3, pods, milli_value("15")) == (7, 31666)


# --- Missing metrics and not-yet-ready pods ----------------------------------------------------------------------


def test_docs_half_the_pods_missing_on_a_scale_up_count_as_zero():
    """Docs: missing pods are assumed to consume "0% in case of a scale up". Four pods, two report 300m against
    100m: the reporting pods alone say ratio 3; with the two missing at 0 the mean is 150m, ceil(1.5 * 4) = 6 (the
    naive ceil(3.0 * 4) would be 12)."""
    assert calc(4, ["300m", "300m", None, None], "100m") == (6, 300)


def test_docs_half_the_pods_missing_on_a_scale_down_count_as_the_target():
    """Docs: missing pods are assumed to consume "100% of the desired value in case of a scale down". Four pods,
    two report 20m against 100m: with the two missing at 100m the mean is 60m, ceil(0.6 * 4) = 3 (the naive
    ceil(0.2 * 4) would be 1)."""
    assert calc(4, ["20m", "20m", None, None], "100m") == (3, 20)


def test_docs_missing_metrics_that_reverse_the_direction_block_scaling():
    """Docs: "If the new ratio reverses the scale direction ... the controller doesn't take any scaling action".
    One of three pods reports 150m against 100m (ratio 1.5, up); with the missing two at 0 the mean is 50m (down)."""
    assert calc(3, ["150m", None, None], "100m") == (3, 150)


def test_docs_missing_metrics_that_bring_the_ratio_within_tolerance_block_scaling():
    """80m against 100m, three of four missing: at the target they give a mean of 95m, within the tolerance."""
    assert calc(4, ["80m", None, None, None], "100m") == (4, 80)


def test_docs_not_yet_ready_pods_dampen_a_scale_up():
    """Docs: "if any not-yet-ready pods were present, and the workload would have scaled up ... the controller
    conservatively assumes that the not-yet-ready pods are consuming 0%". A Pending pod (groupPods' "unready" for
    every metric) next to two at 200m against 100m: mean 400/3 = 133m, ceil(1.33 * 3) = 4, not 2 * 3 = 6."""
    pods = [PodSample("a", "200m"), PodSample("b", "200m"), PodSample("c", None, phase="Pending")]
    assert calc_plain_metric_replicas(3, pods, 100) == (4, 200)


def test_not_yet_ready_pods_are_left_out_of_a_scale_down():
    """On a scale-down, the not-yet-ready pods are only set aside: the ready pods' count decides, ceil(0.5*2) = 1."""
    pods = [PodSample("a", "50m"), PodSample("b", "50m"), PodSample("c", None, phase="Pending")]
    assert calc_plain_metric_replicas(3, pods, 100) == (1, 50)


def test_cpu_style_readiness_sets_unready_pods_aside():
    """With the CPU rule (documented for CPU: a pod that "has yet to become ready" is set aside) the unready pod
    of TestReplicaCalcScaleUpCMUnreadyHotCpuNoLessScale counts 0 on the scale-up: (50+10+0)/3 = 20 -> 4."""
    pods = [PodSample("a", "50"), PodSample("b", "10"), PodSample("c", "30", ready=False)]
    assert calc_plain_metric_replicas(3, pods, milli_value("15"), cpu_style_readiness=True) == (4, 30000)


def test_docs_deleted_and_failed_pods_are_ignored():
    """Docs: "all Pods with a deletion timestamp set ... are ignored, and all failed Pods are discarded"."""
    pods = [
        PodSample("a", "200m"),
        PodSample("b", "200m"),
        PodSample("c", "0", deleting=True),
        PodSample("d", None, phase="Failed"),
    ]
    assert calc_plain_metric_replicas(2, pods, 100) == (4, 200)


def test_no_metrics_is_an_error_and_the_controller_does_not_scale():
    with pytest.raises(MetricsUnavailableError, match="no pods"):
        calc(1, [], "100m")
    with pytest.raises(MetricsUnavailableError, match="did not receive metrics"):
        calc(2, [None, None], "100m")
    controller = HorizontalController(HPASpec(max_replicas=5, target_average_value="100m"))
    result = controller.reconcile(0.0, 2, [PodSample("a", None, phase="Pending"), PodSample("b", None)])
    assert (result.desired_replicas, result.rescale) == (2, False)
    assert result.error and "did not receive metrics" in result.error


# --- Bounds -------------------------------------------------------------------------------------------------------


def test_bounds_clamp_the_metric_proposal():
    spec = HPASpec(min_replicas=2, max_replicas=5, target_average_value="100m", behavior=HPABehavior())
    controller = HorizontalController(spec)
    up = controller.reconcile(0.0, 3, uniform_pods(3, "1"))  # proposes 30
    assert (up.metric_desired_replicas, up.desired_replicas, up.limit) == (30, 5, "TooManyReplicas")
    controller = HorizontalController(
        HPASpec(min_replicas=2, max_replicas=5, target_average_value="100m", behavior=behavior(down_window=0))
    )
    down = controller.reconcile(0.0, 4, uniform_pods(4, "0"))  # proposes 0
    assert (down.metric_desired_replicas, down.desired_replicas, down.limit) == (0, 2, "TooFewReplicas")


def test_replicas_outside_the_bounds_are_brought_back_at_once():
    """reconcileAutoscaler: above maxReplicas -> max, below minReplicas -> min, without the metric or policies."""
    spec = HPASpec(min_replicas=2, max_replicas=5, target_average_value="100m", behavior=HPABehavior())
    result = HorizontalController(spec).reconcile(0.0, 9, uniform_pods(9, "10"))
    assert (result.desired_replicas, result.reason) == (5, "Current number of replicas above Spec.MaxReplicas")
    result = HorizontalController(spec).reconcile(0.0, 1, uniform_pods(1, "0"))
    assert (result.desired_replicas, result.reason) == (2, "Current number of replicas below Spec.MinReplicas")


def test_docs_zero_replicas_deactivates_the_hpa():
    """Docs "Implicit maintenance-mode deactivation": target at 0 and minReplicas > 0 -> the HPA leaves it."""
    result = HorizontalController(HPASpec(max_replicas=5, target_average_value="100m")).reconcile(0.0, 0, [])
    assert (result.desired_replicas, result.rescale, result.reason) == (0, False, "ScalingDisabled")


# --- Behavior: defaults -------------------------------------------------------------------------------------------


def test_docs_default_behavior():
    """Docs "Default behavior": scale-down 300 s window, 100% per 15 s; scale-up no window, 100% or 4 pods per
    15 s, selectPolicy Max."""
    defaulted = default_behavior(HPABehavior())
    assert defaulted is not None
    assert defaulted.scale_up == DEFAULT_SCALE_UP_RULES
    assert defaulted.scale_up.stabilization_window_seconds == 0
    assert defaulted.scale_up.select_policy == "Max"
    assert set(defaulted.scale_up.policies or ()) == set(policies(("Percent", 100, 15), ("Pods", 4, 15)))
    assert defaulted.scale_down is not None
    assert defaulted.scale_down.stabilization_window_seconds == 300
    assert defaulted.scale_down.policies == policies(("Percent", 100, 15)) == DEFAULT_SCALE_DOWN_RULES.policies
    # Only the fields given replace the defaults (copyHPAScalingRules).
    partial = default_behavior(HPABehavior(scale_down=HPAScalingRules(stabilization_window_seconds=60)))
    assert partial is not None and partial.scale_down is not None
    assert partial.scale_down.stabilization_window_seconds == 60
    assert partial.scale_down.policies == DEFAULT_SCALE_DOWN_RULES.policies
    assert default_behavior(None) is None


def test_docs_default_scale_up_4_pods_or_100_percent_every_15s():
    """Docs: "4 pods or a 100% of the currently running replicas may at most be added every 15 seconds"; from 3
    toward 40: 3 -> max(3+4, 3*2) = 7 -> 14 -> 28 -> 40."""
    spec = HPASpec(max_replicas=40, target_average_value="100m", behavior=HPABehavior())
    sim = Simulation(HorizontalController(spec), replicas=3)
    seen = [sim.replicas]
    for _ in range(5):
        sim.step(lambda n: uniform_pods(n, "10"), seconds=15)
        seen.append(sim.replicas)
    assert seen == [3, 7, 14, 28, 40, 40]
    assert [r.limit for r in sim.history[:4]] == ["ScaleUpLimit", "ScaleUpLimit", "ScaleUpLimit", "TooManyReplicas"]


def test_scale_up_within_one_period_counts_the_pods_already_added():
    """getReplicasChangePerPeriod: a second sync 5 s after 3 -> 7 starts the period from 3 again: no more pods
    until the first event is older than 15 s (strictly: an event exactly 15 s old no longer counts)."""
    spec = HPASpec(max_replicas=40, target_average_value="100m", behavior=HPABehavior())
    controller = HorizontalController(spec)
    assert controller.reconcile(100.0, 3, uniform_pods(3, "10")).desired_replicas == 7
    held = controller.reconcile(105.0, 7, uniform_pods(7, "10"))
    assert (held.desired_replicas, held.rescale, held.limit) == (7, False, "ScaleUpLimit")
    assert controller.reconcile(114.9, 7, uniform_pods(7, "10")).desired_replicas == 7
    assert controller.reconcile(115.0, 7, uniform_pods(7, "10")).desired_replicas == 14


def test_without_behavior_the_older_rules_apply():
    """No `behavior`: normalizeDesiredReplicas. Scale-up at most max(2 * current, 4) per sync, no rate memory;
    scale-down after the --horizontal-pod-autoscaler-downscale-stabilization window (5 minutes)."""
    spec = HPASpec(max_replicas=40, target_average_value="100m")
    sim = Simulation(HorizontalController(spec), replicas=1)
    for _ in range(6):
        sim.step(lambda n: uniform_pods(n, "10"), seconds=15)
    assert [r.desired_replicas for r in sim.history] == [4, 8, 16, 32, 40, 40]

    sim = Simulation(HorizontalController(spec), replicas=10, now=1000.0)
    for _ in range(25):
        sim.step(lambda n: uniform_pods(n, "10m"), seconds=15)  # wants 1
    assert [r.desired_replicas for r in sim.history[:21]] == [10] * 21  # t = 1000 .. 1300
    assert sim.history[21].desired_replicas == 1  # t = 1315: the 10 recorded at t = 1000 has left the window


# --- Behavior: scaling policies (docs examples) ----------------------------------------------------------------


def test_docs_scaling_policies_4_pods_or_10_percent_per_minute():
    """Docs "Scaling policies": Pods 4 / 60 s and Percent 10 / 60 s, the larger change wins. From 80 to 10:
    "during the first step 8 replicas will be reduced. In the next iteration when the number of replicas is 72,
    10% of the pods is 7.2 but the number is rounded up to 8 ... When the number of replicas falls below 40 the
    first policy (Pods) is applied and 4 replicas will be reduced at a time." (The window is set to 0 here; the
    docs' narrative leaves the default 300 s window out. The metric is 0, so the floor of 10 is minReplicas.)"""
    spec = HPASpec(
        min_replicas=10,
        max_replicas=100,
        target_average_value="100m",
        behavior=behavior(down=HPAScalingRules(policies=policies(("Pods", 4, 60), ("Percent", 10, 60))), down_window=0),
    )
    sim = Simulation(HorizontalController(spec), replicas=80)
    seen = [sim.replicas]
    while sim.replicas > 10 and len(seen) < 30:
        sim.step(lambda n: uniform_pods(n, "0"), seconds=60)
        seen.append(sim.replicas)
    assert seen == [80, 72, 64, 57, 51, 45, 40, 36, 32, 28, 24, 20, 16, 12, 10]
    steps = [a - b for a, b in itertools.pairwise(seen)]
    assert steps[:2] == [8, 8]
    assert all(step == 4 for step in steps[8:-1])  # from 32 on (below 40): Pods wins


def test_docs_scaling_policies_only_once_per_period():
    """ "periodSeconds indicates the length of time in the past for which the policy must hold true": syncing every
    15 s, the 80 -> 72 step is not repeated until the minute has passed."""
    spec = HPASpec(
        min_replicas=10,
        max_replicas=100,
        target_average_value="100m",
        behavior=behavior(down=HPAScalingRules(policies=policies(("Pods", 4, 60), ("Percent", 10, 60))), down_window=0),
    )
    sim = Simulation(HorizontalController(spec), replicas=80)
    for _ in range(9):
        sim.step(lambda n: uniform_pods(n, "0"), seconds=15)
    assert [r.desired_replicas for r in sim.history] == [72, 72, 72, 72, 64, 64, 64, 64, 57]


def test_docs_limit_scale_down_to_10_percent_per_minute():
    """Docs "Example: limit scale down rate": Percent 10 / 60 s. The replicas kept are truncated, so at least one
    pod goes each minute: 10 -> 9 -> 8 -> ... -> 1."""
    spec = HPASpec(
        max_replicas=10,
        target_average_value="100m",
        behavior=behavior(down=HPAScalingRules(policies=policies(("Percent", 10, 60))), down_window=0),
    )
    sim = Simulation(HorizontalController(spec), replicas=10)
    for _ in range(12):
        sim.step(lambda n: uniform_pods(n, "0"), seconds=60)
    assert [r.desired_replicas for r in sim.history] == [9, 8, 7, 6, 5, 4, 3, 2, 1, 1, 1, 1]
    wide = HPASpec(max_replicas=100, target_average_value="100m", behavior=spec.behavior)
    sim = Simulation(HorizontalController(wide), replicas=100)
    sim.step(lambda n: uniform_pods(n, "0"), seconds=60)
    assert sim.replicas == 90


def test_docs_no_more_than_5_pods_per_minute_with_select_policy_min():
    """Docs: Percent 10 and Pods 5 per 60 s with selectPolicy Min "chooses the policy that affects the smallest
    number of Pods": from 100, 5 go (not 10); from 40, 4 go (10%)."""
    rules = HPAScalingRules(policies=policies(("Percent", 10, 60), ("Pods", 5, 60)), select_policy="Min")
    spec = HPASpec(max_replicas=100, target_average_value="100m", behavior=behavior(down=rules, down_window=0))
    sim = Simulation(HorizontalController(spec), replicas=100)
    sim.step(lambda n: uniform_pods(n, "0"), seconds=60)
    assert sim.replicas == 95
    sim = Simulation(HorizontalController(spec), replicas=40)
    sim.step(lambda n: uniform_pods(n, "0"), seconds=60)
    assert sim.replicas == 36
    sim = Simulation(HorizontalController(spec), replicas=100)
    for _ in range(20):
        sim.step(lambda n: uniform_pods(n, "0"), seconds=15)
    for result in sim.history:
        assert result.current_replicas - result.desired_replicas <= 5


def test_docs_disable_scale_down():
    """Docs "Example: disable scale down": selectPolicy Disabled; scale-up still works."""
    rules = HPAScalingRules(select_policy="Disabled")
    spec = HPASpec(max_replicas=20, target_average_value="100m", behavior=behavior(down=rules, down_window=0))
    sim = Simulation(HorizontalController(spec), replicas=8)
    for _ in range(10):
        sim.step(lambda n: uniform_pods(n, "0"), seconds=60)
    assert sim.replicas == 8
    assert sim.history[-1].limit == "ScaleDownLimit"
    sim.step(lambda n: uniform_pods(n, "200m"), seconds=60)
    assert sim.replicas == 16


def test_disable_scale_up():
    rules = HPAScalingRules(select_policy="Disabled")
    spec = HPASpec(max_replicas=20, target_average_value="100m", behavior=behavior(up=rules))
    result = HorizontalController(spec).reconcile(0.0, 4, uniform_pods(4, "1"))
    assert (result.metric_desired_replicas, result.desired_replicas, result.limit) == (40, 4, "ScaleUpLimit")


def test_scale_up_limit_below_current_holds_at_current():
    """convertDesiredReplicasWithBehaviorRate: "We shouldn't scale up further until the scaleUpEvents will be
    cleaned up". Coming up to minReplicas adds 5 pods at once (no policy applies there, but the event is stored);
    with Pods 1 / 60 s the limit is then 6 - 5 + 1 = 2 < 6, held at 6 until the event is a minute old."""
    spec = HPASpec(
        min_replicas=6,
        max_replicas=20,
        target_average_value="100m",
        behavior=behavior(up=HPAScalingRules(policies=policies(("Pods", 1, 60)))),
    )
    controller = HorizontalController(spec)
    assert controller.reconcile(0.0, 1, uniform_pods(1, "1")).desired_replicas == 6
    held = controller.reconcile(15.0, 6, uniform_pods(6, "1"))
    assert (held.desired_replicas, held.limit) == (6, "ScaleUpLimit")
    assert controller.reconcile(60.0, 6, uniform_pods(6, "1")).desired_replicas == 7
    assert controller.reconcile(75.0, 7, uniform_pods(7, "1")).desired_replicas == 7


# --- Behavior: stabilization ----------------------------------------------------------------------------------------


def test_docs_stabilization_window_uses_the_highest_recent_recommendation():
    """Docs "Stabilization window": on a scale-down "the algorithm looks into previously computed desired states,
    and uses the highest value from the specified interval". Proposals 8, 5, 3 within 300 s of a 10: stay at 10;
    then the highest of the last 300 s."""
    spec = HPASpec(max_replicas=20, target_average_value="100m", behavior=HPABehavior())
    controller = HorizontalController(spec)
    # t=0: 10 pods at 80m -> proposes 8, but the initial recommendation (10, at t=0) is in the window.
    first = controller.reconcile(0.0, 10, uniform_pods(10, "80m"))
    assert (first.metric_desired_replicas, first.desired_replicas) == (8, 10)
    assert first.stabilization == "ScaleDownStabilized"
    assert controller.reconcile(100.0, 10, uniform_pods(10, "50m")).desired_replicas == 10  # proposes 5
    assert controller.reconcile(200.0, 10, uniform_pods(10, "30m")).desired_replicas == 10  # proposes 3
    # t=300.5: the 10 and the 8 (t=0) are out; highest in (0.5, 300.5] is 5 (t=100).
    assert controller.reconcile(300.5, 10, uniform_pods(10, "30m")).desired_replicas == 5
    # t=400.5: the 5 (t=100) is out; highest is 3.
    assert controller.reconcile(400.5, 5, uniform_pods(5, "60m")).desired_replicas == 3


def test_docs_stabilization_window_prevents_flapping():
    """A metric that swings around the target every sync: without a window the replicas would follow it; with the
    default 300 s scale-down window they only go up, then hold."""
    spec = HPASpec(max_replicas=20, target_average_value="100m", behavior=HPABehavior())
    flapping = HPASpec(max_replicas=20, target_average_value="100m", behavior=behavior(down_window=0))
    load = [Decimal("1.0"), Decimal("0.5")] * 10  # total load, shared by the replicas

    def run(spec: HPASpec) -> list[int]:
        sim = Simulation(HorizontalController(spec), replicas=5)
        for total in load:
            sim.step(lambda n, total=total: uniform_pods(n, total / n), seconds=15)
        return [r.desired_replicas for r in sim.history]

    steady = run(spec)
    assert steady[0] == 10 and all(r == 10 for r in steady)
    changes = run(flapping)
    assert len({*changes}) > 1 and sum(a != b for a, b in itertools.pairwise(changes)) >= 10


def test_docs_change_downscale_stabilization_window_to_one_minute():
    """Docs "Example: change downscale stabilization window": 60 s."""
    spec = HPASpec(max_replicas=20, target_average_value="100m", behavior=behavior(down_window=60))
    sim = Simulation(HorizontalController(spec), replicas=10)
    for _ in range(6):
        sim.step(lambda n: uniform_pods(n, "10m"), seconds=15)
    # At t=60 the window is (0, 60] (Go's strict After): the 10 recorded at t=0 has left it.
    assert [r.desired_replicas for r in sim.history] == [10, 10, 10, 10, 1, 1]


def test_scale_up_stabilization_window_uses_the_lowest_recent_recommendation():
    """stabilizeRecommendationWithBehaviors: with a scale-up window, a scale-up goes only as far as the lowest
    recommendation of the window."""
    spec = HPASpec(
        max_replicas=50,
        target_average_value="100m",
        behavior=behavior(up=HPAScalingRules(stabilization_window_seconds=60)),
    )
    controller = HorizontalController(spec)
    assert controller.reconcile(0.0, 4, uniform_pods(4, "100m")).desired_replicas == 4
    first = controller.reconcile(15.0, 4, uniform_pods(4, "300m"))  # proposes 12; lowest in window is 4 (t=0)
    assert (first.desired_replicas, first.stabilization) == (4, "ScaleUpStabilized")
    assert controller.reconcile(30.0, 4, uniform_pods(4, "300m")).desired_replicas == 4
    assert controller.reconcile(60.5, 4, uniform_pods(4, "300m")).desired_replicas == 8  # 12 capped: 4 + 4 pods


# --- Reading a rendered HPA ---------------------------------------------------------------------------------------


def test_spec_from_an_autoscaling_v2_manifest():
    manifest = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "spec": {
            "scaleTargetRef": {"apiVersion": "serving.kubeserve.io/v1alpha1", "kind": "InferenceService", "name": "x"},
            "minReplicas": 1,
            "maxReplicas": 4,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": "kubeserve_queue_delay_seconds"},
                        "target": {"type": "AverageValue", "averageValue": "50m"},
                    },
                }
            ],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 0},
                "scaleDown": {
                    "stabilizationWindowSeconds": 300,
                    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
                    "tolerance": "0.05",
                },
            },
        },
    }
    spec = HPASpec.from_manifest(manifest)
    assert (spec.min_replicas, spec.max_replicas, spec.target_milli) == (1, 4, 50)
    assert spec.metric_name == "kubeserve_queue_delay_seconds"
    controller = HorizontalController(spec)
    assert controller.behavior is not None and controller.behavior.scale_up is not None
    assert controller.behavior.scale_up.policies == DEFAULT_SCALE_UP_RULES.policies
    assert controller.tolerances() == Tolerances(scale_down=0.05, scale_up=0.1)
    manifest["spec"]["metrics"][0]["pods"]["target"] = {"type": "Value", "value": "1"}
    with pytest.raises(ValueError, match="AverageValue"):
        HPASpec.from_manifest(manifest)


def test_spec_validation():
    with pytest.raises(ValueError, match="maxReplicas"):
        HPASpec(min_replicas=3, max_replicas=2, target_average_value="1")
    with pytest.raises(ValueError, match="positive"):
        HPASpec(max_replicas=2, target_average_value="0")
    with pytest.raises(ValueError, match="periodSeconds"):
        HPAScalingPolicy("Pods", 1, 1801)
    with pytest.raises(ValueError, match="selectPolicy"):
        HPAScalingRules(select_policy="Fastest")  # type: ignore[arg-type]


# --- Properties over seeded random runs ---------------------------------------------------------------------------


def _random_behavior(rng: random.Random) -> HPABehavior | None:
    if rng.random() < 0.25:
        return None

    def rules() -> HPAScalingRules | None:
        if rng.random() < 0.3:
            return None
        return HPAScalingRules(
            stabilization_window_seconds=rng.choice([None, 0, 30, 60, 300]),
            select_policy=rng.choice([None, "Max", "Min", "Disabled"]),
            policies=rng.choice(
                [
                    None,
                    policies(("Pods", rng.randint(1, 5), rng.choice([15, 60]))),
                    policies(("Percent", rng.randint(1, 200), 15), ("Pods", rng.randint(1, 5), 60)),
                ]
            ),
        )

    return HPABehavior(scale_up=rules(), scale_down=rules())


def _random_pods(rng: random.Random, replicas: int) -> list[PodSample]:
    level = rng.choice([0, 20, 60, 95, 100, 105, 150, 400, 2000])
    pods = []
    for i in range(replicas + rng.choice([0, 0, 0, 1])):  # sometimes a surge pod
        roll = rng.random()
        value = None if roll < 0.1 else f"{max(0, level + rng.randint(-20, 20))}m"
        phase = "Pending" if 0.1 <= roll < 0.15 else "Running"
        pods.append(PodSample(f"pod-{i}", value if phase == "Running" else None, phase=phase))
    return pods


@pytest.mark.parametrize("seed", range(40))
def test_property_replicas_stay_within_bounds(seed):
    """From any start inside [min, max], every write stays inside, whatever the metric, behavior and clock."""
    rng = random.Random(seed)
    lo = rng.randint(1, 4)
    spec = HPASpec(
        min_replicas=lo,
        max_replicas=lo + rng.randint(0, 12),
        target_average_value="100m",
        behavior=_random_behavior(rng),
    )
    sim = Simulation(HorizontalController(spec), replicas=rng.randint(spec.min_replicas, spec.max_replicas))
    for _ in range(60):
        result = sim.step(lambda n: _random_pods(rng, n), seconds=rng.choice([1, 5, 15, 15, 15, 60]))
        assert spec.min_replicas <= result.desired_replicas <= spec.max_replicas, result


@pytest.mark.parametrize("seed", range(40))
def test_property_no_change_inside_the_tolerance(seed):
    """All pods reporting, the mean within 10% of the target: no sync changes anything (whatever the history)."""
    rng = random.Random(1000 + seed)
    spec = HPASpec(min_replicas=1, max_replicas=30, target_average_value="100m", behavior=_random_behavior(rng))
    controller = HorizontalController(spec)
    replicas = rng.randint(1, 30)
    now = 0.0
    for _ in range(30):
        pods = [PodSample(f"pod-{i}", f"{rng.randint(90, 110)}m") for i in range(replicas)]
        result = controller.reconcile(now, replicas, pods)
        assert result.current_value_milli is not None and 90 <= result.current_value_milli <= 110
        assert (result.desired_replicas, result.rescale) == (replicas, False)
        now += rng.choice([1, 15, 60, 400])


@pytest.mark.parametrize("seed", range(40))
def test_property_with_behavior_never_scales_against_the_metric(seed):
    """With a behavior, stabilization and policies only slow a change down: the write lies between the current
    count and the metric's proposal clamped to [min, max]."""
    rng = random.Random(2000 + seed)
    spec = HPASpec(
        min_replicas=1,
        max_replicas=rng.randint(1, 25),
        target_average_value="100m",
        behavior=_random_behavior(rng) or HPABehavior(),
    )
    sim = Simulation(HorizontalController(spec), replicas=rng.randint(1, spec.max_replicas))
    for _ in range(60):
        result = sim.step(lambda n: _random_pods(rng, n), seconds=rng.choice([1, 15, 15, 60]))
        if result.metric_desired_replicas is None:
            continue
        proposal = min(max(result.metric_desired_replicas, spec.min_replicas), spec.max_replicas)
        low, high = sorted((result.current_replicas, proposal))
        assert low <= result.desired_replicas <= high, result


def test_property_calculator_direction_matches_the_ratio():
    """calcPlainMetricReplicas never proposes a change against the raw ratio's direction when the pods listed are
    the replicas (the reversal checks after counting missing and not-yet-ready pods)."""
    rng = random.Random(7)
    for _ in range(2000):
        current = rng.randint(1, 12)
        pods = _random_pods(rng, current)[:current]
        try:
            proposed, usage = calc_plain_metric_replicas(current, pods, 100)
        except MetricsUnavailableError:
            continue
        if usage > 100:
            assert proposed >= current, (current, pods)
        if usage < 100:
            assert proposed <= current, (current, pods)
