"""Pure builders: an InferenceService (and the operator's settings) in, the child manifests out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubeserve.operator import naming
from kubeserve.operator.manifests.autoscaler import autoscaler
from kubeserve.operator.manifests.config_map import config_map
from kubeserve.operator.manifests.deployment import deployment
from kubeserve.operator.manifests.keda import (
    INTERCEPTOR_ROUTE_API,
    SCALED_OBJECT_API,
    cold_start_service,
    cold_start_url,
    interceptor_route,
    scaled_object,
)
from kubeserve.operator.manifests.service import service
from kubeserve.operator.object_ref import ObjectRef
from kubeserve.operator.runtime_config import config_file, config_hash, runtime_settings
from kubeserve.operator.settings import OperatorSettings
from kubeserve.operator.spec import InferenceService


@dataclass(frozen=True)
class Children:
    """What to apply, in order (config before the pods that mount it), and what must not exist; ``config_hash`` is
    the runtime config file's, which the pods of this spec carry; ``url`` is where callers reach the model."""

    manifests: list[dict[str, Any]]
    absent: list[ObjectRef] = field(default_factory=list)
    config_hash: str = ""
    url: str = ""


def children(isvc: InferenceService, settings: OperatorSettings) -> Children:
    config_text = config_file(runtime_settings(isvc))
    digest = config_hash(config_text)
    manifests = [
        config_map(isvc, config_text),
        service(isvc),
        deployment(isvc, settings, digest),
    ]
    autoscaling = isvc.spec.autoscaling
    engine = autoscaling.engine if autoscaling is not None else None
    url = naming.service_url(isvc.name, isvc.namespace)
    if autoscaling is not None and engine == "hpa":
        manifests.append(autoscaler(isvc, autoscaling))
    if autoscaling is not None and engine == "keda":
        manifests.append(scaled_object(isvc, autoscaling, settings))
        if autoscaling.scales_to_zero:
            manifests += [interceptor_route(isvc, settings), cold_start_service(isvc, settings)]
            url = cold_start_url(isvc, settings)
    wanted = {(manifest["kind"], manifest["metadata"]["name"]) for manifest in manifests}
    absent = [ref for ref in _autoscaling_objects(isvc) if (ref.kind, ref.name) not in wanted]
    return Children(manifests, absent, digest, url)


def _autoscaling_objects(isvc: InferenceService) -> list[ObjectRef]:
    """Every object an autoscaling engine may have had the operator create: those no longer wanted are deleted."""
    name, namespace = isvc.name, isvc.namespace
    return [
        ObjectRef("autoscaling/v2", "HorizontalPodAutoscaler", namespace, naming.hpa_name(name)),
        ObjectRef(SCALED_OBJECT_API, "ScaledObject", namespace, naming.scaled_object_name(name)),
        ObjectRef(INTERCEPTOR_ROUTE_API, "InterceptorRoute", namespace, naming.interceptor_route_name(name)),
        ObjectRef("v1", "Service", namespace, naming.cold_start_service_name(name)),
    ]
