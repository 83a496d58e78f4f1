"""Autoscaling engine keda: a KEDA ScaledObject on the same queue delay the HPA reads, and scale to zero.

KEDA queries Prometheus itself, so the adapter rule is not needed: the query sums the per-pod mean queue delay
(the adapter rule's per-pod value, the same metric and window) over the InferenceService's pods, and KEDA's HPA
averages that total over the replicas (a trigger's default metricType, AverageValue), which is the HPA's Pods
metric again.

Zero pods export no queue delay, so that signal alone can never wake an InferenceService scaled to zero, and a
request sent to a Service without endpoints fails (kserve#2882). With minReplicas 0 the operator therefore also
routes the InferenceService through the KEDA HTTP add-on: an InterceptorRoute tells the add-on's interceptor to
hold requests for it until a pod is ready, its external scaler is the ScaledObject's second trigger (active while
requests wait), and an ExternalName Service ``NAME-proxy`` gives callers a stable name for the interceptor.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from kubeserve.operator import naming
from kubeserve.operator.manifests.autoscaler import QUEUE_DELAY_UNITS_PER_SECOND, target_value
from kubeserve.operator.manifests.common import child_metadata
from kubeserve.operator.settings import OperatorSettings
from kubeserve.operator.spec import Autoscaling, InferenceService, Keda

SCALED_OBJECT_API = "keda.sh/v1alpha1"
INTERCEPTOR_ROUTE_API = "http.keda.sh/v1beta1"
# The runtime's histogram, whose _sum and _count the adapter rule and this query read.
QUEUE_DELAY_HISTOGRAM = "kubeserve_queue_delay_seconds"
# Prometheus turns a pod label into a series label by replacing what a label name cannot hold with "_" (the
# PodMonitor's podTargetLabels, and the labelmap of Prometheus's example kubernetes-pods job).
PROMETHEUS_ISVC_LABEL = re.sub(r"[^A-Za-z0-9_]", "_", naming.LABEL_ISVC)
# KEDA names a trigger's metric s<index>-<type>: the queue delay is the first trigger.
QUEUE_DELAY_TRIGGER_METRIC = "s0-prometheus"


def queue_delay_query(isvc: InferenceService, window: str) -> str:
    """The summed per-pod mean queue delay of the InferenceService's pods, in the HPA metric's unit: each pod's
    mean is the adapter rule's (0 when idle, never NaN, so an idle pod pulls the average down)."""
    matchers = f'namespace="{isvc.namespace}",{PROMETHEUS_ISVC_LABEL}="{isvc.name}"'

    def rate(series: str) -> str:
        return f"sum by (pod) (rate({QUEUE_DELAY_HISTOGRAM}_{series}{{{matchers}}}[{window}]))"

    return f"sum({QUEUE_DELAY_UNITS_PER_SECOND} * {rate('sum')} / clamp_min({rate('count')}, 1e-9))"


def scaled_object(isvc: InferenceService, autoscaling: Autoscaling, settings: OperatorSettings) -> dict[str, Any]:
    keda = autoscaling.keda or Keda()  # the CRD's defaults, for a spec that sets none of KEDA's fields
    server = keda.server_address or settings.prometheus_server_address
    activation = Decimal(repr(keda.activation_queue_delay_seconds))
    triggers: list[dict[str, Any]] = [
        {
            "type": "prometheus",
            "name": "queue-delay",
            "metadata": {
                "serverAddress": server,
                "query": queue_delay_query(isvc, settings.queue_delay_window),
                "threshold": target_value(autoscaling.target_queue_delay_seconds),
                "activationThreshold": format((activation * QUEUE_DELAY_UNITS_PER_SECOND).normalize(), "f"),
            },
        }
    ]
    if autoscaling.scales_to_zero:
        triggers.append(
            {
                "type": "external-push",
                "name": "cold-start",
                "metadata": {"scalerAddress": settings.keda_http_scaler, "interceptorRoute": isvc.name},
            }
        )
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": naming.API_VERSION, "kind": naming.KIND, "name": isvc.name},
        "minReplicaCount": autoscaling.min_replicas,
        "maxReplicaCount": autoscaling.max_replicas,
        "pollingInterval": keda.polling_interval_seconds,
        "cooldownPeriod": keda.cooldown_period_seconds,
        "triggers": triggers,
    }
    if autoscaling.behavior is not None:
        behavior = autoscaling.behavior.model_dump(by_alias=True, exclude_none=True)
        spec["advanced"] = {"horizontalPodAutoscalerConfig": {"behavior": behavior}}
    return {
        "apiVersion": SCALED_OBJECT_API,
        "kind": "ScaledObject",
        "metadata": child_metadata(isvc, naming.scaled_object_name(isvc.name)),
        "spec": spec,
    }


def interceptor_route(isvc: InferenceService) -> dict[str, Any]:
    """The HTTP add-on's route to the InferenceService's Service, for the names callers use for ``NAME-proxy``."""
    return {
        "apiVersion": INTERCEPTOR_ROUTE_API,
        "kind": "InterceptorRoute",
        "metadata": child_metadata(isvc, naming.interceptor_route_name(isvc.name)),
        "spec": {
            "target": {"service": naming.service_name(isvc.name), "port": naming.SERVICE_PORT},
            "rules": [{"hosts": naming.cold_start_hosts(isvc.name, isvc.namespace)}],
            # The add-on also scales on requests in flight per pod; at a pod's queue capacity the queue delay has
            # long since asked for more pods, so in practice this trigger only wakes the InferenceService.
            "scalingMetric": {"concurrency": {"targetValue": isvc.spec.batching.max_queue_size}},
        },
    }


def cold_start_service(isvc: InferenceService, settings: OperatorSettings) -> dict[str, Any]:
    """``NAME-proxy``: a DNS name for the interceptor (ExternalName), which callers use with its port."""
    host, _, _ = settings.keda_http_interceptor.rpartition(":")
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(isvc, naming.cold_start_service_name(isvc.name)),
        "spec": {"type": "ExternalName", "externalName": host},
    }


def cold_start_url(isvc: InferenceService, settings: OperatorSettings) -> str:
    _, _, port = settings.keda_http_interceptor.rpartition(":")
    return f"http://{naming.cold_start_hosts(isvc.name, isvc.namespace)[0]}:{port}"
