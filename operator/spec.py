"""The InferenceService as the operator reads it: typed, with the CRD's rules (schema and CEL) restated.

The CRD (``crds/inferenceservices.yaml``) is the API's source of truth and the API server enforces it; this
model lets the operator work with types and lets ``kubeserve-operator render`` reject, without a cluster, what
the API server would. ``tests/operator/test_crd.py`` keeps the two in step: same fields, same defaults, and
every invalid object in its table rejected by both with the same message.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from kubeserve.operator import naming
from kubeserve.runtime.config import HANDLER_CLASS, PROTOCOLS, STAGE_TIMEOUT_SECONDS, yaml_number_hint
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

# Runtime pods when neither spec.replicas nor autoscaling says.
DEFAULT_REPLICAS = 1
MICROSECONDS_PER_SECOND = 1_000_000
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
QUANTITY = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
# A version is also the pods' revision label, so it must be a valid label value.
MODEL_VERSION = r"^[A-Za-z0-9]([A-Za-z0-9_.\-]*[A-Za-z0-9])?$"

URI_PATTERNS = (
    re.compile(r"^(https?|s3|gs)://[^/]+/.+$"),
    re.compile(r"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/.+$"),
    re.compile(r"^file:///.+$"),
)
DOTDOT_PATTERN = re.compile(r"^(pvc|file)://.*(^|/)[.][.](/|$)")
# Handler code: a Python file or an archive of Python code (a pre-signed URL's query may follow).
HANDLER_CODE_PATTERN = re.compile(r"^[^?#]*[^/?#]\.(py|tar\.gz|tgz|zip)([?#].*)?$")
# The runtime's default for preprocess_timeout_seconds and postprocess_timeout_seconds.
HOOK_TIMEOUT_SECONDS = STAGE_TIMEOUT_SECONDS

# The runtime settings the spec controls; env must not override them (the CRD's env rule lists the same).
SPEC_CONTROLLED_ENV = (
    "KUBESERVE_CONFIG",
    "KUBESERVE_MODEL_PATH",
    "KUBESERVE_MODEL_NAME",
    "KUBESERVE_MODEL_VERSION",
    "KUBESERVE_PORT",
    "KUBESERVE_MAX_BATCH_SIZE",
    "KUBESERVE_MAX_QUEUE_DELAY_MICROSECONDS",
    "KUBESERVE_PREFERRED_BATCH_SIZE",
    "KUBESERVE_MAX_QUEUE_SIZE",
    "KUBESERVE_DEFAULT_TIMEOUT_MICROSECONDS",
    "KUBESERVE_INSTANCE_COUNT",
    "KUBESERVE_WORKERS",
    "KUBESERVE_DEVICE",
    "KUBESERVE_TENSORRT_PRECISION",
    "KUBESERVE_TENSORRT_ENGINE_CACHE_PATH",
    "KUBESERVE_INTRA_OP_NUM_THREADS",
    "KUBESERVE_INTER_OP_NUM_THREADS",
    "KUBESERVE_ALLOW_SPINNING",
    "KUBESERVE_GRAPH_OPTIMIZATION_LEVEL",
    "KUBESERVE_DRAIN_TIMEOUT_SECONDS",
    "KUBESERVE_LOG_LEVEL",
    "KUBESERVE_LABELS_PATH",
    "KUBESERVE_IMAGE_INPUTS",
    "KUBESERVE_HANDLER",
    "KUBESERVE_HANDLER_PATH",
    "KUBESERVE_PREPROCESS_TIMEOUT_SECONDS",
    "KUBESERVE_POSTPROCESS_TIMEOUT_SECONDS",
    "KUBESERVE_MAX_IMAGE_PIXELS",
    "KUBESERVE_PROCESSING_THREADS",
)

# The CRD restricts metadata.name with a pattern; the operator says the same in words.
MSG_NAME = (
    "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter, "
    f"at most {naming.MAX_ISVC_NAME} characters): it names the Service, and NAME-REVISION each revision's "
    "Deployment and Service"
)
# The messages of the CRD's CEL rules, word for word.
MSG_URI = (
    "uri must be https://HOST/PATH, http://HOST/PATH, s3://BUCKET/KEY, gs://BUCKET/OBJECT, pvc://CLAIM/PATH "
    "or file:///PATH (a file inside the runtime image)"
)
MSG_DOTDOT = "uri must not contain '..' path segments"
MSG_HANDLER_CODE = "handler.uri must name a .py file, or a .tar.gz, .tgz or .zip archive of Python code"
MSG_INPUT_NAMES = "every input's name must be unique"
MSG_CHANNELS = "mean and std need one value per channel: 3 for channelOrder RGB and BGR, 1 for L"
MSG_CREDENTIALS = "credentialsSecret is only used for s3:// and gs:// URIs"
MSG_ENV = "env must not set a KUBESERVE_ variable that the InferenceService spec controls (use the spec field instead)"
MSG_PREFERRED = "every preferredBatchSize must be at most maxBatchSize"
MSG_MIN_MAX = "minReplicas must be at most maxReplicas"
MSG_TARGET_ABOVE_BATCHING = (
    "targetQueueDelaySeconds must be above spec.batching.maxQueueDelayMicroseconds (in seconds): the batcher waits "
    "that long on purpose, so a target at or below it would keep the HPA scaling up for ever"
)
MSG_ZERO_NEEDS_KEDA = (
    "minReplicas 0 needs engine keda: an HPA cannot scale from zero, KEDA (with its HTTP add-on holding the first "
    "request) can"
)
MSG_KEDA_SETTINGS = "keda settings are only used with engine keda"
MSG_STEPS_INCREASING = "steps' weights must increase from one step to the next"
MSG_PROVIDER_NEEDS_GPU = (
    f"executionProvider cuda and tensorrt need a GPU: set spec.runtime.resources.limits.{naming.GPU_RESOURCE} (the CPU "
    "image has neither CUDA nor TensorRT)"
)
MSG_PROVIDER_NOT_ON_CPU = "executionProvider cannot be used with spec.runtime.device cpu"
MSG_TENSORRT_PRECISION = "tensorrtPrecision is only used with executionProvider tensorrt"
MSG_WORKERS_ON_GPU = (
    f"workers above 1 cannot share a GPU yet: remove spec.runtime.workers or set it to 1 with "
    f"{naming.GPU_RESOURCE} (one ONNX Runtime session per GPU)"
)
PROMETHEUS_URL = r"^https?://[^/\s]+(/\S*)?$"


def _quantity(value: object) -> int | str:
    # Kubernetes int-or-string: a whole number, or a string such as "500m" or "2Gi"; never a float.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.match(QUANTITY, value):
        return value
    raise ValueError("must be a Kubernetes quantity such as 1, 500m or 2Gi")


Quantity = Annotated[int | str, PlainValidator(_quantity)]


class SpecError(Exception):
    """The object is not a usable InferenceService; ``problems`` says where and why, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class _Fields(BaseModel):
    """camelCase on the wire (as in the CRD), snake_case in Python; unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)


Quantization = Literal["none", "dynamicInt8"]


class Optimization(_Fields):
    """What is done to the model file once per pod start, before the runtime loads it, and where it computes."""

    quantization: Quantization = "none"
    precompile: bool = False
    execution_provider: Literal["cuda", "tensorrt"] | None = None
    tensorrt_precision: Literal["fp32", "fp16", "int8"] | None = None

    @field_validator("tensorrt_precision")
    @classmethod
    def _check_tensorrt_precision(cls, precision: str | None, info: ValidationInfo) -> str | None:
        if precision is not None and info.data.get("execution_provider") != "tensorrt":
            raise ValueError(MSG_TENSORRT_PRECISION)
        return precision

    @property
    def rewrites_model(self) -> bool:
        """Whether an init container writes an optimized model file for the runtime to load instead."""
        return self.quantization != "none" or self.precompile


def _unset(value: object) -> bool:
    # An empty optimization block asks for nothing: the same revision as none.
    return value is None or value == Optimization()


def _both_protocols(protocols: list[str]) -> bool:
    # Left out of dumps at the default, as the CRD fills it in: a revision's digest stays what it was before it.
    return sorted(protocols) == sorted(PROTOCOLS)


def _default_hook_timeout(seconds: float) -> bool:
    # Left out of dumps at the default, as the CRD fills it in: a revision's digest stays what it was before it.
    return seconds == HOOK_TIMEOUT_SECONDS


def _check_uri(uri: str | None) -> str | None:
    """The CRD's URI rules, for spec.model.uri and every URI beside it."""
    if uri is None:
        return uri
    if not any(pattern.match(uri) for pattern in URI_PATTERNS):
        raise ValueError(MSG_URI)
    if DOTDOT_PATTERN.match(uri):
        raise ValueError(MSG_DOTDOT)
    return uri


class ImageInput(_Fields):
    """How the runtime turns an encoded image into the input tensor: pixels scaled to 0..1, then normalized."""

    resize: list[Annotated[int, Field(ge=1, le=16384)]] | None = Field(default=None, min_length=2, max_length=2)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    channel_order: Literal["RGB", "BGR", "L"] = "RGB"
    mean: list[float] | None = Field(default=None, min_length=1, max_length=3)
    std: list[Annotated[float, Field(gt=0)]] | None = Field(default=None, min_length=1, max_length=3)

    @property
    def channels(self) -> int:
        return 1 if self.channel_order == "L" else 3


class ModelInput(_Fields):
    name: str = Field(min_length=1, max_length=256)
    image: ImageInput


class Handler(_Fields):
    """Python code around the model: ``module:Class``, from ``uri`` (unpacked beside the model) or the image."""

    class_: str = Field(alias="class", max_length=256, pattern=HANDLER_CLASS)
    uri: str | None = Field(default=None, max_length=2048)

    @field_validator("uri")
    @classmethod
    def _check_code(cls, uri: str | None) -> str | None:
        _check_uri(uri)
        if uri is not None and not HANDLER_CODE_PATTERN.match(uri):
            raise ValueError(MSG_HANDLER_CODE)
        return uri


class Model(_Fields):
    name: str | None = Field(default=None, max_length=63, pattern=MODEL_NAME)
    version: str = Field(min_length=1, max_length=63, pattern=MODEL_VERSION)
    uri: str = Field(max_length=2048)
    format: Literal["onnx"] = "onnx"
    # Left out of dumps when unset, so that a revision's digest (a dump) stays what it was before these fields.
    # Before credentialsSecret, whose check reads them.
    preprocessing: str | None = Field(default=None, max_length=2048, exclude_if=_unset)
    postprocessing: str | None = Field(default=None, max_length=2048, exclude_if=_unset)
    labels: str | None = Field(default=None, max_length=2048, exclude_if=_unset)
    handler: Handler | None = Field(default=None, exclude_if=_unset)
    credentials_secret: str | None = Field(default=None, max_length=253, pattern=DNS1123_SUBDOMAIN)
    size: Quantity | None = Field(default=None, exclude_if=_unset)
    optimization: Optimization | None = Field(default=None, exclude_if=_unset)
    inputs: list[ModelInput] | None = Field(default=None, max_length=64, exclude_if=_unset)
    max_image_pixels: int | None = Field(default=None, ge=1, exclude_if=_unset)

    @field_validator("uri", "preprocessing", "postprocessing", "labels")
    @classmethod
    def _check_uris(cls, uri: str | None) -> str | None:
        return _check_uri(uri)

    @field_validator("credentials_secret")
    @classmethod
    def _check_credentials(cls, secret: str | None, info: ValidationInfo) -> str | None:
        handler = info.data.get("handler")
        uris = [info.data.get(name) for name in ("uri", "preprocessing", "postprocessing", "labels")]
        uris.append(handler.uri if handler is not None else None)
        if secret is not None and not any(uri and uri.startswith(("s3://", "gs://")) for uri in uris):
            raise ValueError(MSG_CREDENTIALS)
        return secret

    @field_validator("inputs")
    @classmethod
    def _check_inputs(cls, inputs: list[ModelInput] | None) -> list[ModelInput] | None:
        if inputs is None:
            return inputs
        if len({each.name for each in inputs}) != len(inputs):
            raise ValueError(MSG_INPUT_NAMES)
        for image in (each.image for each in inputs):
            if any(values is not None and len(values) != image.channels for values in (image.mean, image.std)):
                raise ValueError(MSG_CHANNELS)
        return inputs

    @property
    def composed(self) -> bool:
        """Whether graphs are composed with the model (an init container writes the result)."""
        return self.preprocessing is not None or self.postprocessing is not None

    @property
    def rewritten(self) -> bool:
        """Whether an init container writes the file the runtime loads: an optimization that rewrites the model,
        or graphs composed with it."""
        return self.composed or (self.optimization is not None and self.optimization.rewrites_model)


class LocalObjectReference(_Fields):
    name: str = Field(max_length=253)


class Resources(_Fields):
    limits: dict[str, Quantity] = Field(default_factory=dict, max_length=32)
    requests: dict[str, Quantity] = Field(default_factory=dict, max_length=32)


class Toleration(_Fields):
    key: str | None = Field(default=None, max_length=317)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(default=None, max_length=63)
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class EnvVar(_Fields):
    name: str = Field(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str | None = None
    value_from: dict[str, Any] | None = None


class Runtime(_Fields):
    image: str | None = Field(default=None, min_length=1, max_length=1024)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list, max_length=16)
    resources: Resources = Field(default_factory=Resources)
    node_selector: dict[str, str] = Field(default_factory=dict, max_length=64)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64)
    affinity: dict[str, Any] | None = None
    runtime_class_name: str | None = Field(default=None, max_length=253)
    priority_class_name: str | None = Field(default=None, max_length=253)
    service_account_name: str | None = Field(default=None, max_length=253)
    env: list[EnvVar] = Field(default_factory=list, max_length=128)
    device: Literal["auto", "cpu", "cuda"] | None = None
    instance_count: int = Field(default=1, ge=1, le=64)
    workers: int | None = Field(default=None, ge=1, le=64, exclude_if=_unset)
    intra_op_num_threads: int = Field(default=0, ge=0, le=1024)
    processing_threads: int | None = Field(default=None, ge=1, le=1024, exclude_if=_unset)
    inter_op_num_threads: int = Field(default=0, ge=0, le=1024)
    allow_spinning: bool = False
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    drain_timeout_seconds: int = Field(default=30, ge=0, le=3600)
    # The protocols the pods serve: http (REST, /metrics) on naming.HTTP_PORT, grpc on naming.GRPC_PORT.
    protocols: list[Literal["http", "grpc"]] = Field(
        default=list(PROTOCOLS), min_length=1, max_length=2, exclude_if=_both_protocols
    )
    startup_timeout_seconds: int = Field(default=600, ge=10, le=86400)
    preprocess_timeout_seconds: float = Field(
        default=HOOK_TIMEOUT_SECONDS, gt=0, le=3600, exclude_if=_default_hook_timeout
    )
    postprocess_timeout_seconds: float = Field(
        default=HOOK_TIMEOUT_SECONDS, gt=0, le=3600, exclude_if=_default_hook_timeout
    )

    @field_validator("env")
    @classmethod
    def _check_env(cls, env: list[EnvVar]) -> list[EnvVar]:
        if any(var.name in SPEC_CONTROLLED_ENV for var in env):
            raise ValueError(MSG_ENV)
        return env


class Batching(_Fields):
    max_batch_size: int = Field(default=32, ge=0, le=65536)
    max_queue_delay_microseconds: int = Field(default=0, ge=0, le=10_000_000)
    preferred_batch_size: list[Annotated[int, Field(ge=1, le=65536)]] = Field(default_factory=list, max_length=16)
    max_queue_size: int = Field(default=1024, ge=1, le=1_000_000)
    default_timeout_microseconds: int = Field(default=0, ge=0, le=3_600_000_000)

    @field_validator("preferred_batch_size")
    @classmethod
    def _check_preferred(cls, sizes: list[int], info: ValidationInfo) -> list[int]:
        largest = info.data.get("max_batch_size", 0)
        if largest and any(size > largest for size in sizes):
            raise ValueError(MSG_PREFERRED)
        return sizes


class ScalingPolicy(_Fields):
    type: Literal["Pods", "Percent"]
    value: int = Field(ge=1)
    period_seconds: int = Field(ge=1, le=1800)


class ScalingRules(_Fields):
    stabilization_window_seconds: int | None = Field(default=None, ge=0, le=3600)
    select_policy: Literal["Max", "Min", "Disabled"] | None = None
    tolerance: Quantity | None = None
    policies: list[ScalingPolicy] | None = Field(default=None, max_length=16)


class Behavior(_Fields):
    scale_up: ScalingRules | None = None
    scale_down: ScalingRules | None = None


class Keda(_Fields):
    server_address: str | None = Field(default=None, max_length=1024, pattern=PROMETHEUS_URL)
    activation_queue_delay_seconds: float = Field(default=0, ge=0, le=60)
    polling_interval_seconds: int = Field(default=15, ge=1, le=3600)
    cooldown_period_seconds: int = Field(default=300, ge=0, le=86400)


class Autoscaling(_Fields):
    engine: Literal["hpa", "keda"] = "hpa"
    min_replicas: int = Field(default=1, ge=0, le=1000)
    max_replicas: int = Field(ge=1, le=1000)
    target_queue_delay_seconds: float = Field(default=0.05, gt=0, le=60)
    behavior: Behavior | None = None
    keda: Keda | None = None

    @model_validator(mode="after")
    def _check_range(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(MSG_MIN_MAX)
        if self.min_replicas == 0 and self.engine != "keda":
            raise ValueError(MSG_ZERO_NEEDS_KEDA)
        if self.keda is not None and self.engine != "keda":
            raise ValueError(MSG_KEDA_SETTINGS)
        return self

    @property
    def scales_to_zero(self) -> bool:
        return self.min_replicas == 0


class RolloutStep(_Fields):
    weight: int = Field(ge=1, le=99)
    pause_seconds: int = Field(default=0, ge=0, le=86400)


class Threshold(_Fields):
    max: float = Field(ge=0)
    relative_to_stable: bool = False


class Analysis(_Fields):
    interval_seconds: int = Field(default=60, ge=5, le=3600)
    failure_limit: int = Field(default=2, ge=1, le=100)
    min_requests: int = Field(default=20, ge=1, le=1_000_000)
    inconclusive_timeout_seconds: int = Field(default=600, ge=0, le=86400)
    error_ratio: Threshold | None = None
    p99_seconds: Threshold | None = None
    mean_queue_delay_seconds: Threshold | None = None


class ParentRef(_Fields):
    name: str = Field(min_length=1, max_length=253)
    namespace: str | None = Field(default=None, min_length=1, max_length=63, pattern=DNS1123_LABEL)
    section_name: str | None = Field(default=None, min_length=1, max_length=253)


class GatewayAPI(_Fields):
    parent_ref: ParentRef
    hostnames: list[str] = Field(default_factory=list, max_length=16)


class TrafficRouting(_Fields):
    gateway_api: GatewayAPI = Field(alias="gatewayAPI")


class Strategy(StrEnum):
    """How a new revision replaces the serving one: through the canary steps, or at once. A rollout with no ready
    revision to compare with (the first) is Immediate whatever the spec says."""

    CANARY = "Canary"
    IMMEDIATE = "Immediate"


class Rollout(_Fields):
    """``spec.rollout``: the rollout state machine's (``rollout``) whole policy, defaults included."""

    strategy: Strategy = Strategy.CANARY
    steps: list[RolloutStep] = Field(
        default_factory=lambda: [RolloutStep(weight=10, pause_seconds=60), RolloutStep(weight=50, pause_seconds=60)],
        max_length=10,
    )
    analysis: Analysis | None = None
    progress_deadline_seconds: int = Field(default=600, ge=30, le=86400)
    paused: bool = False
    revision_history_limit: int = Field(default=2, ge=0, le=10)
    traffic_routing: TrafficRouting | None = None

    @field_validator("steps")
    @classmethod
    def _check_increasing(cls, steps: list[RolloutStep]) -> list[RolloutStep]:
        if any(later.weight <= earlier.weight for earlier, later in itertools.pairwise(steps)):
            raise ValueError(MSG_STEPS_INCREASING)
        return steps


class Spec(_Fields):
    model: Model
    replicas: int | None = Field(default=None, ge=0, le=1000)
    runtime: Runtime = Field(default_factory=Runtime)
    batching: Batching = Field(default_factory=Batching)
    autoscaling: Autoscaling | None = None
    rollout: Rollout = Field(default_factory=Rollout)

    @field_validator("autoscaling")
    @classmethod
    def _check_target_above_batching(cls, autoscaling: Autoscaling | None, info: ValidationInfo) -> Autoscaling | None:
        # Reported at spec.autoscaling, as the CRD's CEL rule on spec is (fieldPath .autoscaling). Both sides in
        # exact decimal: a target of 0.002 with a 2000 µs batching window is at the window, not above it.
        batching = info.data.get("batching")
        if autoscaling is not None and batching is not None:
            window = Decimal(batching.max_queue_delay_microseconds) / MICROSECONDS_PER_SECOND
            if Decimal(repr(autoscaling.target_queue_delay_seconds)) <= window:
                raise ValueError(MSG_TARGET_ABOVE_BATCHING)
        return autoscaling


class Metadata(BaseModel):
    # Server-set metadata (labels, managedFields, ...) is not the operator's business.
    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if len(name) > naming.MAX_ISVC_NAME or not re.match(DNS1035_LABEL, name):
            raise ValueError(MSG_NAME)
        return name


class InferenceService(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    api_version: Literal["serving.kubeserve.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["InferenceService"]
    metadata: Metadata
    spec: Spec

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    @property
    def model_name(self) -> str:
        return self.spec.model.name or self.metadata.name

    @property
    def replicas(self) -> int:
        """The runtime pods wanted: spec.replicas (the user's, ``kubectl scale``'s or the HPA's); unset, the
        autoscaler's minimum, or 1. The CRD has no default for it, so that an apply leaving it out keeps the HPA's."""
        if self.spec.replicas is not None:
            return self.spec.replicas
        return self.spec.autoscaling.min_replicas if self.spec.autoscaling is not None else DEFAULT_REPLICAS

    @property
    def optimization(self) -> Optimization:
        """spec.model.optimization, its defaults when unset."""
        return self.spec.model.optimization or Optimization()

    @property
    def wants_gpu(self) -> bool:
        resources = self.spec.runtime.resources
        return naming.GPU_RESOURCE in resources.limits or naming.GPU_RESOURCE in resources.requests


def parse(body: Mapping[str, Any]) -> InferenceService:
    """The object as an InferenceService, or SpecError with one line per problem."""
    try:
        return InferenceService.model_validate(dict(body))
    except ValidationError as error:
        raise SpecError(describe(error)) from error


def describe(error: ValidationError) -> list[str]:
    """Problems as ``spec.model.uri: message`` lines, naming fields as the user wrote them."""
    problems = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"] if not str(part).startswith("function-"))
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "missing":
            message = "required"
        elif problem["type"] == "extra_forbidden":
            message = "unknown field"
        message += yaml_number_hint(problem)
        problems.append(f"{where}: {message}" if where else message)
    return problems
