"""The Kubernetes HorizontalPodAutoscaler controller's algorithm as a model: pure, no I/O, the clock passed in.

Scope: one ``Pods`` metric with an ``AverageValue`` target (what kubeserve's HPA uses), ``autoscaling/v2`` behavior.
It is a transcription of kube-controller-manager's code, kept close enough to read side by side:

- ``pkg/controller/podautoscaler/replica_calculator.go``: ``GetMetricReplicas`` -> ``calcPlainMetricReplicas``,
  ``groupPods``, ``removeMetricsForPods``, ``Tolerances.isWithin``;
- ``pkg/controller/podautoscaler/metrics/utilization.go``: ``GetMetricUsageRatio`` (integer mean of milli-values);
- ``pkg/controller/podautoscaler/metrics/rest_metrics_client.go``: ``GetRawMetric`` reads each pod's value as
  ``Quantity.MilliValue()``, which rounds *up* to a whole milli-unit (the target too);
- ``pkg/controller/podautoscaler/horizontal.go``: ``reconcileAutoscaler`` (min/max/zero checks),
  ``recordInitialRecommendation``, ``normalizeDesiredReplicas`` + ``stabilizeRecommendation`` +
  ``convertDesiredReplicasWithRules`` (no ``behavior``), ``normalizeDesiredReplicasWithBehaviors`` +
  ``maybeInitScaleDownStabilizationWindow`` + ``stabilizeRecommendationWithBehaviors`` +
  ``convertDesiredReplicasWithBehaviorRate`` + ``calculateScaleUpLimitWithScalingRules`` +
  ``calculateScaleDownLimitWithBehaviors`` + ``getReplicasChangePerPeriod`` (with ``behavior``), ``storeScaleEvent``
  + ``markScaleEventsOutdated`` + ``getLongestPolicyPeriod``, ``tolerancesForHpa``;
- ``pkg/apis/autoscaling/v2/defaults.go``: ``SetDefaults_HorizontalPodAutoscalerBehavior``,
  ``GenerateHPAScaleUpRules`` / ``GenerateHPAScaleDownRules`` (the default behavior);
- the documentation, https://kubernetes.io/docs/concepts/workloads/autoscaling/horizontal-pod-autoscale/
  ("Algorithm details", "Configurable scaling behavior").

Simplifications (each one is a place where this model is narrower than the controller, never different inside it):

- One metric per HPA (the controller computes each metric and takes the largest proposal), Pods/AverageValue only.
- Readiness: for every metric other than CPU, ``groupPods`` sets aside only *Pending* pods ("unready"); a Running
  pod whose Ready condition is False still counts with its value. That is the default here. ``cpu_style_readiness``
  also sets aside pods with ``ready=False`` (what the documentation describes for CPU), but without CPU's start-up
  timing rules (``--horizontal-pod-autoscaler-cpu-initialization-period``, ``-initial-readiness-delay``, the metric
  timestamp against the Ready transition): a sample's ``ready`` flag is taken as the verdict of those rules.
- Metric samples belong to listed pods: the metrics API returning values for pods the selector does not list is not
  modelled. A pod's metric is either present or missing (``value=None``).
- Timestamps are float seconds from any epoch; the comparisons keep Go's strict ``Before``/``After``.
- int32 overflow caps are not modelled; the HPAScaleToZero feature (minReplicas 0) is not modelled.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Any, Literal

from kubernetes.utils import parse_quantity as parse_kubernetes_quantity

DEFAULT_TOLERANCE = 0.1  # --horizontal-pod-autoscaler-tolerance
DEFAULT_DOWNSCALE_STABILIZATION_SECONDS = 300  # --horizontal-pod-autoscaler-downscale-stabilization (5m)
DEFAULT_SYNC_PERIOD_SECONDS = 15  # --horizontal-pod-autoscaler-sync-period
# horizontal.go, used only without `behavior` (convertDesiredReplicasWithRules / calculateScaleUpLimit).
SCALE_UP_LIMIT_FACTOR = 2.0
SCALE_UP_LIMIT_MINIMUM = 4.0

Quantity = int | float | str | Decimal
PodPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"]
PolicyType = Literal["Pods", "Percent"]
SelectPolicy = Literal["Max", "Min", "Disabled"]

# --- Quantities ---------------------------------------------------------------------------------------------------


def parse_quantity(value: Quantity) -> Decimal:
    """A Kubernetes quantity ("200m", "1.5", "2Ki", 0.05) as an exact Decimal, read by the Kubernetes client.

    Floats go through ``repr`` so that 0.2 is 0.2, not 0.2000000000000000111 (which would round up to 201m)."""
    if isinstance(value, bool):
        raise TypeError(f"not a quantity: {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"not a finite quantity: {value!r}")
    try:
        return parse_kubernetes_quantity(repr(value) if isinstance(value, float) else value)
    except ValueError:
        raise ValueError(f"not a quantity: {value!r}") from None


def milli_value(value: Quantity) -> int:
    """``resource.Quantity.MilliValue()``: the value in milli-units, rounded up (towards +infinity).

    This is the resolution the HPA sees for a custom metric: a per-pod 1.3 ms queue delay served in seconds reads
    as 2m, the same as a 2 ms target."""
    return int((parse_quantity(value) * 1000).to_integral_value(rounding=ROUND_CEILING))


def _go_div(a: int, b: int) -> int:
    """Go's integer division (truncates towards zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


# --- Inputs -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodSample:
    """One pod the HPA's selector lists, and its value of the metric at this sync (``None``: missing)."""

    name: str
    value: Quantity | None
    ready: bool = True
    phase: PodPhase = "Running"
    deleting: bool = False  # metadata.deletionTimestamp is set


@dataclass(frozen=True)
class HPAScalingPolicy:
    """``autoscaling/v2`` HPAScalingPolicy: at most ``value`` pods (or percent) of change per ``period_seconds``."""

    type: PolicyType
    value: int
    period_seconds: int

    def __post_init__(self) -> None:
        if self.type not in ("Pods", "Percent"):
            raise ValueError(f"policy type must be Pods or Percent, not {self.type!r}")
        if self.value <= 0:
            raise ValueError("policy value must be greater than zero")
        if not 0 < self.period_seconds <= 1800:
            raise ValueError("policy periodSeconds must be in (0, 1800]")


@dataclass(frozen=True)
class HPAScalingRules:
    """``autoscaling/v2`` HPAScalingRules; ``None`` fields are filled in by :func:`default_behavior`."""

    stabilization_window_seconds: int | None = None
    select_policy: SelectPolicy | None = None
    policies: tuple[HPAScalingPolicy, ...] | None = None
    tolerance: float | None = None  # HPAConfigurableTolerance (alpha in v1.33, later beta and on by default)

    def __post_init__(self) -> None:
        if self.stabilization_window_seconds is not None and not 0 <= self.stabilization_window_seconds <= 3600:
            raise ValueError("stabilizationWindowSeconds must be in [0, 3600]")
        if self.select_policy not in (None, "Max", "Min", "Disabled"):
            raise ValueError(f"selectPolicy must be Max, Min or Disabled, not {self.select_policy!r}")
        if self.policies is not None and not self.policies:
            raise ValueError("at least one policy must be given when policies is set")
        if self.tolerance is not None and self.tolerance < 0:
            raise ValueError("tolerance must not be negative")


@dataclass(frozen=True)
class HPABehavior:
    scale_up: HPAScalingRules | None = None
    scale_down: HPAScalingRules | None = None


# pkg/apis/autoscaling/v2/defaults.go: defaultHPAScaleUpRules / defaultHPAScaleDownRules.
DEFAULT_SCALE_UP_RULES = HPAScalingRules(
    stabilization_window_seconds=0,
    select_policy="Max",
    policies=(HPAScalingPolicy("Pods", 4, 15), HPAScalingPolicy("Percent", 100, 15)),
)
DEFAULT_SCALE_DOWN_RULES = HPAScalingRules(
    stabilization_window_seconds=None,  # from --horizontal-pod-autoscaler-downscale-stabilization
    select_policy="Max",
    policies=(HPAScalingPolicy("Percent", 100, 15),),
)


def _merge_rules(given: HPAScalingRules | None, default: HPAScalingRules) -> HPAScalingRules:
    """``copyHPAScalingRules``: every non-nil field of ``given`` over the defaults."""
    if given is None:
        return default
    return HPAScalingRules(
        stabilization_window_seconds=(
            given.stabilization_window_seconds
            if given.stabilization_window_seconds is not None
            else default.stabilization_window_seconds
        ),
        select_policy=given.select_policy if given.select_policy is not None else default.select_policy,
        policies=given.policies if given.policies is not None else default.policies,
        tolerance=given.tolerance if given.tolerance is not None else default.tolerance,
    )


def default_behavior(
    behavior: HPABehavior | None, downscale_stabilization_seconds: int = DEFAULT_DOWNSCALE_STABILIZATION_SECONDS
) -> HPABehavior | None:
    """What the API server stores and the controller reads (``SetDefaults_HorizontalPodAutoscalerBehavior``, then
    ``maybeInitScaleDownStabilizationWindow``). A nil behavior stays nil: the controller then takes the older path
    (``normalizeDesiredReplicas``), which the documentation's "Default behavior" approximates."""
    if behavior is None:
        return None
    up = _merge_rules(behavior.scale_up, DEFAULT_SCALE_UP_RULES)
    down = _merge_rules(behavior.scale_down, DEFAULT_SCALE_DOWN_RULES)
    if down.stabilization_window_seconds is None:
        down = HPAScalingRules(downscale_stabilization_seconds, down.select_policy, down.policies, down.tolerance)
    return HPABehavior(scale_up=up, scale_down=down)


@dataclass(frozen=True)
class HPASpec:
    """The parts of an ``autoscaling/v2`` HorizontalPodAutoscaler spec this model reads."""

    max_replicas: int
    target_average_value: Quantity
    min_replicas: int = 1
    behavior: HPABehavior | None = None
    metric_name: str = ""

    def __post_init__(self) -> None:
        if self.min_replicas < 1:
            raise ValueError("minReplicas must be at least 1 (scale to zero is not modelled)")
        if self.max_replicas < self.min_replicas:
            raise ValueError("maxReplicas must not be less than minReplicas")
        if milli_value(self.target_average_value) <= 0:
            raise ValueError("the target averageValue must be positive")

    @property
    def target_milli(self) -> int:
        return milli_value(self.target_average_value)

    @classmethod
    def from_manifest(cls, hpa: Mapping[str, Any]) -> HPASpec:
        """Read a rendered ``autoscaling/v2`` HorizontalPodAutoscaler (as a dict) with one Pods/AverageValue metric."""
        spec = hpa["spec"]
        metrics = spec.get("metrics") or []
        if len(metrics) != 1 or metrics[0].get("type") != "Pods":
            raise ValueError("this model handles exactly one metric, of type Pods")
        pods = metrics[0]["pods"]
        target = pods["target"]
        if target.get("type") != "AverageValue":
            raise ValueError("this model handles AverageValue targets only")
        behavior = spec.get("behavior")
        return cls(
            max_replicas=int(spec["maxReplicas"]),
            min_replicas=int(spec.get("minReplicas", 1)),
            target_average_value=target["averageValue"],
            metric_name=pods["metric"]["name"],
            behavior=None
            if behavior is None
            else HPABehavior(
                scale_up=_rules_from_manifest(behavior.get("scaleUp")),
                scale_down=_rules_from_manifest(behavior.get("scaleDown")),
            ),
        )


def _rules_from_manifest(rules: Mapping[str, Any] | None) -> HPAScalingRules | None:
    if rules is None:
        return None
    policies = rules.get("policies")
    tolerance = rules.get("tolerance")
    return HPAScalingRules(
        stabilization_window_seconds=rules.get("stabilizationWindowSeconds"),
        select_policy=rules.get("selectPolicy"),
        policies=None
        if policies is None
        else tuple(HPAScalingPolicy(p["type"], int(p["value"]), int(p["periodSeconds"])) for p in policies),
        tolerance=None if tolerance is None else float(parse_quantity(tolerance)),
    )


# --- replica_calculator.go ------------------------------------------------------------------------------------------


class MetricsUnavailableError(Exception):
    """The errors ``calcPlainMetricReplicas`` returns; the controller then does not scale."""


@dataclass(frozen=True)
class Tolerances:
    """``Tolerances`` in replica_calculator.go: no scaling while ``1 - down <= ratio <= 1 + up``."""

    scale_down: float = DEFAULT_TOLERANCE
    scale_up: float = DEFAULT_TOLERANCE

    def is_within(self, usage_ratio: float) -> bool:
        return (1.0 - self.scale_down) <= usage_ratio <= (1.0 + self.scale_up)


@dataclass(frozen=True)
class PodGroups:
    ready_pod_count: int
    unready: frozenset[str]  # set aside; counted as 0 on a scale-up
    missing: frozenset[str]  # no metric; target on a scale-down, 0 on a scale-up
    ignored: frozenset[str]  # deleted or failed: dropped


def group_pods(pods: Sequence[PodSample], cpu_style_readiness: bool = False) -> PodGroups:
    """``groupPods``: deleted/failed pods are ignored, Pending pods are unready, pods without a value are missing,
    the rest are ready. With ``cpu_style_readiness`` a pod whose ``ready`` is False is unready too (the CPU rule,
    without its start-up timing: see the module docstring)."""
    ready, unready, missing, ignored = 0, set(), set(), set()
    for pod in pods:
        if pod.deleting or pod.phase == "Failed":
            ignored.add(pod.name)
        elif pod.phase == "Pending":
            unready.add(pod.name)
        elif pod.value is None:
            missing.add(pod.name)
        elif cpu_style_readiness and not pod.ready:
            unready.add(pod.name)
        else:
            ready += 1
    return PodGroups(ready, frozenset(unready), frozenset(missing), frozenset(ignored))


def metric_usage_ratio(metrics: Mapping[str, int], target_milli: int) -> tuple[float, int]:
    """``GetMetricUsageRatio``: the integer mean of the milli-values, and its ratio to the target."""
    usage = _go_div(sum(metrics.values()), len(metrics))
    return usage / target_milli, usage


def calc_plain_metric_replicas(
    current_replicas: int,
    pods: Sequence[PodSample],
    target_milli: int,
    tolerances: Tolerances | None = None,
    cpu_style_readiness: bool = False,
) -> tuple[int, int]:
    """``calcPlainMetricReplicas``: the proposed replica count, and the mean value (milli-units) for the status.

    Raises :class:`MetricsUnavailableError` where the controller returns an error."""
    tolerances = tolerances or Tolerances()
    if not pods:
        raise MetricsUnavailableError("no pods returned by selector while calculating replica count")
    groups = group_pods(pods, cpu_style_readiness)
    metrics = {
        pod.name: milli_value(pod.value)
        for pod in pods
        if pod.value is not None and pod.name not in groups.ignored and pod.name not in groups.unready
    }  # removeMetricsForPods(ignored), removeMetricsForPods(unready)
    if not metrics:
        raise MetricsUnavailableError("did not receive metrics for targeted pods (pods might be unready)")

    usage_ratio, usage = metric_usage_ratio(metrics, target_milli)
    scale_up_with_unready = bool(groups.unready) and usage_ratio > 1.0
    if not scale_up_with_unready and not groups.missing:
        if tolerances.is_within(usage_ratio):
            return current_replicas, usage
        return math.ceil(usage_ratio * groups.ready_pod_count), usage

    if groups.missing:
        if usage_ratio < 1.0:
            for name in groups.missing:  # on a scale-down, treat missing pods as using exactly the target
                metrics[name] = target_milli
        elif usage_ratio > 1.0:
            for name in groups.missing:  # on a scale-up, treat missing pods as using 0
                metrics[name] = 0
    if scale_up_with_unready:
        for name in groups.unready:  # on a scale-up, treat unready pods as using 0
            metrics[name] = 0

    new_usage_ratio, _ = metric_usage_ratio(metrics, target_milli)
    if (
        tolerances.is_within(new_usage_ratio)
        or (usage_ratio < 1.0 < new_usage_ratio)
        or (usage_ratio > 1.0 > new_usage_ratio)
    ):
        return current_replicas, usage  # too small a change, or the direction reversed
    new_replicas = math.ceil(new_usage_ratio * len(metrics))
    if (new_usage_ratio < 1.0 and new_replicas > current_replicas) or (
        new_usage_ratio > 1.0 and new_replicas < current_replicas
    ):
        return current_replicas, usage  # the number of pods counted would reverse the direction
    return new_replicas, usage


# --- horizontal.go ------------------------------------------------------------------------------------------------


@dataclass
class TimestampedRecommendation:
    recommendation: int
    timestamp: float


@dataclass
class TimestampedScaleEvent:
    replica_change: int  # always positive: scale-ups and scale-downs are kept apart
    timestamp: float
    outdated: bool = False


@dataclass(frozen=True)
class ReconcileResult:
    """One sync of one HPA: what it wrote (``desired_replicas``, if ``rescale``) and why."""

    current_replicas: int
    desired_replicas: int
    rescale: bool
    metric_desired_replicas: int | None = None  # the metric's proposal before stabilization and limits
    current_value_milli: int | None = None  # status.currentMetrics: the raw mean, before any adjustment
    reason: str = ""  # rescaleReason / ScalingActive=False reason
    stabilization: str | None = None  # AbleToScale reason: ScaleUpStabilized, ScaleDownStabilized, ReadyForNewScale
    limit: str | None = None  # ScalingLimited reason: DesiredWithinRange, ScaleUpLimit, TooManyReplicas, ...
    error: str | None = None


def get_replicas_change_per_period(period_seconds: int, events: Sequence[TimestampedScaleEvent], now: float) -> int:
    """``getReplicasChangePerPeriod``: the sum of changes strictly newer than ``now - period``."""
    cutoff = now - period_seconds
    return sum(event.replica_change for event in events if event.timestamp > cutoff)


def calculate_scale_up_limit_with_scaling_rules(
    current_replicas: int,
    scale_up_events: Sequence[TimestampedScaleEvent],
    scale_down_events: Sequence[TimestampedScaleEvent],
    rules: HPAScalingRules,
    now: float,
) -> int:
    """``calculateScaleUpLimitWithScalingRules``: the most replicas the policies allow now."""
    if rules.select_policy == "Disabled":
        return current_replicas
    select, result = (min, math.inf) if rules.select_policy == "Min" else (max, -math.inf)
    for policy in rules.policies or ():
        added = get_replicas_change_per_period(policy.period_seconds, scale_up_events, now)
        deleted = get_replicas_change_per_period(policy.period_seconds, scale_down_events, now)
        period_start = current_replicas - added + deleted
        if policy.type == "Pods":
            proposed = period_start + policy.value
        else:  # rounded up, or a small percentage of few pods would never add one
            proposed = math.ceil(period_start * (1 + policy.value / 100))
        result = select(result, proposed)
    return int(result)


def calculate_scale_down_limit_with_behaviors(
    current_replicas: int,
    scale_up_events: Sequence[TimestampedScaleEvent],
    scale_down_events: Sequence[TimestampedScaleEvent],
    rules: HPAScalingRules,
    now: float,
) -> int:
    """``calculateScaleDownLimitWithBehaviors``: the fewest replicas the policies allow now."""
    if rules.select_policy == "Disabled":
        return current_replicas
    select, result = (max, -math.inf) if rules.select_policy == "Min" else (min, math.inf)
    for policy in rules.policies or ():
        added = get_replicas_change_per_period(policy.period_seconds, scale_up_events, now)
        deleted = get_replicas_change_per_period(policy.period_seconds, scale_down_events, now)
        period_start = current_replicas - added + deleted
        if policy.type == "Pods":
            proposed = period_start - policy.value
        else:  # int32(float64(...)): truncated, so the pods kept round down and the pods removed round up
            proposed = int(period_start * (1 - policy.value / 100))
        result = select(result, proposed)
    return int(result)


def convert_desired_replicas_with_rules(
    current_replicas: int, desired_replicas: int, min_replicas: int, max_replicas: int
) -> tuple[int, str]:
    """``convertDesiredReplicasWithRules`` (no ``behavior``): [min, max], and at most max(2x, 4) on a scale-up."""
    scale_up_limit = int(max(SCALE_UP_LIMIT_FACTOR * current_replicas, SCALE_UP_LIMIT_MINIMUM))
    if max_replicas > scale_up_limit:
        maximum_allowed, limiting = scale_up_limit, "ScaleUpLimit"
    else:
        maximum_allowed, limiting = max_replicas, "TooManyReplicas"
    if desired_replicas < min_replicas:
        return min_replicas, "TooFewReplicas"
    if desired_replicas > maximum_allowed:
        return maximum_allowed, limiting
    return desired_replicas, "DesiredWithinRange"


class HorizontalController:
    """One HPA's share of the controller: its recommendation history and scale events (keyed per HPA upstream).

    Call :meth:`reconcile` once per sync period with the clock, the target's ``spec.replicas`` and the pods its
    selector lists; apply ``desired_replicas`` when ``rescale``."""

    def __init__(
        self,
        spec: HPASpec,
        *,
        tolerance: float = DEFAULT_TOLERANCE,
        downscale_stabilization_seconds: int = DEFAULT_DOWNSCALE_STABILIZATION_SECONDS,
        cpu_style_readiness: bool = False,
    ) -> None:
        self.spec = spec
        self.behavior = default_behavior(spec.behavior, downscale_stabilization_seconds)
        self.tolerance = tolerance
        self.downscale_stabilization_seconds = downscale_stabilization_seconds
        self.cpu_style_readiness = cpu_style_readiness
        self.recommendations: list[TimestampedRecommendation] = []
        self.scale_up_events: list[TimestampedScaleEvent] = []
        self.scale_down_events: list[TimestampedScaleEvent] = []

    def tolerances(self) -> Tolerances:
        """``tolerancesForHpa``: the controller's tolerance, overridden per direction by ``behavior``."""
        down = up = self.tolerance
        if self.behavior is not None:  # HPAConfigurableTolerance (alpha in v1.33, later beta and on by default)
            if self.behavior.scale_down is not None and self.behavior.scale_down.tolerance is not None:
                down = self.behavior.scale_down.tolerance
            if self.behavior.scale_up is not None and self.behavior.scale_up.tolerance is not None:
                up = self.behavior.scale_up.tolerance
        return Tolerances(scale_down=down, scale_up=up)

    def reconcile(self, now: float, current_replicas: int, pods: Sequence[PodSample]) -> ReconcileResult:
        """``reconcileAutoscaler`` from reading the scale subresource to writing it."""
        spec = self.spec
        if not self.recommendations:  # recordInitialRecommendation
            self.recommendations.append(TimestampedRecommendation(current_replicas, now))

        metric_desired: int | None = None
        usage: int | None = None
        stabilization: str | None = None
        limit: str | None = None
        if current_replicas == 0 and spec.min_replicas != 0:
            # "scaling is disabled since the replica count of the target is zero"
            return ReconcileResult(current_replicas, 0, False, reason="ScalingDisabled")
        if current_replicas > spec.max_replicas:
            reason, desired = "Current number of replicas above Spec.MaxReplicas", spec.max_replicas
        elif current_replicas < spec.min_replicas:
            reason, desired = "Current number of replicas below Spec.MinReplicas", spec.min_replicas
        else:
            try:
                metric_desired, usage = calc_plain_metric_replicas(
                    current_replicas, pods, spec.target_milli, self.tolerances(), self.cpu_style_readiness
                )
            except MetricsUnavailableError as error:
                return ReconcileResult(
                    current_replicas, current_replicas, False, reason="FailedGetPodsMetric", error=str(error)
                )
            desired = max(metric_desired, 0)
            reason = ""
            if desired > current_replicas:
                reason = f"{spec.metric_name or 'pods metric'} above target"
            if desired < current_replicas:
                reason = "All metrics below target"
            if self.behavior is None:
                desired, stabilization, limit = self._normalize(now, current_replicas, desired)
            else:
                desired, stabilization, limit = self._normalize_with_behaviors(now, current_replicas, desired)

        rescale = desired != current_replicas
        if rescale:
            self._store_scale_event(now, current_replicas, desired)
        else:
            desired = current_replicas
        return ReconcileResult(
            current_replicas, desired, rescale, metric_desired, usage, reason, stabilization, limit, None
        )

    # normalizeDesiredReplicas + stabilizeRecommendation (no behavior)
    def _normalize(self, now: float, current: int, prenormalized: int) -> tuple[int, str, str]:
        stabilized = prenormalized
        cutoff = now - self.downscale_stabilization_seconds
        old_index: int | None = None
        for i, rec in enumerate(self.recommendations):
            if rec.timestamp < cutoff:
                old_index = i
            elif rec.recommendation > stabilized:
                stabilized = rec.recommendation
        self._record(old_index, prenormalized, now)
        stabilization = "ScaleDownStabilized" if stabilized != prenormalized else "ReadyForNewScale"
        desired, limit = convert_desired_replicas_with_rules(
            current, stabilized, self.spec.min_replicas, self.spec.max_replicas
        )
        return desired, stabilization, limit

    def _record(self, old_index: int | None, recommendation: int, now: float) -> None:
        entry = TimestampedRecommendation(recommendation, now)
        if old_index is None:
            self.recommendations.append(entry)
        else:
            self.recommendations[old_index] = entry

    # normalizeDesiredReplicasWithBehaviors
    def _normalize_with_behaviors(self, now: float, current: int, prenormalized: int) -> tuple[int, str, str]:
        stabilized, reason = self._stabilize_with_behaviors(now, current, prenormalized)
        stabilization = reason if stabilized != prenormalized else "ReadyForNewScale"
        desired, limit = self._convert_with_behavior_rate(now, current, stabilized)
        return desired, stabilization, limit

    def _stabilize_with_behaviors(self, now: float, current: int, desired: int) -> tuple[int, str]:
        """``stabilizeRecommendationWithBehaviors``: keep ``current`` between the lowest recommendation of the
        scale-up window and the highest of the scale-down window (both include this one)."""
        assert self.behavior is not None and self.behavior.scale_up is not None
        assert self.behavior.scale_down is not None
        up_cutoff = now - (self.behavior.scale_up.stabilization_window_seconds or 0)
        down_cutoff = now - (self.behavior.scale_down.stabilization_window_seconds or 0)
        up_recommendation = down_recommendation = desired
        old_index: int | None = None
        for i, rec in enumerate(self.recommendations):
            if rec.timestamp > up_cutoff:
                up_recommendation = min(rec.recommendation, up_recommendation)
            if rec.timestamp > down_cutoff:
                down_recommendation = max(rec.recommendation, down_recommendation)
            if rec.timestamp < up_cutoff and rec.timestamp < down_cutoff:
                old_index = i
        recommendation = current
        recommendation = max(recommendation, up_recommendation)
        recommendation = min(recommendation, down_recommendation)
        self._record(old_index, desired, now)
        reason = "ScaleUpStabilized" if desired >= current else "ScaleDownStabilized"
        return recommendation, reason

    def _convert_with_behavior_rate(self, now: float, current: int, desired: int) -> tuple[int, str]:
        """``convertDesiredReplicasWithBehaviorRate``: the policies' rate limit, then [min, max]."""
        assert self.behavior is not None and self.behavior.scale_up is not None
        assert self.behavior.scale_down is not None
        if desired > current:
            scale_up_limit = calculate_scale_up_limit_with_scaling_rules(
                current, self.scale_up_events, self.scale_down_events, self.behavior.scale_up, now
            )
            scale_up_limit = max(scale_up_limit, current)  # no scale-up until old events leave the period
            if self.spec.max_replicas > scale_up_limit:
                maximum_allowed, limiting = scale_up_limit, "ScaleUpLimit"
            else:
                maximum_allowed, limiting = self.spec.max_replicas, "TooManyReplicas"
            if desired > maximum_allowed:
                return maximum_allowed, limiting
        elif desired < current:
            scale_down_limit = calculate_scale_down_limit_with_behaviors(
                current, self.scale_up_events, self.scale_down_events, self.behavior.scale_down, now
            )
            scale_down_limit = min(scale_down_limit, current)
            if self.spec.min_replicas < scale_down_limit:
                minimum_allowed, limiting = scale_down_limit, "ScaleDownLimit"
            else:
                minimum_allowed, limiting = self.spec.min_replicas, "TooFewReplicas"
            if desired < minimum_allowed:
                return minimum_allowed, limiting
        return desired, "DesiredWithinRange"

    def _store_scale_event(self, now: float, previous: int, new: int) -> None:
        """``storeScaleEvent``: only with a behavior; reuses a slot older than the direction's longest period."""
        if self.behavior is None:
            return
        if new > previous:
            rules, events, change = self.behavior.scale_up, self.scale_up_events, new - previous
        else:
            rules, events, change = self.behavior.scale_down, self.scale_down_events, previous - new
        assert rules is not None
        longest = max((policy.period_seconds for policy in rules.policies or ()), default=0)
        cutoff = now - longest
        old_index: int | None = None
        for i, event in enumerate(events):  # markScaleEventsOutdated
            if event.timestamp < cutoff:
                event.outdated = True
            if event.outdated:
                old_index = i
        entry = TimestampedScaleEvent(change, now)
        if old_index is None:
            events.append(entry)
        else:
            events[old_index] = entry


@dataclass
class Simulation:
    """A convenience loop: a controller, a clock and a replica count that follows the HPA's writes at once."""

    controller: HorizontalController
    replicas: int
    now: float = 0.0
    history: list[ReconcileResult] = field(default_factory=list)

    def step(
        self,
        pods: Sequence[PodSample] | Callable[[int], Sequence[PodSample]],
        seconds: float = DEFAULT_SYNC_PERIOD_SECONDS,
    ) -> ReconcileResult:
        """Reconcile at the current time, apply the result, then advance the clock by ``seconds``.

        ``pods`` may be a function of the current replica count (for example a load shared by the replicas)."""
        listed = pods(self.replicas) if callable(pods) else pods
        result = self.controller.reconcile(self.now, self.replicas, listed)
        self.replicas = result.desired_replicas
        self.history.append(result)
        self.now += seconds
        return result


def uniform_pods(count: int, value: Quantity | None, prefix: str = "pod") -> list[PodSample]:
    """``count`` ready, running pods that all report ``value``."""
    return [PodSample(f"{prefix}-{i}", value) for i in range(count)]
