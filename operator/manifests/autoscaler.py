"""The HorizontalPodAutoscaler on the pods' mean queue delay.

The pods export the histogram ``kubeserve_queue_delay_seconds``; prometheus-adapter (with the chart's rule) serves
its per-pod mean over a recent window as the Pods metric :data:`QUEUE_DELAY_METRIC`, in microseconds. The HPA reads
a Pods metric as a whole number of milli-units, rounding up: in seconds that is 1 ms resolution (a pod at 1.3 ms
counts as 2 ms), in microseconds 1 ns, so every target the CRD accepts keeps its significant digits.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity
from kubeserve.operator import naming
from kubeserve.operator.manifests.common import child_metadata
from kubeserve.operator.spec import Autoscaling, InferenceService

# The Pods metric the HPA reads, as prometheus-adapter serves it (the chart's rule names it so; a test keeps the two
# equal): the per-pod mean queue delay over the rule's window, in microseconds.
QUEUE_DELAY_METRIC = "kubeserve_queue_delay_microseconds"
# Units of QUEUE_DELAY_METRIC per second: the spec's targetQueueDelaySeconds times this is the HPA's averageValue.
QUEUE_DELAY_UNITS_PER_SECOND = 1_000_000


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
                    "target": {
                        "type": "AverageValue",
                        "averageValue": target_value(autoscaling.target_queue_delay_seconds),
                    },
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


def target_value(seconds: float) -> str:
    """A target in seconds as the HPA's averageValue in the metric's unit: a Kubernetes quantity in plain decimal,
    as a user would write it (0.01 s is 10000, not 1e4)."""
    return _plain(Decimal(repr(seconds)) * QUEUE_DELAY_UNITS_PER_SECOND)


def seconds_from_value(quantity: str) -> str:
    """The HPA's reading of the metric (a quantity in its unit, e.g. ``1300500m``) in seconds, plain decimal
    (``0.0013005``)."""
    return _plain(parse_quantity(quantity) / QUEUE_DELAY_UNITS_PER_SECOND)


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f")
