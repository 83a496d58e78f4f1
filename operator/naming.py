"""Names the operator and the chart share: the API, labels, child object names, revision names."""

from __future__ import annotations

import re

from kubeserve.runtime.config import GRPC_PORT as RUNTIME_GRPC_PORT

GROUP = "serving.kubeserve.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferenceService"
PLURAL = "inferenceservices"

FIELD_MANAGER = "kubeserve"
# Put on InferenceServices by earlier versions (kopf's timers needed it); kopf now removes it where it finds it.
FINALIZER = f"{GROUP}/finalizer"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_ISVC = f"{GROUP}/inferenceservice"
LABEL_REVISION = f"{GROUP}/revision"
# The model version a revision's pods serve (a revision is a version with its settings).
LABEL_VERSION = f"{GROUP}/version"
ANNOTATION_CONFIG_HASH = f"{GROUP}/config-hash"

RUNTIME_APP_NAME = "kubeserve-runtime"
MANAGED_BY = "kubeserve"

# A Service's name is a DNS-1035 label.
MAX_SERVICE_NAME = 63
# The Service's port, in front of the runtime pods' HTTP_PORT.
SERVICE_PORT = 80
# Inside the runtime pods.
HTTP_PORT = 8080
# gRPC, in the pods and on the Services: the runtime's default (Triton's port).
GRPC_PORT = RUNTIME_GRPC_PORT
CONFIG_DIR = "/etc/kubeserve"
CONFIG_FILE = "runtime.yaml"
MODELS_DIR = "/models"
FETCHED_MODEL_PATH = f"{MODELS_DIR}/model.onnx"
# What is fetched beside the model: the graphs composed with it, its labels file, its handler's code (a directory).
PREPROCESSING_PATH = f"{MODELS_DIR}/preprocessing.onnx"
POSTPROCESSING_PATH = f"{MODELS_DIR}/postprocessing.onnx"
LABELS_PATH = f"{MODELS_DIR}/labels.txt"
HANDLER_DIR = f"{MODELS_DIR}/handler"
# Where the fetch init container mounts the claims it copies from (`kubeserve-runtime fetch --pvc-root`'s default).
PVC_ROOT = "/mnt/pvc"
# The optimized model and TensorRT's engine cache: an emptyDir, so both outlive a container restart.
OPTIMIZED_DIR = "/optimized"
OPTIMIZED_MODEL_PATH = f"{OPTIMIZED_DIR}/model.onnx"
TENSORRT_ENGINE_CACHE_DIR = f"{OPTIMIZED_DIR}/tensorrt"
# Where the kubelet reads a container's termination message (its default), and the runtime's commands write it.
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
RUNTIME_CONTAINER = "runtime"
FETCH_CONTAINER = "fetch-model"
OPTIMIZE_CONTAINER = "optimize-model"
GPU_RESOURCE = "nvidia.com/gpu"


def common_labels(isvc_name: str) -> dict[str, str]:
    """Labels on every child object; the Service selects on ``LABEL_ISVC`` alone."""
    return {
        LABEL_NAME: RUNTIME_APP_NAME,
        LABEL_INSTANCE: isvc_name,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_ISVC: isvc_name,
    }


def runtime_selector(isvc_name: str) -> str:
    """The label selector of every runtime pod of the InferenceService, every revision: its scale subresource's
    ``status.selector``, over which an HPA averages its metric."""
    return f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_ISVC}={isvc_name}"


def legacy_config_map_name(isvc_name: str) -> str:
    """The one ConfigMap of an InferenceService created before revisions (adopted, deleted with its Deployment)."""
    return f"{isvc_name}-runtime-config"


def legacy_deployment_name(isvc_name: str) -> str:
    """The one Deployment of an InferenceService created before revisions: adopted as a revision."""
    return isvc_name


def revision_object_name(isvc_name: str, revision: str) -> str:
    """A revision's Deployment, its Service and its ConfigMap: ``NAME-<revision>``."""
    return f"{isvc_name}-{revision}"


# ``NAME-<revision>`` names the revision's Service, whose name is a DNS-1035 label.
MAX_OBJECT_NAME = MAX_SERVICE_NAME
# The digest part of a revision name: 6 hex digits tell 16 M configurations apart, and a collision needs the same
# sanitised version too.
DIGEST_LENGTH = 6
# The version part's length when the InferenceService's name leaves room for it: an InferenceService name of up to
# 40 characters (63 - 1 - 15 - 1 - 6) keeps the whole budget. Longer names shrink the version part, down to none
# (then the revision is the digest alone), which fits names of up to 56 characters.
VERSION_BUDGET = 15
MAX_ISVC_NAME = MAX_OBJECT_NAME - 1 - DIGEST_LENGTH
_NOT_LABEL = re.compile(r"[^a-z0-9]+")
_HEX = re.compile(r"^[0-9a-f]+$")


def revision_name(version: str, digest: str, *, isvc_name: str = "") -> str:
    """``<version>-<digest[:6]>``: the version lowercased, every run of other characters as one '-', cut to what
    ``NAME-<revision>`` leaves (``VERSION_BUDGET`` at most); a DNS-1123 label, the same for the same inputs.

    ``digest``: a lowercase hex digest of everything that makes the revision (``runtime_config.config_hash`` of the
    rendered pod template, say). ``isvc_name``: the InferenceService's, to fit ``NAME-<revision>`` in 63 characters.
    """
    if len(digest) < DIGEST_LENGTH or not _HEX.match(digest):
        raise ValueError(f"digest must be at least {DIGEST_LENGTH} lowercase hex digits, not {digest!r}")
    if len(isvc_name) > MAX_ISVC_NAME:
        raise ValueError(f"an InferenceService name of {len(isvc_name)} characters leaves no room for a revision")
    room = (
        min(VERSION_BUDGET, MAX_OBJECT_NAME - len(isvc_name) - 1 - DIGEST_LENGTH - 1) if isvc_name else VERSION_BUDGET
    )
    readable = _NOT_LABEL.sub("-", version.lower())[:room].strip("-") if room > 0 else ""
    short = digest[:DIGEST_LENGTH]
    return f"{readable}-{short}" if readable else short


def service_name(isvc_name: str) -> str:
    return isvc_name


def hpa_name(isvc_name: str) -> str:
    return isvc_name


def scaled_object_name(isvc_name: str) -> str:
    return isvc_name


def http_route_name(isvc_name: str) -> str:
    return isvc_name


def interceptor_route_name(isvc_name: str) -> str:
    return isvc_name


def cold_start_service_name(isvc_name: str) -> str:
    """The ExternalName Service that names the KEDA HTTP add-on's interceptor for a scale-to-zero InferenceService."""
    return f"{isvc_name}-proxy"


def cold_start_hosts(isvc_name: str, namespace: str) -> list[str]:
    """The Host headers callers send through ``cold_start_service_name`` (the interceptor routes on them); the
    fully qualified one first, the one ``status.url`` gives."""
    short = f"{cold_start_service_name(isvc_name)}.{namespace}"
    return [f"{short}.svc.cluster.local", f"{short}.svc", short]


def service_url(isvc_name: str, namespace: str) -> str:
    return f"http://{service_name(isvc_name)}.{namespace}.svc.cluster.local"


def service_grpc_address(isvc_name: str, namespace: str) -> str:
    """Where gRPC clients connect (``host:port``, as tritonclient and grpc channels take it)."""
    return f"{service_name(isvc_name)}.{namespace}.svc.cluster.local:{GRPC_PORT}"
