"""The revisions of one InferenceService as its Deployments show them: pure.

Each revision Deployment (``NAME-<revision>``) carries its revision and version on its pod template. A Deployment
named like the InferenceService is one an operator before revisions created: it is a revision too (named by the
version its pods carry), adopted as it is. When it already runs what the spec asks for (same version, same config
file), it *is* the wanted revision: nothing new is created and its pods are not restarted; the next change of the
spec rolls out from it like from any other revision, and it is deleted once pruned.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubeserve.operator import naming, rollout
from kubeserve.operator.manifests import Children
from kubeserve.operator.timestamps import parse_time

# An unknown creation time sorts as the oldest.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class LiveRevision:
    name: str
    version: str
    deployment: str  # the Deployment's name
    legacy: bool  # created before revisions: the Deployment is named like the InferenceService
    replicas: int  # the Deployment's spec.replicas
    ready: int
    created: datetime
    config_hash: str | None

    def as_rollout_revision(self) -> rollout.Revision:
        return rollout.Revision(self.name, self.version, self.replicas, self.ready, self.created)


def live_revisions(isvc_name: str, deployments: Iterable[Mapping[str, Any]]) -> list[LiveRevision]:
    """The revisions the Deployments (``summaries.deployment``) of one InferenceService run."""
    found = []
    for deployment in deployments:
        metadata = deployment.get("metadata") or {}
        template = ((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}
        labels, annotations = template.get("labels") or {}, template.get("annotations") or {}
        name = labels.get(naming.LABEL_REVISION)
        if not name:
            continue  # not a runtime Deployment of ours
        replicas = (deployment.get("spec") or {}).get("replicas")
        found.append(
            LiveRevision(
                name=name,
                version=labels.get(naming.LABEL_VERSION, name),  # before revisions the revision label was the version
                deployment=metadata.get("name") or "",
                legacy=metadata.get("name") == naming.legacy_deployment_name(isvc_name),
                replicas=1 if replicas is None else replicas,
                ready=((deployment.get("status") or {}).get("readyReplicas")) or 0,
                created=_created(metadata.get("creationTimestamp")),
                config_hash=annotations.get(naming.ANNOTATION_CONFIG_HASH),
            )
        )
    return found


def _created(text: str | None) -> datetime:
    try:
        return parse_time(text) if text else _EPOCH
    except ValueError:
        return _EPOCH


def wanted_revision(plan: Children, revisions: Iterable[LiveRevision]) -> tuple[str, LiveRevision | None]:
    """The name of the revision the spec asks for, and the earlier Deployment adopted as that revision (if any)."""
    revisions = list(revisions)
    if any(revision.name == plan.revision for revision in revisions):
        return plan.revision, None
    for revision in revisions:
        if revision.legacy and (revision.version, revision.config_hash) == (plan.version, plan.config_hash):
            return revision.name, revision
    return plan.revision, None


def serving_version(decision: rollout.Decision) -> str | None:
    """The version that serves the InferenceService's traffic, for ``kubectl get``: the canary's once its rollout
    succeeded, else the stable revision's (None before anything serves)."""
    state = decision.rollout
    if state.get("phase") == rollout.Phase.SUCCEEDED or not state.get("stableRevision"):
        return state.get("version")
    return next((r.get("version") for r in decision.revisions if r.get("name") == state["stableRevision"]), None)
