"""One reconciliation: judge the spec, apply the children, work out the status. Handlers call into this."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kubeserve.operator import manifests, naming, status
from kubeserve.operator.memory_estimate import memory_check
from kubeserve.operator.object_ref import ObjectRef
from kubeserve.operator.revision_set import serving_version
from kubeserve.operator.rollout import Decision, Phase
from kubeserve.operator.runtime_config import served_precision
from kubeserve.operator.settings import OperatorSettings
from kubeserve.operator.spec import InferenceService, SpecError, parse
from kubeserve.operator.validation import spec_problems

if TYPE_CHECKING:  # the API client is heavy to import; `render` needs none
    from kubeserve.operator.cluster import Cluster


@dataclass(frozen=True)
class Assessment:
    """The spec as the operator judged it: usable (``isvc``) or not (``problems``)."""

    isvc: InferenceService | None
    problems: list[str]


def assess(body: Mapping[str, Any], settings: OperatorSettings | None = None) -> Assessment:
    """The spec judged against the operator's ``settings`` (its defaults when None: ``render`` and tests)."""
    try:
        isvc = parse(body)
    except SpecError as error:
        return Assessment(None, error.problems)
    problems = spec_problems(isvc, settings or OperatorSettings())
    return Assessment(None if problems else isvc, problems)


async def apply_children(
    cluster: Cluster,
    manifests: Iterable[Mapping[str, Any]],
    absent: Iterable[ObjectRef],
    *,
    present: Callable[[ObjectRef], bool] | None = None,
    applied: set[tuple[str, str]] | None = None,
) -> None:
    """Level-triggered: delete what must not exist, apply everything wanted; safe to repeat.

    ``present`` says whether an object not wanted may exist (as the watches show it): a delete is sent only then.
    ``applied``: (kind, name) of those already applied by an earlier try that failed part way: skipped, and each
    applied now is added, so that a retry resumes where the failure was.
    """
    # What must go goes first: an admission webhook may refuse the new (KEDA's refuses a ScaledObject for a target an
    # HPA still scales).
    for ref in absent:
        if present is None or present(ref):
            await cluster.delete(ref)
    for manifest in manifests:
        done = (manifest["kind"], manifest["metadata"]["name"])
        if applied is not None and done in applied:
            continue
        await cluster.apply(manifest)
        if applied is not None:
            applied.add(done)


def status_fields(
    body: Mapping[str, Any],
    assessment: Assessment,
    *,
    deployments: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    autoscalers: Iterable[Mapping[str, Any]] = (),
    apply_failure: status.ApplyFailure | None = None,
    now: datetime | None = None,
    spec_config_hash: str | None = None,
    url: str | None = None,
    revision: str | None = None,
    decision: Decision | None = None,
) -> dict[str, Any]:
    """The status the operator owns, for the cluster as the indexes show it.

    ``selector`` and ``replicas`` serve the scale subresource; ``autoscaler`` is the HPA's view (None, which a
    merge patch removes, without an HPA).

    ``spec_config_hash``: the config hash of the spec, when known already (rendering it costs a millisecond).
    ``url``: where callers reach the model (the rendered children's), when it is not the Service's.
    ``revision``: the wanted revision (the rendered children's, or the Deployment adopted as it); ``decision``: the
    rollout's, whose state, revisions and ``RolloutComplete`` (while it is not complete) go into the status.
    """
    metadata = body.get("metadata") or {}
    name, namespace = metadata.get("name", ""), metadata.get("namespace", "default")
    url = url or naming.service_url(name, namespace)
    deployments = list(deployments)
    desired = None
    wanted = next(iter(deployments), None)
    if assessment.isvc is not None:
        isvc = assessment.isvc
        if revision is None or spec_config_hash is None:  # render and tests: the operator's default settings
            plan = manifests.children(isvc, OperatorSettings())
            revision, spec_config_hash = revision or plan.revision, spec_config_hash or plan.config_hash
        desired = status.Desired(
            revision,
            spec_config_hash,
            isvc.model_name,
            url,
            isvc.spec.model.version,
            precision=served_precision(isvc),
            memory=memory_check(isvc),
        )
        wanted = next((d for d in deployments if _revision_of(d) == revision), None)
    observation = status.observe(
        desired=desired,
        spec_problems=assessment.problems,
        deployment=wanted,
        deployments=deployments,
        pods=list(pods),
        apply_failure=apply_failure,
    )
    if _rollout_speaks(decision, observation, apply_failure):
        assert decision is not None
        observation = replace(
            observation,
            conditions=tuple(
                decision.condition if condition.type == decision.condition.type else condition
                for condition in observation.conditions
            ),
        )
    fields = status.next_status(
        body.get("status") or {},
        observation,
        generation=metadata.get("generation"),
        url=url,
        now=now or datetime.now(UTC),
    )
    fields["selector"] = naming.runtime_selector(name)
    fields["autoscaler"] = status.autoscaler_view(next(iter(autoscalers), None))
    if decision is not None:
        fields["rollout"] = decision.rollout
        fields["revisions"] = decision.revisions
        fields["servingVersion"] = serving_version(decision)
    return fields


# What the Deployment alone says of a rollout that is under way, when no pod has a problem to report.
_GENERIC_ROLLOUT_REASONS = frozenset(
    {status.Reason.ROLLOUT_IN_PROGRESS, status.Reason.ROLLOUT_PENDING, status.Reason.PENDING}
)


def _rollout_speaks(
    decision: Decision | None, observation: status.Observation, apply_failure: status.ApplyFailure | None
) -> bool:
    """Whether ``RolloutComplete`` is the rollout's to say (a step, its analysis, a failure and rollback) rather
    than the wanted revision's Deployment's (whose pods' own problem, a failed fetch say, tells a user more)."""
    if decision is None or decision.condition.status or apply_failure is not None:
        return False
    if decision.rollout.get("phase") == Phase.FAILED:
        return True
    observed = next(c for c in observation.conditions if c.type == decision.condition.type)
    return observed.status or observed.reason in _GENERIC_ROLLOUT_REASONS


def _revision_of(deployment: Mapping[str, Any]) -> str | None:
    template = ((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}
    return (template.get("labels") or {}).get(naming.LABEL_REVISION)
