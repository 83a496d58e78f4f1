"""Cluster state (the Deployments and their pods, the rollout's decision) into the InferenceService's status: pure
functions, the one author of every status field the operator writes (``OWNED_FIELDS``).

Three conditions, each with a reason a user can act on and the pods' own message:

- ``Ready``: the Service answers V2 requests (at least one pod is ready), whichever version it serves.
- ``ModelLoaded``: a pod of the wanted model version has loaded and warmed up the model.
- ``RolloutComplete``: every pod runs the wanted version and configuration. The rollout (``rollout.decide``) says
  where it is (``RolloutProgress``); the wanted revision's Deployment and pods say what holds them up.

And, when the spec gives the model's size (``memory_estimate``), ``MemoryLimitSufficient``: whether the pods'
memory limit covers the estimate. It only warns: the pods are created all the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from kubeserve.operator import naming
from kubeserve.operator.manifests.autoscaler import QUEUE_DELAY_METRIC, seconds_from_value
from kubeserve.operator.manifests.keda import QUEUE_DELAY_TRIGGER_METRIC
from kubeserve.operator.memory_estimate import MemoryCheck, as_quantity
from kubeserve.operator.merge_patch import merge_patch, patch_to
from kubeserve.operator.pod_diagnosis import PodProblem, is_ready, worst
from kubeserve.operator.timestamps import format_time

MEMORY_CONDITION = "MemoryLimitSufficient"
ROLLOUT_CONDITION = "RolloutComplete"

# Every status field the operator writes (``owned_status``); the InferenceService index keeps these to compare with.
OWNED_FIELDS = (
    "url",
    "grpcAddress",
    "replicas",
    "readyReplicas",
    "selector",
    "autoscaler",
    "rollout",
    "revisions",
    "servingVersion",
    "precision",
    "observedGeneration",
    "conditions",
    "lastFailure",
)


class Reason(StrEnum):
    """The operator's own condition reasons (a pod's problem brings its own: ``pod_diagnosis``)."""

    SERVING = "Serving"
    MODEL_LOADED = "ModelLoaded"
    ROLLOUT_COMPLETE = "RolloutComplete"
    PENDING = "Pending"
    MODEL_LOADING = "ModelLoading"
    ROLLOUT_PENDING = "RolloutPending"
    ROLLOUT_IN_PROGRESS = "RolloutInProgress"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    SCALED_TO_ZERO = "ScaledToZero"
    # A rollout's own (``rollout``).
    ROLLOUT_PAUSED = "RolloutPaused"
    ANALYSIS_INCONCLUSIVE = "AnalysisInconclusive"
    ANALYSIS_FAILED = "AnalysisFailed"
    INVALID_SPEC = "InvalidSpec"
    APPLY_FAILED = "ApplyFailed"
    # MemoryLimitSufficient's.
    MEMORY_LIMIT_SUFFICIENT = "MemoryLimitSufficient"
    NO_MEMORY_LIMIT = "NoMemoryLimit"
    MEMORY_LIMIT_TOO_LOW = "MemoryLimitTooLow"


@dataclass(frozen=True)
class ApplyFailure:
    """The last apply failed: the API server's answer, and how many tries in a row failed so far."""

    error: str
    attempt: int
    retry_in: float

    @property
    def message(self) -> str:
        return f"{self.error} (attempt {self.attempt} failed; retrying in {self.retry_in:g}s)"


@dataclass(frozen=True)
class RolloutProgress:
    """What the rollout says of itself (``rollout.decide``), for ``RolloutComplete``: complete (``status``) or not,
    why, and whether it failed (a failed rollout is the rollout's to report, whatever the pods say)."""

    status: bool
    reason: str
    message: str
    failed: bool = False


@dataclass(frozen=True)
class Desired:
    """What the spec asks for, as far as the pods show it."""

    revision: str  # the revision the spec asks for (its pods' serving.kubeserve.io/revision label)
    config_hash: str
    model_name: str
    url: str
    version: str = ""  # its model version, for messages (the revision when not given)
    grpc_address: str | None = None  # where gRPC clients connect; None: the pods serve no gRPC
    precision: str = "FP32"  # what its pods compute in (``runtime_config.served_precision``)
    memory: MemoryCheck | None = None  # its memory estimate and limit, when there is an estimate

    @property
    def shown_version(self) -> str:
        return self.version or self.revision


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str


@dataclass(frozen=True)
class Observation:
    conditions: tuple[Condition, ...]
    replicas: int
    ready_replicas: int
    failure: PodProblem | None
    precision: str | None = None  # the wanted revision's; None while the spec is invalid


def observe(
    *,
    desired: Desired | None,
    spec_problems: Sequence[str],
    deployment: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
    apply_failure: ApplyFailure | None = None,
    deployments: Sequence[Mapping[str, Any]] | None = None,
    rollout: RolloutProgress | None = None,
) -> Observation:
    """The conditions for the cluster as it is; ``desired`` is None when the spec is invalid.

    ``deployment``: the wanted revision's; ``deployments``: every revision's (the pods that exist and are ready are
    counted over all of them), just ``deployment`` when not given.
    ``apply_failure``: the last apply failed, refused (RBAC, an admission policy) or for now (a 500, a timeout).
    ``rollout``: what the rollout says of itself, when one was decided.
    """
    counted = deployments if deployments is not None else [deployment] if deployment else []
    statuses = [(d.get("status") or {}) for d in counted]
    replicas = sum(s.get("replicas") or 0 for s in statuses)
    ready = sum(s.get("readyReplicas") or 0 for s in statuses)
    live = [pod for pod in pods if not pod.get("metadata", {}).get("deletionTimestamp")]

    if desired is None:
        message = "; ".join(spec_problems)
        kept = "the runtime pods keep their last valid spec" if deployment else "nothing was created"
        conditions = (
            Condition("Ready", False, Reason.INVALID_SPEC, message),
            Condition("ModelLoaded", False, Reason.INVALID_SPEC, kept),
            Condition(ROLLOUT_CONDITION, False, Reason.INVALID_SPEC, kept),
        )
        return Observation(conditions, replicas, ready, None)

    current = [pod for pod in live if _runs(pod, desired)]
    problem = worst(current)
    ready_condition = _ready(desired, deployment, ready, problem or worst(live))
    rollout_condition = _rollout_complete(_deployment_rollout(desired, deployment, problem), rollout)
    if apply_failure is not None:
        rollout_condition = Condition(ROLLOUT_CONDITION, False, Reason.APPLY_FAILED, apply_failure.message)
        if not ready_condition.status:
            ready_condition = Condition("Ready", False, Reason.APPLY_FAILED, apply_failure.message)
    conditions = (ready_condition, _model_loaded(desired, deployment, current, problem), rollout_condition)
    if desired.memory is not None:
        conditions += (_memory(desired.memory),)
    return Observation(conditions, replicas, ready, problem or worst(live), desired.precision)


def owned_status(
    current: Mapping[str, Any],
    observation: Observation,
    *,
    generation: int | None,
    url: str,
    now: datetime,
    grpc_address: str | None = None,
    selector: str | None = None,
    autoscaler: Mapping[str, Any] | None = None,
    rollout_state: Mapping[str, Any] | None = None,
    revisions: list[dict[str, Any]] | None = None,
    serving_version: str | None = None,
    observed_generation: int | None = None,
) -> dict[str, Any]:
    """The status fields the operator owns (``OWNED_FIELDS``), keeping transition times and the last failure's first
    sighting. A field left out is left as it is; one that is None is removed (a merge patch's null).

    ``grpc_address``: the Service's gRPC address (None: no gRPC, the field removed); ``selector``: the scale
    subresource's; ``autoscaler``: the HPA's view (``autoscaler_view``, None without one);
    ``rollout_state``, ``revisions`` and ``serving_version``: the rollout's decision (left out without one: an invalid
    spec); ``observed_generation``: the generation last applied or judged invalid, once nothing of it failed.
    """
    stamp = format_time(now)
    previous = {c.get("type"): c for c in current.get("conditions") or []}
    conditions = []
    for condition in observation.conditions:
        status = "True" if condition.status else "False"
        before = previous.get(condition.type) or {}
        entry: dict[str, Any] = {
            "type": condition.type,
            "status": status,
            "reason": condition.reason,
            "message": condition.message,
            "lastTransitionTime": before.get("lastTransitionTime", stamp) if before.get("status") == status else stamp,
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        conditions.append(entry)
    result: dict[str, Any] = {
        "url": url,
        "grpcAddress": grpc_address,
        "replicas": observation.replicas,
        "readyReplicas": observation.ready_replicas,
        "conditions": conditions,
    }
    if observation.precision is not None:  # kept while the spec is invalid, as the pods keep serving it
        result["precision"] = observation.precision
    failure, last = observation.failure, current.get("lastFailure")
    if failure is not None:
        same = last and last.get("reason") == failure.reason and last.get("message") == failure.message
        result["lastFailure"] = {
            "reason": failure.reason,
            "message": failure.message,
            "time": last["time"] if same else stamp,
        }
    elif last:
        result["lastFailure"] = last
    if selector is not None:
        result["selector"] = selector
        result["autoscaler"] = autoscaler
    if rollout_state is not None:
        result["rollout"], result["revisions"], result["servingVersion"] = rollout_state, revisions, serving_version
    if observed_generation is not None:
        result["observedGeneration"] = observed_generation
    return result


def changes(current: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that turns ``current`` (the status as the API server holds it) into ``new``, field by field:
    empty when nothing changed. Compared as the API server will hold it (a merge patch's nulls remove keys), or a
    field with a null in it would differ for ever."""
    return {
        name: patch_to(current.get(name), value)
        for name, value in new.items()
        if current.get(name) != merge_patch(None, value)
    }


def news(current: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(reason, message) of each problem the new status shows and the current one does not: each is posted as a
    Warning Event, once. A failed apply is announced where it happens, once per distinct error, not once per retry.
    """
    found = []
    before, after = _condition_of(current, "Ready"), _condition_of(new, "Ready")
    seen = (before.get("reason"), before.get("message")) == (after.get("reason"), after.get("message"))
    if after.get("reason") == Reason.INVALID_SPEC and not seen:
        found.append((after["reason"], after["message"]))
    failure, previous = new.get("lastFailure"), current.get("lastFailure")
    if failure and failure != previous:
        found.append((failure["reason"], failure["message"]))
    # A memory limit below the estimate: announced once, when it appears (or its numbers change).
    memory, memory_before = _condition_of(new, MEMORY_CONDITION), _condition_of(current, MEMORY_CONDITION)
    if memory.get("reason") == Reason.MEMORY_LIMIT_TOO_LOW and memory.get("message") != memory_before.get("message"):
        found.append((memory["reason"], memory["message"]))
    return found


def _condition_of(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})


def autoscaler_view(hpa: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The HPA's view for ``status.autoscaler``: replicas counted and wanted, the queue delay it read, and why it
    cannot scale if it cannot (say, no metrics adapter serves the queue delay yet); None without an HPA, or before
    the HPA controller has reported."""
    status = (hpa or {}).get("status") or {}
    if "desiredReplicas" not in status and not status.get("conditions"):
        return None
    view: dict[str, Any] = {
        "currentReplicas": status.get("currentReplicas") or 0,
        "desiredReplicas": status.get("desiredReplicas") or 0,
    }
    for metric in status.get("currentMetrics") or []:
        # The adapter's Pods metric (engine hpa), or KEDA's External one, averaged per pod all the same.
        source = metric.get("pods") or metric.get("external") or {}
        if (source.get("metric") or {}).get("name") in (QUEUE_DELAY_METRIC, QUEUE_DELAY_TRIGGER_METRIC):
            value = (source.get("current") or {}).get("averageValue")
            if value is not None:
                # The HPA reads the metric in its served unit; users read seconds, as they wrote the target.
                view["currentQueueDelay"] = seconds_from_value(str(value))
    for condition in status.get("conditions") or []:
        if condition.get("type") in ("AbleToScale", "ScalingActive") and condition.get("status") == "False":
            said = f"{condition.get('reason')}: {condition.get('message')}"
            missing = _METRIC_NOT_AVAILABLE.get(condition.get("reason"))
            view["message"] = f"{missing} The HPA says: {said}" if missing else said
            break
    return view


# Why an HPA cannot read the queue delay, almost always: nothing serves it yet (a fresh cluster).
METRIC_NOT_AVAILABLE = (
    f"the queue-delay metric {QUEUE_DELAY_METRIC} is not available, so the HPA cannot scale and keeps the current "
    "replicas: have Prometheus scrape the runtime pods and install prometheus-adapter with kubeserve's rule (the "
    "chart renders both: --set monitoring.podMonitor.enabled=true,monitoring.adapterRule.enabled=true; see the "
    "documentation's autoscaling guide, docs/guide/autoscaling.md)."
)
# The same for engine keda: KEDA could not get the queue delay from Prometheus.
KEDA_METRIC_NOT_AVAILABLE = (
    "KEDA cannot read the queue delay from Prometheus, so its HPA cannot scale and keeps the current replicas: check "
    "spec.autoscaling.keda.serverAddress (or the chart's keda.prometheusServerAddress), and that "
    "Prometheus scrapes the runtime pods with their serving.kubeserve.io/inferenceservice label (the chart's "
    "PodMonitor does; see the documentation's autoscaling guide, docs/guide/autoscaling.md)."
)
_METRIC_NOT_AVAILABLE = {
    "FailedGetPodsMetric": METRIC_NOT_AVAILABLE,
    "FailedGetExternalMetric": KEDA_METRIC_NOT_AVAILABLE,
}


def _runs(pod: Mapping[str, Any], desired: Desired) -> bool:
    metadata = pod.get("metadata") or {}
    return (metadata.get("labels") or {}).get(naming.LABEL_REVISION) == desired.revision and (
        metadata.get("annotations") or {}
    ).get(naming.ANNOTATION_CONFIG_HASH) == desired.config_hash


def _template_matches(deployment: Mapping[str, Any], desired: Desired) -> bool:
    template = ((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}
    return (template.get("labels") or {}).get(naming.LABEL_REVISION) == desired.revision and (
        template.get("annotations") or {}
    ).get(naming.ANNOTATION_CONFIG_HASH) == desired.config_hash


def _wanted_replicas(deployment: Mapping[str, Any]) -> int:
    wanted = (deployment.get("spec") or {}).get("replicas")
    return 1 if wanted is None else wanted


def _ready(desired: Desired, deployment: Mapping[str, Any] | None, ready: int, problem: PodProblem | None) -> Condition:
    if ready > 0:  # of any revision: the Service spans them all
        endpoint = f"{desired.url}/v2/models/{desired.model_name}/infer"
        return Condition("Ready", True, Reason.SERVING, f"{ready} pods ready; V2 inference at {endpoint}")
    if deployment is None:
        return Condition("Ready", False, Reason.PENDING, "creating the runtime Deployment")
    wanted = _wanted_replicas(deployment)
    if wanted == 0:
        return Condition("Ready", False, Reason.SCALED_TO_ZERO, "replicas is 0: no pod serves the model")
    if problem is not None:
        return Condition("Ready", False, problem.reason, problem.message)
    return Condition(
        "Ready", False, Reason.MODEL_LOADING, "no pod is ready yet: pods are starting, fetching or loading"
    )


def _model_loaded(
    desired: Desired,
    deployment: Mapping[str, Any] | None,
    current: Sequence[Mapping[str, Any]],
    problem: PodProblem | None,
) -> Condition:
    loaded = sum(1 for pod in current if is_ready(pod))
    what = f"model {desired.model_name} version {desired.shown_version}"
    if loaded:
        return Condition("ModelLoaded", True, Reason.MODEL_LOADED, f"{what} is loaded in {loaded} pods")
    if problem is not None:
        return Condition("ModelLoaded", False, problem.reason, problem.message)
    if current:
        return Condition(
            "ModelLoaded", False, Reason.MODEL_LOADING, f"{len(current)} pods are fetching or loading {what}"
        )
    if deployment is not None and _wanted_replicas(deployment) == 0:
        return Condition("ModelLoaded", False, Reason.SCALED_TO_ZERO, f"replicas is 0: {what} is not loaded anywhere")
    return Condition("ModelLoaded", False, Reason.PENDING, f"no pod runs {what} yet")


def _memory(check: MemoryCheck) -> Condition:
    estimate = as_quantity(check.estimate)
    if check.limit is None:
        return Condition(
            MEMORY_CONDITION,
            True,
            Reason.NO_MEMORY_LIMIT,
            f"no memory limit; the pods are estimated to need {estimate}",
        )
    limit = as_quantity(check.limit)
    if check.too_low:
        return Condition(
            MEMORY_CONDITION,
            False,
            Reason.MEMORY_LIMIT_TOO_LOW,
            f"the memory limit {limit} is below the {estimate} estimated from spec.model.size, the optimization, "
            "maxBatchSize and instanceCount: the pods may be OOMKilled; raise spec.runtime.resources.limits.memory",
        )
    return Condition(
        MEMORY_CONDITION,
        True,
        Reason.MEMORY_LIMIT_SUFFICIENT,
        f"the memory limit {limit} covers the {estimate} estimated",
    )


# What the wanted revision's Deployment alone says of a rollout under way, when no pod has a problem to report.
_GENERIC_ROLLOUT_REASONS = frozenset({Reason.ROLLOUT_IN_PROGRESS, Reason.ROLLOUT_PENDING, Reason.PENDING})


def _rollout_complete(deployment_says: Condition, rollout: RolloutProgress | None) -> Condition:
    """``RolloutComplete``: the rollout's word while it is under way or failed (a step, its analysis, a rollback),
    unless the wanted revision's pods have a problem of their own to report (a failed fetch tells a user more);
    the Deployment's once the rollout is complete (whether every pod runs the wanted version)."""
    if rollout is None or rollout.status:
        return deployment_says
    if rollout.failed or deployment_says.status or deployment_says.reason in _GENERIC_ROLLOUT_REASONS:
        return Condition(ROLLOUT_CONDITION, False, rollout.reason, rollout.message)
    return deployment_says


def _deployment_rollout(
    desired: Desired, deployment: Mapping[str, Any] | None, problem: PodProblem | None
) -> Condition:
    if deployment is None:
        return Condition(ROLLOUT_CONDITION, False, Reason.PENDING, "creating the runtime Deployment")
    if not _template_matches(deployment, desired):
        return Condition(ROLLOUT_CONDITION, False, Reason.ROLLOUT_PENDING, f"applying version {desired.shown_version}")
    status = deployment.get("status") or {}
    generation = (deployment.get("metadata") or {}).get("generation")
    if generation is not None and (status.get("observedGeneration") or 0) < generation:
        return Condition(
            ROLLOUT_CONDITION, False, Reason.ROLLOUT_IN_PROGRESS, "the Deployment controller has yet to act"
        )
    if problem is not None:
        return Condition(ROLLOUT_CONDITION, False, problem.reason, problem.message)
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return Condition(
                ROLLOUT_CONDITION, False, Reason.PROGRESS_DEADLINE_EXCEEDED, condition.get("message") or ""
            )
    wanted = _wanted_replicas(deployment)
    updated, available = status.get("updatedReplicas") or 0, status.get("availableReplicas") or 0
    total = status.get("replicas") or 0
    if updated < wanted or total > updated or available < updated:
        return Condition(
            ROLLOUT_CONDITION,
            False,
            Reason.ROLLOUT_IN_PROGRESS,
            f"{min(updated, available)} of {wanted} pods run version {desired.shown_version} and are ready",
        )
    return Condition(
        ROLLOUT_CONDITION, True, Reason.ROLLOUT_COMPLETE, f"all {wanted} pods run version {desired.shown_version}"
    )
