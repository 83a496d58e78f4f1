"""The HorizontalPodAutoscaler on the pods' mean queue delay."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from kubeserve.operator import naming
from kubeserve.operator.manifests.common import child_metadata
from kubeserve.operator.spec import Autoscaling, InferenceService

# Exported by every runtime pod; prometheus-adapter serves it as the per-pod mean over a recent window.
QUEUE_DELAY_METRIC = "kubeserve_queue_delay_seconds"


def autoscaler(isvc: InferenceService, autoscaling: Autoscaling) -> dict[str, Any]:
    spec: dict[str, Any] = {
        # The InferenceService itself, through its scale subresource: the HPA writes spec.replicas, the operator
        # hands it down to the Deployment.
        "scaleTargetRef": {"apiVersion": naming.API_VERSION, "kind": naming.KIND, "name": isvc.name},
        "minReplicas": autoscaling.min_replicas,
        "maxReplicas": autoscaling.max_replicas,
        "metrics": [
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": QUEUE_DELAY_METRIC},
                    "target": {"type": "AverageValue", "averageValue": seconds(autoscaling.target_queue_delay_seconds)},
                },
            }
        ],
    }
    if autoscaling.behavior is not None:
        spec["behavior"] = autoscaling.behavior.model_dump(by_alias=True, exclude_none=True)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": child_metadata(isvc, naming.hpa_name(isvc.name)),
        "spec": spec,
    }


def seconds(value: float) -> str:
    """A Kubernetes quantity in plain decimal, as a user would write it (0.05, not 5e-02)."""
    return format(Decimal(repr(value)).normalize(), "f")
