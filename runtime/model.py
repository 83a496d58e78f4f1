"""The ONNX Runtime session behind the server: loading, the model's signature, warm-up and inference.

Everything here blocks; the server calls it from worker threads, never on the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from kubeserve.runtime.config import RuntimeSettings
from kubeserve.runtime.cpus import available_cpus
from kubeserve.runtime.datatypes import BY_ONNX_TYPE
from kubeserve.runtime.handler_code import HandlerError
from kubeserve.runtime.model_metadata import ModelOptimization, read_metadata_props
from kubeserve.runtime.processing import Processing, ProcessingError
from kubeserve.runtime.protocol.errors import BadRequest
from kubeserve.runtime.protocol.v2_request import decode_request
from kubeserve.runtime.signature import ModelSignature, TensorSpec

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
# Providers that run on a GPU, as Triton's model configuration reports the instance kind.
GPU_PROVIDERS = frozenset({CUDA, TENSORRT})
# How the model was warmed up, as the model_ready log event reports it.
WARMUP_USER = "user"
WARMUP_SYNTHETIC = "synthetic"
WARMUP_FAILED = "failed"
CPU = "CPUExecutionProvider"

ORT_OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class ModelLoadError(Exception):
    """The model cannot be served; the message says why."""


# The providers each device asks for, by the name their error gives.
_REQUIRED = {"cuda": ((CUDA, "CUDA"),), "tensorrt": ((TENSORRT, "TensorRT"), (CUDA, "CUDA"))}


def execution_providers(settings: RuntimeSettings, available: Sequence[str]) -> list[str | tuple[str, dict]]:
    """In ORT's order of preference: TensorRT (``device: tensorrt``), then CUDA (``tensorrt``, ``cuda``, or ``auto``
    where this onnxruntime build has it), then CPU, which runs whatever the others cannot."""
    for provider, name in _REQUIRED.get(settings.device, ()):
        if provider not in available:
            raise ModelLoadError(
                f"device is {settings.device!r}, but this onnxruntime has no {name} provider ({provider}; install "
                f"kubeserve[gpu], not kubeserve[cpu], with the {name} libraries); available: {', '.join(available)}"
            )
    cuda: dict[str, object] = {"device_id": settings.cuda_device_id}
    if settings.cuda_memory_limit_bytes:
        cuda["gpu_mem_limit"] = settings.cuda_memory_limit_bytes
    if settings.device == "tensorrt":
        return [(TENSORRT, tensorrt_options(settings)), (CUDA, cuda), CPU]
    if settings.device in ("cuda", "auto") and CUDA in available:
        return [(CUDA, cuda), CPU]
    return [CPU]


def tensorrt_options(settings: RuntimeSettings) -> dict[str, object]:
    """TensorRT's provider options: the precision its engines may use, and where they are cached."""
    options: dict[str, object] = {
        "device_id": settings.cuda_device_id,
        # INT8 with FP16 allowed too: layers TensorRT cannot run in INT8 fall back to FP16 rather than FP32.
        "trt_fp16_enable": settings.tensorrt_precision in ("fp16", "int8"),
        "trt_int8_enable": settings.tensorrt_precision == "int8",
        "trt_engine_cache_enable": settings.tensorrt_engine_cache_path is not None,
        "trt_timing_cache_enable": settings.tensorrt_engine_cache_path is not None,
    }
    if settings.tensorrt_engine_cache_path is not None:
        options["trt_engine_cache_path"] = str(settings.tensorrt_engine_cache_path)
        options["trt_timing_cache_path"] = str(settings.tensorrt_engine_cache_path)
    return options


def session_options(settings: RuntimeSettings, optimization: ModelOptimization | None = None) -> ort.SessionOptions:
    """``optimization``: what the model file says ``kubeserve-runtime optimize`` did to it (a precompiled graph is
    not optimized again)."""
    options = ort.SessionOptions()
    # 0: the CPUs this process may use, not ORT's own default (the machine's cores, its threads pinned to them).
    options.intra_op_num_threads = settings.intra_op_num_threads or available_cpus()
    options.inter_op_num_threads = settings.inter_op_num_threads
    level = (optimization or ModelOptimization()).load_level(settings.graph_optimization_level)
    options.graph_optimization_level = ORT_OPTIMIZATION_LEVELS[level]
    spinning = "1" if settings.allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    options.log_severity_level = 3  # errors only: ORT's warnings are not structured logs
    return options


def _tensor_spec(arg: ort.NodeArg, role: str) -> TensorSpec:
    datatype = BY_ONNX_TYPE.get(arg.type)
    if datatype is None:
        raise ModelLoadError(f"{role} '{arg.name}' has type {arg.type}, which the server cannot carry")
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in (arg.shape or []))
    return TensorSpec(arg.name, datatype, shape)


class OnnxModel:
    def __init__(self, session: ort.InferenceSession, optimization: ModelOptimization | None = None) -> None:
        self._session = session
        # What the model file says about its optimization (``kubeserve-runtime optimize``): what is served.
        self.optimization = optimization or ModelOptimization()
        self.signature = ModelSignature(
            inputs=tuple(_tensor_spec(arg, "input") for arg in session.get_inputs()),
            outputs=tuple(_tensor_spec(arg, "output") for arg in session.get_outputs()),
        )
        self.providers: list[str] = session.get_providers()
        self._string_inputs = frozenset(spec.name for spec in self.signature.inputs if spec.datatype.is_bytes)
        # What runs around the model for each request (``load`` builds it from the settings): nothing here.
        self.processing = Processing(self.signature)
        self.warmup = WARMUP_FAILED

    @classmethod
    def load(cls, path: Path, settings: RuntimeSettings) -> OnnxModel:
        if not path.is_file():
            raise ModelLoadError(f"model file {path} does not exist")
        providers = execution_providers(settings, ort.get_available_providers())
        # Read before the session exists: whether the graph is precompiled decides how the session is created.
        optimization = ModelOptimization.from_metadata(read_metadata_props(path))
        options = session_options(settings, optimization)
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as error:  # ORT raises its own exception types for every kind of bad model
            raise ModelLoadError(f"onnxruntime cannot load {path}: {error}") from error
        started = session.get_providers()
        for provider, name in _REQUIRED.get(settings.device, ()):
            if provider not in started:
                raise ModelLoadError(
                    f"device is {settings.device!r}, but the {name} provider could not start "
                    f"(is a GPU visible, with the {name} libraries?); running: {', '.join(started)}"
                )
        log.info(
            "model session created",
            extra={
                "event": "model_session",
                **optimization.as_parameters(),
                "graph_optimization_level": optimization.load_level(settings.graph_optimization_level),
                "providers": started,
            },
        )
        model = cls(session, optimization)
        try:
            model.processing = Processing.build(settings, model.signature)
        except (ProcessingError, HandlerError) as error:
            raise ModelLoadError(str(error)) from None
        try:
            model.warmup = model.warm_up(settings.warmup_inputs_path)
        except BaseException:
            model.processing.close()  # a handler's processes go with the failed load
            raise
        return model

    def warm_up(self, inputs_path: Path | None) -> str:
        """One inference before the first caller's, so that it does not pay for lazy initialisation; through the
        preprocess and postprocess stages, as a request would go (image inputs: a decoded image; a handler's
        preprocess and postprocess).

        The user's inputs must work: a failure is a failed load, as a bad setting is. The synthetic zero row
        is only a guess (a model may parse its strings, say), so its failure is a warning and the model serves.
        """
        if inputs_path is not None:
            feeds = self.request_feeds(inputs_path)
            try:
                self.processing.postprocess(self._compute(feeds), {})
            except Exception as error:
                raise ModelLoadError(f"warm-up with warmup_inputs_path {inputs_path} failed: {error}") from error
            return WARMUP_USER
        try:
            feeds = self.processing.preprocess(self.processing.synthetic_feeds())
            self.processing.postprocess(self._compute(feeds), {})
        except Exception as error:  # ORT raises its own exception types for every kind of failure
            log.warning(
                "synthetic warm-up failed; the model serves without it (set warmup_inputs_path to warm it up)",
                extra={"event": "warmup_failed", "source": WARMUP_SYNTHETIC, "reason": str(error)},
            )
            return WARMUP_FAILED
        return WARMUP_SYNTHETIC

    def _compute(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output, as a batch's compute makes them: through a batched handler's stages, if there is one."""
        batch_preprocess, batch_postprocess = self.processing.batch_preprocess, self.processing.batch_postprocess
        if batch_preprocess is not None:
            feeds = batch_preprocess(feeds)
        outputs = self.run(feeds, None)
        return outputs if batch_postprocess is None else batch_postprocess(outputs)

    def request_feeds(self, path: Path, what: str = "warmup_inputs_path") -> dict[str, np.ndarray]:
        """The inputs of the V2 inference request (JSON) in ``path``, checked against what the model serves and
        preprocessed, as the model takes them; errors name the file as ``what`` (the setting or option that gave it)."""
        try:
            body = path.read_bytes()
        except OSError as error:
            raise ModelLoadError(f"cannot read {what} {path}: {error.strerror}") from error
        try:
            return self.processing.preprocess(decode_request(body, None, self.processing.signature).inputs)
        except BadRequest as error:
            raise ModelLoadError(f"{what} {path} is not a request this model takes: {error}") from error

    def run(self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None) -> dict[str, np.ndarray]:
        """Outputs by name: ``output_names``, or all of them."""
        if self._string_inputs:
            feeds = {
                name: self._as_strings(array) if name in self._string_inputs else array for name, array in feeds.items()
            }
        names = list(output_names) if output_names is not None else list(self.signature.output_names)
        return dict(zip(names, self._session.run(names, feeds), strict=True))

    @staticmethod
    def _as_strings(array: np.ndarray) -> np.ndarray:
        # ONNX Runtime wants str objects for string tensors; the wire carries bytes.
        return np.vectorize(
            lambda item: item.decode("utf-8", "replace") if isinstance(item, bytes) else item, otypes=[object]
        )(array)
