"""The runtime's settings: one flat name per setting, from flags, environment, a YAML file and defaults.

Precedence is flag > environment (``KUBESERVE_<NAME>``) > config file > default. The same name is used
everywhere (``max_batch_size`` in the file, ``KUBESERVE_MAX_BATCH_SIZE`` in the environment,
``--max-batch-size`` on the command line), and the batching names are Triton's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from kubeserve.runtime.cpus import MAX_WORKERS
from kubeserve.runtime.model_location import ModelNotFound, model_defaults
from kubeserve.runtime.termination import DEFAULT_PATH
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "KUBESERVE_"
CONFIG_FILE_ENV = "KUBESERVE_CONFIG"
MSG_GPU_WORKERS = (
    "workers above 1 on a GPU are not built yet (one model process fed by the workers through shared memory is the "
    "design): set workers to 1, or device to cpu"
)


# The protocols a server may speak (the setting ``protocols``; the operator's ``spec.runtime.protocols``).
HTTP = "http"
GRPC = "grpc"
PROTOCOLS = (HTTP, GRPC)
# gRPC's default port: Triton's, which its clients and perf_analyzer expect.
GRPC_PORT = 8001

# The preprocess and postprocess stages' default timeout.
STAGE_TIMEOUT_SECONDS = 30.0


class ConfigError(Exception):
    """The settings cannot be used; the message says which one and why."""


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
# Channels of each channel_order: how many values its mean and std take.
CHANNELS = {"RGB": 3, "BGR": 3, "L": 1}
# A Python handler: an importable module and a class in it (the operator's spec.model.handler.class too).
HANDLER_CLASS = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"


class ImageInput(BaseModel):
    """How one model input takes images: clients send encoded JPEG or PNG bytes, the server decodes them into the
    tensor the model takes (``runtime/images.py``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resize: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] | None = Field(
        default=None, description="[height, width] every image is resized to (bilinear); none: as sent"
    )
    layout: Literal["NCHW", "NHWC"] = Field(default="NCHW", description="where the model takes the channels")
    channel_order: Literal["RGB", "BGR", "L"] = Field(default="RGB", description="L: one grey channel")
    mean: tuple[FiniteFloat, ...] | None = Field(
        default=None, description="per channel, subtracted from the pixels scaled to 0..1"
    )
    std: tuple[PositiveFloat, ...] | None = Field(default=None, description="per channel, divides after the mean")

    @model_validator(mode="after")
    def _check_channels(self) -> ImageInput:
        channels = CHANNELS[self.channel_order]
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and len(values) != channels:
                raise ValueError(
                    f"{name} has {len(values)} values, but channel_order {self.channel_order} has {channels} "
                    f"channel{'s' if channels > 1 else ''}"
                )
        return self


class RuntimeSettings(BaseModel):
    """Everything the model server can be told. Field descriptions double as ``--help`` text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The model.
    model_path: Path = Field(
        description="ONNX model file to serve, or a directory holding model.onnx or Triton's <version>/model.onnx"
    )
    model_name: str = Field(
        min_length=1,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
        description="name in URLs; unset, the model file's stem, or the directory's name when model_path is one",
    )
    model_version: str = Field(
        default="1", min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", description="version in URLs"
    )

    warmup_inputs_path: Path | None = Field(
        default=None,
        description="JSON file holding a V2 inference request whose inputs warm the model up before it reports "
        "ready (Triton's model_warmup); without it, one synthetic zero row is tried, and its failure is only "
        "a warning",
    )

    # Around the model: images in, labels out, and the stages they run in.
    image_inputs: dict[str, ImageInput] = Field(
        default_factory=dict,
        description="model inputs that take encoded images (JPEG, PNG) as BYTES: input name -> {resize: [height, "
        "width], layout: NCHW|NHWC, channel_order: RGB|BGR|L, mean: [...], std: [...]}; JSON from flags and "
        "environment",
    )
    max_image_pixels: int = Field(
        default=40_000_000,
        ge=1,
        description="most pixels (width x height) of one request's images together (per input), read from their "
        "headers before any is decoded; more: 400",
    )
    labels_path: Path | None = Field(
        default=None,
        description="text file of class labels, line i naming class i, for the classification extension's answers",
    )
    handler: str | None = Field(
        default=None,
        pattern=HANDLER_CLASS,
        description="a Python class run around the model, as module:Class: its preprocess and postprocess are the "
        "request's stages, its load runs once at model load (docs/guide/processing.md: Python handlers)",
    )
    handler_path: Path | None = Field(
        default=None,
        description="directory put first on sys.path before the handler is imported: its code, fetched beside the "
        "model; none: the handler is importable as installed (an image built FROM the runtime's)",
    )
    processing_threads: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="threads running the preprocess and postprocess stages in each server process (processes, for a "
        "handler that holds the GIL); each decodes one request's images at a time, so this bounds that memory too; "
        "0: the process's share of the CPUs",
    )
    preprocess_timeout_seconds: PositiveFloat = Field(
        default=STAGE_TIMEOUT_SECONDS,
        description="longest a request's preprocess stage (the handler's preprocess, images decoded) may take; past "
        "it, 504",
    )
    postprocess_timeout_seconds: PositiveFloat = Field(
        default=STAGE_TIMEOUT_SECONDS,
        description="longest a request's postprocess stage (the handler's postprocess, classification) may take; "
        "past it, 504",
    )

    # HTTP.
    host: str = Field(default="0.0.0.0", description="address to listen on")
    port: int = Field(default=8080, ge=0, le=65535, description="port to listen on (0 picks a free one)")
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, description="largest request body (413)")
    max_buffered_request_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="request bodies one server process holds at once, arriving or waiting their turn on their "
        "connections; the body that would pass it gets 503 with Retry-After (at least max_request_bytes)",
    )
    request_head_timeout_seconds: float = Field(
        default=30.0,
        ge=0,
        description="a request's line and headers must arrive within this long from their first byte, else 408; "
        "0: no limit",
    )
    min_request_body_bytes_per_second: float = Field(
        default=240.0,
        ge=0,
        description="a request body must arrive at this rate at least, over each span of "
        "request_body_rate_window_seconds, else 408; 0: no limit",
    )
    request_body_rate_window_seconds: float = Field(
        default=5.0, gt=0, description="the span over which min_request_body_bytes_per_second is measured"
    )
    protocols: list[Literal["http", "grpc"]] = Field(
        default=list(PROTOCOLS),
        description="the protocols served: http (REST: JSON and binary tensors, /metrics, health) on port, grpc (the "
        "Open Inference Protocol over gRPC, grpc.health.v1) on grpc_port; at least one",
    )
    grpc_port: int = Field(default=GRPC_PORT, ge=0, le=65535, description="gRPC port to listen on (0 picks a free one)")
    access_log: bool = Field(default=False, description="log one line per request")
    idle_timeout_seconds: float = Field(
        default=75.0,
        ge=0,
        description="close a connection idle this long: nothing being answered, nothing received (a request that "
        "stopped arriving halfway is answered 408 first); 0: never",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=MAX_WORKERS,
        description="server processes sharing the port (SO_REUSEPORT), each with its own batcher and ONNX Runtime "
        "session and an equal share of the CPUs; CPU only",
    )
    worker_stall_seconds: float = Field(
        default=30.0,
        gt=0,
        description="with workers: a worker whose event loop has not run for this long is killed, and the pod "
        "restarts (the kubelet's liveness probe reaches one worker only)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="log level")

    # Dynamic batching (Triton's names and meanings).
    max_batch_size: int = Field(default=32, ge=0, description="most rows in one batch; 0 runs each request alone")
    max_queue_delay_microseconds: int = Field(
        default=0, ge=0, description="longest wait for more requests to join a batch"
    )
    preferred_batch_size: list[int] = Field(
        default_factory=list, description="batch sizes sent as soon as they can be formed"
    )
    max_queue_size: int = Field(default=1024, ge=1, description="most requests waiting; more get 503")
    default_timeout_microseconds: int = Field(
        default=0, ge=0, description="queue deadline of a request that sets none; 0 means none"
    )
    instance_count: int = Field(default=1, ge=1, le=64, description="batches computing at the same time")

    # ONNX Runtime.
    device: Literal["auto", "cpu", "cuda", "tensorrt"] = Field(
        default="auto",
        description="auto uses CUDA when onnxruntime-gpu and a GPU are present; tensorrt runs on TensorRT, "
        "then CUDA, then CPU for what they cannot",
    )
    tensorrt_precision: Literal["fp32", "fp16", "int8"] = Field(
        default="fp16",
        description="device tensorrt: the precision TensorRT may build its engines in (int8 also allows fp16; it "
        "needs a QDQ model or a calibration table)",
    )
    tensorrt_engine_cache_path: Path | None = Field(
        default=None,
        description="device tensorrt: directory for TensorRT's engine and timing caches, so that a restart reuses "
        "the engines instead of rebuilding them; none: no cache",
    )
    cuda_device_id: int = Field(default=0, ge=0, description="GPU to run on")
    cuda_memory_limit_bytes: int = Field(default=0, ge=0, description="CUDA arena limit; 0 means none")
    intra_op_num_threads: int = Field(
        default=0,
        ge=0,
        description="threads inside one operator; 0: the CPUs the process may use (affinity, capped by the cgroup's "
        "CPU quota), shared between the workers",
    )
    inter_op_num_threads: int = Field(default=0, ge=0, description="threads across operators; 0: ORT picks")
    allow_spinning: bool = Field(
        default=False, description="let ORT's idle threads spin: more CPU per request, sometimes more throughput"
    )
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = Field(
        default="all", description="ORT graph optimisations"
    )

    # Lifecycle.
    drain_timeout_seconds: float = Field(
        default=30.0, ge=0, description="on SIGTERM, longest wait for accepted requests to finish"
    )
    drain_grace_seconds: float = Field(
        default=1.5,
        ge=0,
        description="on SIGTERM, how long a keep-alive connection must be quiet before it is closed",
    )
    load_failure_exit_seconds: float = Field(
        default=5.0, ge=0, description="after a failed model load, how long to report why before exiting"
    )
    termination_message_path: Path | None = Field(
        default=DEFAULT_PATH,
        description="file a fatal error is written to for Kubernetes (only if it exists)",
    )

    def stage_timeout(self, stage: str) -> tuple[float, str]:
        """The timeout of a request's ``stage`` (preprocess, postprocess), and its setting's name."""
        setting = f"{stage}_timeout_seconds"
        return getattr(self, setting), setting

    @field_validator("preferred_batch_size", mode="before")
    @classmethod
    def _split_sizes(cls, value: Any) -> Any:
        return split_commas(value)

    @field_validator("protocols", mode="before")
    @classmethod
    def _split_protocols(cls, value: Any) -> Any:
        return split_commas(value)

    @field_validator("protocols")
    @classmethod
    def _check_protocols(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(f"at least one protocol must be served: {', '.join(PROTOCOLS)}")
        return list(dict.fromkeys(value))

    @field_validator("image_inputs", mode="before")
    @classmethod
    def _parse_mapping(cls, value: Any) -> Any:
        return parse_json_text(value)

    @model_validator(mode="after")
    def _check_batching(self) -> RuntimeSettings:
        for size in self.preferred_batch_size:
            if size < 1 or (self.max_batch_size and size > self.max_batch_size):
                raise ValueError(
                    f"preferred_batch_size {size} must be between 1 and max_batch_size ({self.max_batch_size})"
                )
        return self

    @model_validator(mode="after")
    def _check_buffers(self) -> RuntimeSettings:
        if self.max_buffered_request_bytes < self.max_request_bytes:
            raise ValueError(
                f"max_buffered_request_bytes ({self.max_buffered_request_bytes}) must be at least max_request_bytes "
                f"({self.max_request_bytes}): a body of the largest size must fit"
            )
        return self

    @model_validator(mode="after")
    def _check_handler(self) -> RuntimeSettings:
        if self.handler_path is not None and self.handler is None:
            raise ValueError(f"handler_path {self.handler_path} is set without handler: name the class (module:Class)")
        return self

    @model_validator(mode="after")
    def _check_workers(self) -> RuntimeSettings:
        if self.workers > 1 and self.device in ("cuda", "tensorrt"):
            raise ValueError(f"workers {self.workers} with device {self.device}: {MSG_GPU_WORKERS}")
        return self


SETTING_NAMES: tuple[str, ...] = tuple(RuntimeSettings.model_fields)


def split_commas(value: Any) -> Any:
    """Environment variables and flags carry lists as "a,b,c"; other values pass through."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def parse_json_text(value: Any) -> Any:
    """Environment variables and flags carry mappings as JSON text; other values (a YAML file's) pass through."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(f"is not valid JSON: {error}") from None


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings in a YAML file: a mapping of setting names to values."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, not {type(loaded).__name__}")
    unknown = sorted(set(loaded) - set(SETTING_NAMES))
    if unknown:
        raise ConfigError(f"config file {path} has unknown settings: {', '.join(map(str, unknown))}")
    return loaded


def flag_name(name: str) -> str:
    """The command-line flag of a setting: ``max_batch_size`` is ``--max-batch-size``."""
    return "--" + name.replace("_", "-")


def env_name(name: str, prefix: str = ENV_PREFIX) -> str:
    """The environment variable of a setting: ``max_batch_size`` is ``KUBESERVE_MAX_BATCH_SIZE``."""
    return prefix + name.upper()


def settings_from_environment(
    environ: Mapping[str, str], names: Iterable[str] = SETTING_NAMES, prefix: str = ENV_PREFIX
) -> dict[str, str]:
    """``<PREFIX><NAME>`` variables that name a setting; others (service links, say) are not ours."""
    return {name: environ[env_name(name, prefix)] for name in names if env_name(name, prefix) in environ}


def load_settings(
    flags: Mapping[str, Any], environ: Mapping[str, str], config_file: Path | None = None
) -> RuntimeSettings:
    """Merge the sources (flag > environment > file > default) and validate the result."""
    if config_file is None and environ.get(CONFIG_FILE_ENV):
        config_file = Path(environ[CONFIG_FILE_ENV])
    merged: dict[str, Any] = read_config_file(config_file) if config_file else {}
    # Where each value came from, so that an error names what the user must change.
    sources = {name: f"{name} in {config_file}" for name in merged}
    from_environment = settings_from_environment(environ)
    merged.update(from_environment)
    sources.update({name: env_name(name) for name in from_environment})
    from_flags = {name: value for name, value in flags.items() if value is not None}
    merged.update(from_flags)
    sources.update({name: flag_name(name) for name in from_flags})
    try:
        merged.update(model_defaults(merged))  # a directory's model file; name and version from the path
    except ModelNotFound as error:
        raise ConfigError(f"{sources['model_path']}: {error}") from error

    def source(location: str) -> str:
        # "preferred_batch_size.1": the list's second item; "image_inputs.image.mean": a key's field.
        name, _, item = location.partition(".")
        given = sources.get(name) or f"{name} ({flag_name(name)} or {env_name(name)})"
        if not item:
            return given
        return f"{given}, item {item}" if item.isdigit() else f"{given}, at {item}"

    try:
        return RuntimeSettings.model_validate(merged)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, name=source)) from error


def describe_validation_error(
    error: ValidationError, title: str = "invalid settings", name: Callable[[str], str] = str
) -> str:
    """One line per problem, naming the setting as a user writes it (``name`` maps a field to that)."""
    lines = []
    for problem in error.errors():
        where = name(".".join(str(part) for part in problem["loc"])) if problem["loc"] else "settings"
        given = problem.get("input")
        shown = "" if problem["type"] == "missing" or isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"{where}: {problem['msg']}{shown}{yaml_number_hint(problem)}")
    return f"{title}:\n  " + "\n  ".join(lines)


def yaml_number_hint(problem: Mapping[str, Any]) -> str:
    """For a text field that YAML read as a number (``version: 1``), the fix, which the bare "should be a valid
    string" does not suggest: quotes. Empty for any other problem."""
    given = problem.get("input")
    if problem["type"] != "string_type" or not isinstance(given, int | float) or isinstance(given, bool):
        return ""
    return f': quote it in YAML, "{given}", or it is read as a number'
