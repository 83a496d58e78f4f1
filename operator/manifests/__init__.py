"""Pure builders: an InferenceService (and the operator's settings) in, the child manifests out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubeserve.operator import naming
from kubeserve.operator.manifests.autoscaler import autoscaler
from kubeserve.operator.manifests.config_map import config_map
from kubeserve.operator.manifests.deployment import deployment
from kubeserve.operator.manifests.service import service
from kubeserve.operator.object_ref import ObjectRef
from kubeserve.operator.runtime_config import config_file, config_hash, runtime_settings
from kubeserve.operator.settings import OperatorSettings
from kubeserve.operator.spec import InferenceService


@dataclass(frozen=True)
class Children:
    """What to apply, in order (config before the pods that mount it), and what must not exist; ``config_hash`` is
    the runtime config file's, which the pods of this spec carry."""

    manifests: list[dict[str, Any]]
    absent: list[ObjectRef] = field(default_factory=list)
    config_hash: str = ""


def children(isvc: InferenceService, settings: OperatorSettings) -> Children:
    config_text = config_file(runtime_settings(isvc))
    digest = config_hash(config_text)
    manifests = [
        config_map(isvc, config_text),
        service(isvc),
        deployment(isvc, settings, digest),
    ]
    absent = []
    if isvc.spec.autoscaling is not None:
        manifests.append(autoscaler(isvc, isvc.spec.autoscaling))
    else:
        absent.append(
            ObjectRef("autoscaling/v2", "HorizontalPodAutoscaler", isvc.namespace, naming.hpa_name(isvc.name))
        )
    return Children(manifests, absent, digest)
