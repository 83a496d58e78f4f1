"""What the operator's indexes keep of each watched object: only the fields rendering and status read.

At a thousand InferenceServices, whole pods and Deployments (managed fields, full pod specs) would cost the
operator most of its memory; these summaries are a small fraction of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubeserve.operator import naming
from kubeserve.operator.status import OWNED_FIELDS

_POD_CONDITIONS = ("Ready", "PodScheduled")
_CONTAINER_FIELDS = ("name", "state", "lastState")
_HPA_CONDITIONS = ("AbleToScale", "ScalingActive")
_DEPLOYMENT_STATUS_FIELDS = ("observedGeneration", "replicas", "updatedReplicas", "readyReplicas", "availableReplicas")


def owner(body: Mapping[str, Any]) -> dict[str, Any]:
    """An InferenceService: enough to render its children, post Events about it and compare its status."""
    metadata = body.get("metadata") or {}
    status = body.get("status") or {}
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {key: metadata.get(key) for key in ("name", "namespace", "uid", "generation", "deletionTimestamp")},
        "spec": plain(body.get("spec") or {}),
        "status": {key: plain(status[key]) for key in OWNED_FIELDS if key in status},
    }


def pod(body: Mapping[str, Any]) -> dict[str, Any]:
    """A runtime pod: which version and configuration it runs, and what its containers say."""
    metadata = body.get("metadata") or {}
    status = body.get("status") or {}
    summary_status: dict[str, Any] = {
        "conditions": [plain(c) for c in status.get("conditions") or [] if c.get("type") in _POD_CONDITIONS]
    }
    for field in ("initContainerStatuses", "containerStatuses"):
        if field in status:
            summary_status[field] = [_pick(c, _CONTAINER_FIELDS) for c in status[field] or []]
    if status.get("podIP"):
        summary_status["podIP"] = status["podIP"]  # canary analysis scrapes the pod's /metrics
    return {
        "metadata": {
            "name": metadata.get("name"),
            "labels": _pick(metadata.get("labels") or {}, (naming.LABEL_REVISION,)),
            "annotations": _pick(metadata.get("annotations") or {}, (naming.ANNOTATION_CONFIG_HASH,)),
            "deletionTimestamp": metadata.get("deletionTimestamp"),
        },
        "status": summary_status,
    }


def deployment(body: Mapping[str, Any]) -> dict[str, Any]:
    """A runtime Deployment (one revision): its wanted replicas, the revision and version its template runs, when
    it was created (the oldest revisions are pruned first), and how far its own rollout is."""
    metadata = body.get("metadata") or {}
    spec = body.get("spec") or {}
    template = (spec.get("template") or {}).get("metadata") or {}
    status = body.get("status") or {}
    summary_status = _pick(status, _DEPLOYMENT_STATUS_FIELDS)
    conditions = status.get("conditions") or []
    progressing = [_pick(c, ("type", "reason", "message")) for c in conditions if c.get("type") == "Progressing"]
    summary_status["conditions"] = progressing
    return {
        "metadata": {
            "name": metadata.get("name"),
            "generation": metadata.get("generation"),
            "creationTimestamp": metadata.get("creationTimestamp"),
        },
        "spec": {
            "replicas": spec.get("replicas"),
            "template": {
                "metadata": {
                    "labels": _pick(template.get("labels") or {}, (naming.LABEL_REVISION, naming.LABEL_VERSION)),
                    "annotations": _pick(template.get("annotations") or {}, (naming.ANNOTATION_CONFIG_HASH,)),
                }
            },
        },
        "status": summary_status,
    }


def autoscaler(body: Mapping[str, Any]) -> dict[str, Any]:
    """A runtime HPA: its replica counts, the queue delay it read, and whether it can scale."""
    status = body.get("status") or {}
    summary_status = _pick(status, ("currentReplicas", "desiredReplicas"))
    summary_status["currentMetrics"] = [
        plain(metric) for metric in status.get("currentMetrics") or [] if metric.get("type") in ("Pods", "External")
    ]
    summary_status["conditions"] = [
        _pick(c, ("type", "status", "reason", "message"))
        for c in status.get("conditions") or []
        if c.get("type") in _HPA_CONDITIONS
    ]
    return {"metadata": {"name": (body.get("metadata") or {}).get("name")}, "status": summary_status}


def _pick(mapping: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: plain(mapping[key]) for key in keys if key in mapping}


def plain(value: Any) -> Any:
    """A deep copy in plain dicts and lists: an index must not hold on to (or share) kopf's event bodies."""
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value
