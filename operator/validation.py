"""Semantic checks: what the CRD's schema cannot catch but Kubernetes or the runtime would reject later.

Caught here, the user sees ``Ready=False`` with reason ``InvalidSpec`` at once, instead of a ReplicaSet that
cannot create pods or runtime pods that exit 2, and nothing is applied.
"""

from __future__ import annotations

from decimal import Decimal

from kubernetes.utils import parse_quantity
from kubeserve.operator import naming
from kubeserve.operator.runtime_config import config_problems, runtime_settings
from kubeserve.operator.settings import OperatorSettings
from kubeserve.operator.spec import (
    MSG_PROVIDER_NEEDS_GPU,
    MSG_PROVIDER_NOT_ON_CPU,
    MSG_WORKERS_ON_GPU,
    InferenceService,
)

# Resources that may be overcommitted (requests below limits); every other one is "extended".
_OVERCOMMITTABLE = ("cpu", "memory", "ephemeral-storage")


def spec_problems(isvc: InferenceService, settings: OperatorSettings) -> list[str]:
    """Every problem, one line each, naming the field as the user wrote it; empty when the spec is usable."""
    return [
        *_resource_problems(isvc),
        *_device_problems(isvc),
        *_optimization_problems(isvc),
        *_workers_problems(isvc),
        *_keda_problems(isvc, settings),
        *config_problems(runtime_settings(isvc)),
    ]


def _keda_problems(isvc: InferenceService, settings: OperatorSettings) -> list[str]:
    autoscaling = isvc.spec.autoscaling
    if autoscaling is None or autoscaling.engine != "keda":
        return []
    if not (autoscaling.keda and autoscaling.keda.server_address) and not settings.prometheus_server_address:
        return [
            "spec.autoscaling.keda.serverAddress: engine keda queries Prometheus, and the operator has no default "
            "one: name it here, or set the chart value keda.prometheusServerAddress"
        ]
    return []


def _resource_problems(isvc: InferenceService) -> list[str]:
    resources = isvc.spec.runtime.resources
    problems = []
    for name, request in resources.requests.items():
        limit = resources.limits.get(name)
        if name.startswith(_OVERCOMMITTABLE) or name.startswith("hugepages-"):
            if limit is not None and parse_quantity(request) > parse_quantity(limit):
                problems.append(f"spec.runtime.resources.requests.{name}: {request} is more than the limit {limit}")
        elif limit is None or parse_quantity(request) != parse_quantity(limit):
            problems.append(
                f"spec.runtime.resources.requests.{name}: {name} is an extended resource: set it in limits "
                f"(requests, when given, must equal limits)"
            )
    gpus = resources.limits.get(naming.GPU_RESOURCE)
    if gpus is not None:
        count = parse_quantity(gpus)
        if count <= 0 or count != count.to_integral_value():
            problems.append(
                f"spec.runtime.resources.limits.{naming.GPU_RESOURCE}: must be a whole number of GPUs, not {gpus}"
            )
    return problems


def _device_problems(isvc: InferenceService) -> list[str]:
    device = isvc.spec.runtime.device
    has_gpu = parse_quantity(isvc.spec.runtime.resources.limits.get(naming.GPU_RESOURCE, 0)) > Decimal(0)
    if device == "cuda" and not has_gpu:
        return [f"spec.runtime.device: cuda needs a GPU: set spec.runtime.resources.limits.{naming.GPU_RESOURCE}"]
    return []


def _optimization_problems(isvc: InferenceService) -> list[str]:
    """The CRD's CEL rules on spec (they need model and runtime both), said the same way; and a model size that is
    no size."""
    model, runtime = isvc.spec.model, isvc.spec.runtime
    problems = []
    if model.size is not None and parse_quantity(model.size) <= 0:
        problems.append(f"spec.model.size: must be the model file's size, above 0, such as 25Mi, not {model.size}")
    if isvc.optimization.execution_provider is not None:
        where = "spec.model.optimization.executionProvider"
        # As the CEL rule has it: a GPU named in limits (a zero or fractional count is refused above).
        if naming.GPU_RESOURCE not in runtime.resources.limits:
            problems.append(f"{where}: {MSG_PROVIDER_NEEDS_GPU}")
        if runtime.device == "cpu":
            problems.append(f"{where}: {MSG_PROVIDER_NOT_ON_CPU}")
    return problems


def _workers_problems(isvc: InferenceService) -> list[str]:
    """The CRD's CEL rule on spec, said the same way."""
    workers = isvc.spec.runtime.workers
    if workers is not None and workers > 1 and isvc.wants_gpu:
        return [f"spec.runtime.workers: {MSG_WORKERS_ON_GPU}"]
    return []
