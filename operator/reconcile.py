"""One reconciliation: judge the spec, apply the children, work out the status. Handlers call into this."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kubeserve.operator import manifests, naming, status
from kubeserve.operator.object_ref import ObjectRef
from kubeserve.operator.runtime_config import config_file, config_hash, runtime_settings
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
    cluster: Cluster, plan: manifests.Children, *, present: Callable[[ObjectRef], bool] | None = None
) -> None:
    """Level-triggered: apply everything wanted, delete what must not exist; safe to repeat.

    ``present`` says whether an object not wanted may exist (as the watches show it): a delete is sent only then.
    """
    for manifest in plan.manifests:
        await cluster.apply(manifest)
    for ref in plan.absent:
        if present is None or present(ref):
            await cluster.delete(ref)


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
) -> dict[str, Any]:
    """The status the operator owns, for the cluster as the indexes show it.

    ``selector`` and ``replicas`` serve the scale subresource; ``autoscaler`` is the HPA's view (None, which a
    merge patch removes, without an HPA).

    ``spec_config_hash``: the config hash of the spec, when known already (rendering it costs a millisecond).
    ``url``: where callers reach the model (the rendered children's), when it is not the Service's.
    """
    metadata = body.get("metadata") or {}
    name, namespace = metadata.get("name", ""), metadata.get("namespace", "default")
    url = url or naming.service_url(name, namespace)
    desired = None
    if assessment.isvc is not None:
        isvc = assessment.isvc
        digest = spec_config_hash or config_hash(config_file(runtime_settings(isvc)))
        desired = status.Desired(isvc.spec.model.version, digest, isvc.model_name, url)
    observation = status.observe(
        desired=desired,
        spec_problems=assessment.problems,
        deployment=next(iter(deployments), None),
        pods=list(pods),
        apply_failure=apply_failure,
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
    return fields
