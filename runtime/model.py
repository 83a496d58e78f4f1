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
from kubeserve.runtime.datatypes import BY_ONNX_TYPE
from kubeserve.runtime.protocol.errors import BadRequest
from kubeserve.runtime.protocol.v2_request import decode_request
from kubeserve.runtime.signature import ModelSignature, TensorSpec

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
# How the model was warmed up, as the model_ready log event reports it.
WARMUP_USER = "user"
WARMUP_SYNTHETIC = "synthetic"
WARMUP_FAILED = "failed"
CPU = "CPUExecutionProvider"

_OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class ModelLoadError(Exception):
    """The model cannot be served; the message says why."""


def execution_providers(settings: RuntimeSettings, available: Sequence[str]) -> list[str | tuple[str, dict]]:
    """CUDA when asked for (or on ``auto``) and this onnxruntime build has it, else CPU."""
    if settings.device == "cuda" and CUDA not in available:
        raise ModelLoadError(
            "device is 'cuda', but this onnxruntime has no CUDA provider (install kubeserve[gpu], "
            f"not kubeserve[cpu]); available: {', '.join(available)}"
        )
    if settings.device in ("cuda", "auto") and CUDA in available:
        options: dict[str, object] = {"device_id": settings.cuda_device_id}
        if settings.cuda_memory_limit_bytes:
            options["gpu_mem_limit"] = settings.cuda_memory_limit_bytes
        return [(CUDA, options), CPU]
    return [CPU]


def session_options(settings: RuntimeSettings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_num_threads
    options.inter_op_num_threads = settings.inter_op_num_threads
    options.graph_optimization_level = _OPTIMIZATION_LEVELS[settings.graph_optimization_level]
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
    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        self.signature = ModelSignature(
            inputs=tuple(_tensor_spec(arg, "input") for arg in session.get_inputs()),
            outputs=tuple(_tensor_spec(arg, "output") for arg in session.get_outputs()),
        )
        self.providers: list[str] = session.get_providers()
        self._string_inputs = frozenset(spec.name for spec in self.signature.inputs if spec.datatype.is_bytes)
        self.warmup = WARMUP_FAILED

    @classmethod
    def load(cls, path: Path, settings: RuntimeSettings) -> OnnxModel:
        if not path.is_file():
            raise ModelLoadError(f"model file {path} does not exist")
        providers = execution_providers(settings, ort.get_available_providers())
        try:
            session = ort.InferenceSession(str(path), sess_options=session_options(settings), providers=providers)
        except Exception as error:  # ORT raises its own exception types for every kind of bad model
            raise ModelLoadError(f"onnxruntime cannot load {path}: {error}") from error
        if settings.device == "cuda" and CUDA not in session.get_providers():
            raise ModelLoadError("device is 'cuda', but the CUDA provider could not start (is a GPU visible?)")
        model = cls(session)
        model.warmup = model.warm_up(settings.warmup_inputs_path)
        return model

    def warm_up(self, inputs_path: Path | None) -> str:
        """One inference before the first caller's, so that it does not pay for lazy initialisation.

        The user's inputs must work: a failure is a failed load, as a bad setting is. The synthetic zero row
        is only a guess (a model may parse its strings, say), so its failure is a warning and the model serves.
        """
        if inputs_path is not None:
            feeds = self.warmup_feeds(inputs_path)
            try:
                self.run(feeds, None)
            except Exception as error:
                raise ModelLoadError(f"warm-up with warmup_inputs_path {inputs_path} failed: {error}") from error
            return WARMUP_USER
        try:
            self.run(self.synthetic_feeds(), None)
        except Exception as error:  # ORT raises its own exception types for every kind of failure
            log.warning(
                "synthetic warm-up failed; the model serves without it (set warmup_inputs_path to warm it up)",
                extra={"event": "warmup_failed", "source": WARMUP_SYNTHETIC, "reason": str(error)},
            )
            return WARMUP_FAILED
        return WARMUP_SYNTHETIC

    def warmup_feeds(self, path: Path) -> dict[str, np.ndarray]:
        """The inputs of the V2 inference request (JSON) in ``path``, checked against the model."""
        try:
            body = path.read_bytes()
        except OSError as error:
            raise ModelLoadError(f"cannot read warmup_inputs_path {path}: {error.strerror}") from error
        try:
            return decode_request(body, None, self.signature).inputs
        except BadRequest as error:
            raise ModelLoadError(f"warmup_inputs_path {path} is not a request this model takes: {error}") from error

    def synthetic_feeds(self) -> dict[str, np.ndarray]:
        """A single zero (or empty-string) row for every input."""
        feeds = {}
        for spec in self.signature.inputs:
            shape = tuple(1 if dim == -1 else dim for dim in spec.shape)
            if spec.datatype.is_bytes:
                feeds[spec.name] = np.full(shape, b"", dtype=object)
            else:
                feeds[spec.name] = np.zeros(shape, dtype=spec.datatype.numpy)
        return feeds

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
