"""The Deployment of runtime pods: model fetch and optimization, probes, graceful drain, GPU scheduling, planned
memory, locked-down security."""

from __future__ import annotations

import math
from typing import Any

from kubeserve.operator import naming
from kubeserve.operator.manifests.common import child_metadata
from kubeserve.operator.memory_estimate import as_quantity, estimate, quantity_bytes
from kubeserve.operator.model_source import ModelSource, model_source
from kubeserve.operator.runtime_config import precompile_level
from kubeserve.operator.settings import OperatorSettings
from kubeserve.operator.spec import InferenceService
from kubeserve.runtime.fetch import MAX_UNPACKED_BYTES

# Room in the fetched files' emptyDir for what is beside the model (graphs, labels, handler code): as much as the fetch
# unpacks from one archive of code at most.
FETCHED_BESIDE_BYTES = MAX_UNPACKED_BYTES

NONROOT_ID = 65532
# The pause before SIGTERM lets endpoints controllers and load balancers stop sending new requests.
PRESTOP_PAUSE_SECONDS = 5
# Headroom after the runtime's own drain timeout before the kubelet kills it.
GRACE_MARGIN_SECONDS = 10
PROBE_PERIOD_SECONDS = 5
POD_COMPARISON_RUNS = 5  # the optimize-model init container's timed runs per model
# The pod's name (the downward API), for k8s.pod.name in OTEL_RESOURCE_ATTRIBUTES: the OpenTelemetry Operator's name.
POD_NAME_VARIABLE = "OTEL_RESOURCE_ATTRIBUTES_POD_NAME"

GPU_TOLERATION = {"key": naming.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
PROMETHEUS_ANNOTATIONS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(naming.HTTP_PORT),
    "prometheus.io/path": "/metrics",
}


def container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def runtime_image(isvc: InferenceService, settings: OperatorSettings) -> str:
    if isvc.spec.runtime.image:
        return isvc.spec.runtime.image
    return settings.cuda_image if isvc.wants_gpu else settings.cpu_image


def deployment(
    isvc: InferenceService, settings: OperatorSettings, config_hash: str, revision: str, replicas: int
) -> dict[str, Any]:
    """Revision ``revision``'s Deployment, ``NAME-<revision>``, with the replicas the rollout gives it."""
    runtime = isvc.spec.runtime
    source = model_source(isvc.spec.model)
    resources = container_resources(isvc)
    revision_labels = {naming.LABEL_ISVC: isvc.name, naming.LABEL_REVISION: revision}
    pod_labels = {**naming.common_labels(isvc.name), **revision_labels, naming.LABEL_VERSION: isvc.spec.model.version}
    pod_spec: dict[str, Any] = {
        # A Service called "kubeserve" would otherwise inject KUBESERVE_PORT=tcp://... into the runtime's settings.
        "enableServiceLinks": False,
        "automountServiceAccountToken": runtime.service_account_name is not None,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": NONROOT_ID,
            "runAsGroup": NONROOT_ID,
            "fsGroup": NONROOT_ID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": PRESTOP_PAUSE_SECONDS + runtime.drain_timeout_seconds + GRACE_MARGIN_SECONDS,
        "containers": [_runtime_container(isvc, settings, source, resources)],
        "volumes": _volumes(isvc, source, revision),
    }
    init_containers = []
    if source.kind == "fetch":
        init_containers.append(_fetch_container(isvc, settings, source, resources))
    if source.optimized:
        init_containers.append(_optimize_container(isvc, settings, source, resources))
    if init_containers:
        pod_spec["initContainers"] = init_containers
    pod_spec.update(_scheduling(isvc))

    spec: dict[str, Any] = {
        # The InferenceService owns the replica total (its scale subresource, which an HPA writes); the rollout
        # splits it between revisions.
        "replicas": replicas,
        "selector": {"matchLabels": revision_labels},
        "revisionHistoryLimit": 3,
        # Never below the serving capacity during a rollout: new pods come up before old ones go.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
        "progressDeadlineSeconds": runtime.startup_timeout_seconds + 300,
        "template": {
            "metadata": {
                "labels": pod_labels,
                "annotations": {**PROMETHEUS_ANNOTATIONS, naming.ANNOTATION_CONFIG_HASH: config_hash},
            },
            "spec": pod_spec,
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_metadata(isvc, naming.revision_object_name(isvc.name, revision)),
        "spec": spec,
    }


def container_resources(isvc: InferenceService) -> dict[str, dict[str, Any]]:
    """The runtime container's requests and limits: the spec's, and the memory estimate as the request when the
    spec sets neither a memory request nor a memory limit (with only a limit, Kubernetes requests the limit)."""
    resources = isvc.spec.runtime.resources.model_dump(by_alias=True)
    planned = estimate(isvc)
    if planned is not None and "memory" not in resources["requests"] and "memory" not in resources["limits"]:
        resources["requests"]["memory"] = as_quantity(planned)
    return {kind: dict(amounts) for kind, amounts in resources.items() if amounts}


def _runtime_container(
    isvc: InferenceService, settings: OperatorSettings, source: ModelSource, resources: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    runtime = isvc.spec.runtime
    mounts = [
        {"name": "config", "mountPath": naming.CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if source.kind != "image":
        mounts.append({"name": "models", "mountPath": naming.MODELS_DIR, "readOnly": True})
    if _has_optimized_volume(isvc, source):
        # Written by the runtime only for TensorRT's engine cache.
        mount = {"name": "optimized", "mountPath": naming.OPTIMIZED_DIR}
        mounts.append(mount if _uses_tensorrt(isvc) else {**mount, "readOnly": True})
    container: dict[str, Any] = {
        "name": naming.RUNTIME_CONTAINER,
        "image": runtime_image(isvc, settings),
        "imagePullPolicy": runtime.image_pull_policy or settings.image_pull_policy,
        "command": ["kubeserve-runtime"],
        "args": ["serve", "--config", f"{naming.CONFIG_DIR}/{naming.CONFIG_FILE}"],
        "ports": container_ports(isvc),
        "readinessProbe": _probe(isvc, READY, failures=2),
        "livenessProbe": _probe(isvc, LIVE, failures=3, period=10),
        # Liveness waits until the model has loaded and warmed up, however long that takes (up to the timeout).
        "startupProbe": _probe(isvc, READY, failures=math.ceil(runtime.startup_timeout_seconds / PROBE_PERIOD_SECONDS)),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_PAUSE_SECONDS}}},
        "volumeMounts": mounts,
        "securityContext": container_security(),
        # The runtime writes why a model failed to load to /dev/termination-log; logs are the fallback.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    env = _tracing_env(isvc, settings) + [var.model_dump(by_alias=True, exclude_none=True) for var in runtime.env]
    if env:
        container["env"] = env
    if resources:
        container["resources"] = resources
    return container


def _tracing_env(isvc: InferenceService, settings: OperatorSettings) -> list[dict[str, Any]]:
    """OpenTelemetry's variables for the runtime container, when the operator has any (docs/guide/observability.md): its
    exporter settings (``settings.OTEL_FORWARDED``: never its own service name, resource attributes or headers), a
    service named after the InferenceService and the pod's resource attributes; none that spec.runtime.env sets,
    whose own come after them."""
    if not settings.otel_env:
        return []
    # The namespace and the version need no percent-encoding: their patterns allow no ',' '=' or '%'.
    attributes = (
        f"k8s.namespace.name={isvc.namespace},k8s.pod.name=$({POD_NAME_VARIABLE}),"
        f"service.version={isvc.spec.model.version}"
    )
    variables = {**settings.otel_env, "OTEL_SERVICE_NAME": isvc.name, "OTEL_RESOURCE_ATTRIBUTES": attributes}
    env = [{"name": POD_NAME_VARIABLE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    env += [{"name": name, "value": value} for name, value in sorted(variables.items())]
    own = {var.name for var in isvc.spec.runtime.env}
    return [var for var in env if var["name"] not in own]


def _fetch_container(
    isvc: InferenceService, settings: OperatorSettings, source: ModelSource, resources: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """``kubeserve-runtime fetch``: every file not in the image into the emptyDir at /models (the model, the graphs,
    the labels file: ``URI DEST`` pairs; handler code: ``--unpack URI DIR``), a claim's copied from its mount."""
    model, runtime = isvc.spec.model, isvc.spec.runtime
    args = ["fetch"]
    if (limit := fetched_files_limit(isvc)) is not None:
        # Each file's own bound: one far larger than the spec says fails the fetch, in its words, before the kubelet
        # evicts the pod for the volume.
        args += ["--max-bytes", str(limit)]
    for fetch in source.fetches:
        args += ["--unpack", fetch.uri, fetch.dest] if fetch.unpack else [fetch.uri, fetch.dest]
    claims = [
        {"name": _claim_volume(index), "mountPath": f"{naming.PVC_ROOT}/{claim}", "readOnly": True}
        for index, claim in enumerate(source.claims)
    ]
    container: dict[str, Any] = {
        "name": naming.FETCH_CONTAINER,
        "image": runtime_image(isvc, settings),
        "imagePullPolicy": runtime.image_pull_policy or settings.image_pull_policy,
        "command": ["kubeserve-runtime"],
        "args": args,
        "volumeMounts": [
            {"name": "models", "mountPath": naming.MODELS_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
            *claims,
        ],
        "securityContext": container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if model.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": model.credentials_secret}}]
    plain = _init_resources(resources)
    if plain:
        container["resources"] = plain
    return container


def _optimize_container(
    isvc: InferenceService, settings: OperatorSettings, source: ModelSource, resources: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """``kubeserve-runtime optimize``: the original model (fetched, on the PVC or in the image), composed with the
    graphs beside it, into the one the runtime loads, once per pod start; its log compares the two (size, latency,
    largest difference)."""
    runtime, optimization = isvc.spec.runtime, isvc.optimization
    mounts = [{"name": "optimized", "mountPath": naming.OPTIMIZED_DIR}, {"name": "tmp", "mountPath": "/tmp"}]
    if source.kind != "image":
        mounts.append({"name": "models", "mountPath": naming.MODELS_DIR, "readOnly": True})
    container: dict[str, Any] = {
        "name": naming.OPTIMIZE_CONTAINER,
        "image": runtime_image(isvc, settings),
        "imagePullPolicy": runtime.image_pull_policy or settings.image_pull_policy,
        "command": ["kubeserve-runtime"],
        "args": [
            "optimize",
            source.model_path,
            source.served_path,
            "--quantization",
            optimization.quantization,
            *(["--precompile", "--precompile-level", precompile_level(isvc)] if optimization.precompile else []),
            *(["--preprocessing", source.preprocessing_path] if source.preprocessing_path else []),
            *(["--postprocessing", source.postprocessing_path] if source.postprocessing_path else []),
            # A short comparison for the pod's log: every pod start runs it.
            "--runs",
            str(POD_COMPARISON_RUNS),
            "--termination-message-path",
            naming.TERMINATION_MESSAGE_PATH,
        ],
        "volumeMounts": mounts,
        "securityContext": container_security(),
        "terminationMessagePath": naming.TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    plain = _init_resources(resources)
    if plain:
        container["resources"] = plain
    return container


def _init_resources(resources: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """An init container's: no GPU (a download and a CPU rewrite need none); CPU and memory as the runtime's keep
    quotas and limit ranges satisfied, and give the optimization the memory the estimate planned for it."""
    plain = {
        kind: {name: value for name, value in amounts.items() if name in ("cpu", "memory")}
        for kind, amounts in resources.items()
    }
    return {kind: amounts for kind, amounts in plain.items() if amounts}


def _uses_tensorrt(isvc: InferenceService) -> bool:
    return isvc.optimization.execution_provider == "tensorrt"


def _has_optimized_volume(isvc: InferenceService, source: ModelSource) -> bool:
    return source.optimized or _uses_tensorrt(isvc)


# Each probe's question, over HTTP (a path) and over gRPC (grpc.health.v1's service: runtime/grpc/health.py).
READY = ("/v2/health/ready", "")
LIVE = ("/v2/health/live", "liveness")


def container_ports(isvc: InferenceService) -> list[dict[str, Any]]:
    """The runtime container's ports, one per protocol it serves."""
    protocols = isvc.spec.runtime.protocols
    ports = []
    if "http" in protocols:
        ports.append({"name": "http", "containerPort": naming.HTTP_PORT, "protocol": "TCP"})
    if "grpc" in protocols:
        ports.append({"name": "grpc", "containerPort": naming.GRPC_PORT, "protocol": "TCP"})
    return ports


def _probe(
    isvc: InferenceService, question: tuple[str, str], *, failures: int, period: int = PROBE_PERIOD_SECONDS
) -> dict[str, Any]:
    """Over HTTP while the pods serve it; over gRPC (the kubelet's native gRPC probe) when they serve only gRPC."""
    path, service = question
    if "http" in isvc.spec.runtime.protocols:
        action: dict[str, Any] = {"httpGet": {"path": path, "port": "http"}}
    else:  # a gRPC probe names its port by number: the kubelet takes no port name there
        action = {"grpc": {"port": naming.GRPC_PORT, "service": service}}
    return {
        **action,
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _volumes(isvc: InferenceService, source: ModelSource, revision: str) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": naming.revision_object_name(isvc.name, revision)}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if source.kind == "fetch":
        volumes.append({"name": "models", "emptyDir": _fetched_files_volume(isvc)})
    elif source.kind == "pvc":
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": source.claim, "readOnly": True}})
    volumes += [
        {"name": _claim_volume(index), "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        for index, claim in enumerate(source.claims)
    ]
    if _has_optimized_volume(isvc, source):
        volumes.append({"name": "optimized", "emptyDir": {}})
    return volumes


def _fetched_files_volume(isvc: InferenceService) -> dict[str, Any]:
    """The emptyDir the fetch fills: with spec.model.size, bounded (``fetched_files_limit``), so that a file far
    larger than the spec says fails the fetch in its words, and files that fill the volume all the same are the pod's
    eviction (its message naming the volume), not the node's full disk; without it, unbounded, since nothing says
    what the model needs."""
    limit = fetched_files_limit(isvc)
    return {} if limit is None else {"sizeLimit": as_quantity(limit + FETCHED_BESIDE_BYTES)}


def fetched_files_limit(isvc: InferenceService) -> int | None:
    """Each fetched file's bytes at most (``--max-bytes``): the model's size and ``FETCHED_BESIDE_BYTES``; the
    emptyDir holds that and as much again besides (a handler's archive and its unpacked code, the graphs, the labels).
    None without spec.model.size, or with nothing fetched."""
    size = isvc.spec.model.size
    if size is None or model_source(isvc.spec.model).kind != "fetch":
        return None
    return quantity_bytes(size) + FETCHED_BESIDE_BYTES


def _claim_volume(index: int) -> str:
    """The volume of a claim the fetch init container copies from (a claim's name may be too long for a volume's)."""
    return f"claim-{index}"


def _scheduling(isvc: InferenceService) -> dict[str, Any]:
    runtime = isvc.spec.runtime
    fields: dict[str, Any] = {}
    tolerations = [toleration.model_dump(by_alias=True, exclude_none=True) for toleration in runtime.tolerations]
    # GPU nodes are commonly tainted nvidia.com/gpu:NoSchedule to keep other pods off them.
    if isvc.wants_gpu and not any(toleration.get("key") == naming.GPU_RESOURCE for toleration in tolerations):
        tolerations.append(GPU_TOLERATION)
    if tolerations:
        fields["tolerations"] = tolerations
    if runtime.node_selector:
        fields["nodeSelector"] = dict(runtime.node_selector)
    if runtime.affinity:
        fields["affinity"] = runtime.affinity
    if runtime.image_pull_secrets:
        fields["imagePullSecrets"] = [secret.model_dump(by_alias=True) for secret in runtime.image_pull_secrets]
    named = {
        "runtimeClassName": runtime.runtime_class_name,
        "priorityClassName": runtime.priority_class_name,
        "serviceAccountName": runtime.service_account_name,
    }
    fields.update({key: value for key, value in named.items() if value is not None})
    return fields
