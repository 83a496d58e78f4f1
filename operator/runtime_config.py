"""The runtime's config file for an InferenceService, checked by the runtime's own settings model."""

from __future__ import annotations

import hashlib
from typing import Any

import yaml
from kubeserve.operator import naming
from kubeserve.operator.cpu_share import intra_op_threads, processing_threads
from kubeserve.operator.memory_estimate import planned_workers
from kubeserve.operator.model_source import model_source
from kubeserve.operator.spec import HOOK_TIMEOUT_SECONDS, InferenceService
from kubeserve.runtime.config import PROTOCOLS, RuntimeSettings, describe_validation_error
from pydantic import ValidationError

# The runtime's own, for a spec that names none.
DEFAULT_TENSORRT_PRECISION: str = RuntimeSettings.model_fields["tensorrt_precision"].default


def runtime_settings(isvc: InferenceService) -> dict[str, Any]:
    """The flat mapping of ``RuntimeSettings`` names the runtime reads from its config file."""
    spec = isvc.spec
    runtime, batching = spec.runtime, spec.batching
    source = model_source(spec.model)
    settings: dict[str, Any] = {
        "model_path": source.served_path,
        "model_name": isvc.model_name,
        "model_version": spec.model.version,
        "port": naming.HTTP_PORT,
        "max_batch_size": batching.max_batch_size,
        "max_queue_delay_microseconds": batching.max_queue_delay_microseconds,
        "preferred_batch_size": list(batching.preferred_batch_size),
        "max_queue_size": batching.max_queue_size,
        "default_timeout_microseconds": batching.default_timeout_microseconds,
        "instance_count": runtime.instance_count,
        "device": _device(isvc),
        "intra_op_num_threads": intra_op_threads(isvc, planned_workers(isvc)),
        "inter_op_num_threads": runtime.inter_op_num_threads,
        "allow_spinning": runtime.allow_spinning,
        "graph_optimization_level": runtime.graph_optimization_level,
        "drain_timeout_seconds": runtime.drain_timeout_seconds,
        "log_level": runtime.log_level,
    }
    if set(runtime.protocols) != set(PROTOCOLS):
        # Only then: an InferenceService serving both keeps the config file (and so the revision) it had.
        settings["protocols"] = list(runtime.protocols)
    if (workers := planned_workers(isvc)) > 1:
        # Only then: a pod of one process keeps the config file (and so the revision) it had.
        settings["workers"] = workers
    optimization = isvc.optimization
    if optimization.execution_provider == "tensorrt":
        # Only then: an InferenceService without TensorRT keeps the config file (and so the revision) it had.
        settings["tensorrt_precision"] = optimization.tensorrt_precision or DEFAULT_TENSORRT_PRECISION
        settings["tensorrt_engine_cache_path"] = naming.TENSORRT_ENGINE_CACHE_DIR
    # The rest only when the spec asks for it, so that an InferenceService without it keeps its config file (and so
    # its revision); the timeouts only away from the runtime's default, which the CRD fills in.
    model = spec.model
    if source.labels_path is not None:
        settings["labels_path"] = source.labels_path
    if model.inputs:
        settings["image_inputs"] = {each.name: each.image.model_dump(exclude_none=True) for each in model.inputs}
    if model.handler is not None:
        settings["handler"] = model.handler.class_
        if source.handler_path is not None:
            settings["handler_path"] = source.handler_path
    if model.max_image_pixels is not None:
        settings["max_image_pixels"] = model.max_image_pixels
    if model.inputs or runtime.processing_threads is not None:
        # Images: as many decoded at once as the memory estimate counts. A handler alone: the runtime's choice.
        settings["processing_threads"] = processing_threads(isvc, planned_workers(isvc))
    if runtime.preprocess_timeout_seconds != HOOK_TIMEOUT_SECONDS:
        settings["preprocess_timeout_seconds"] = runtime.preprocess_timeout_seconds
    if runtime.postprocess_timeout_seconds != HOOK_TIMEOUT_SECONDS:
        settings["postprocess_timeout_seconds"] = runtime.postprocess_timeout_seconds
    return settings


def _device(isvc: InferenceService) -> str:
    """The execution provider the spec names, else spec.runtime.device, else cuda with a GPU and cpu without."""
    return isvc.optimization.execution_provider or isvc.spec.runtime.device or ("cuda" if isvc.wants_gpu else "cpu")


def precompile_level(isvc: InferenceService) -> str:
    """The graph optimizations a precompiled model keeps: all of them (this CPU's layouts included) for a CPU, the
    provider-independent ones for a GPU, whose provider fuses its own."""
    return "basic" if isvc.wants_gpu or _device(isvc) != "cpu" else "all"


def served_precision(isvc: InferenceService) -> str:
    """The lowest precision the served model computes in, as V2 names data types: INT8 (dynamic quantization's
    weights, or TensorRT's int8), FP16 (TensorRT's fp16) or FP32."""
    optimization = isvc.optimization
    tensorrt = optimization.tensorrt_precision or DEFAULT_TENSORRT_PRECISION
    if optimization.execution_provider != "tensorrt":
        tensorrt = "fp32"
    if optimization.quantization == "dynamicInt8" or tensorrt == "int8":
        return "INT8"
    return tensorrt.upper()


def config_problems(settings: dict[str, Any]) -> list[str]:
    """What the runtime would reject (it exits 2), said before any pod tries."""
    try:
        RuntimeSettings.model_validate(settings)
    except ValidationError as error:
        return [f"runtime config {line.strip()}" for line in describe_validation_error(error).splitlines()[1:]]
    return []


def config_file(settings: dict[str, Any]) -> str:
    return yaml.safe_dump(settings, sort_keys=True, default_flow_style=False)


def config_hash(text: str) -> str:
    """Goes on the pod template, so that a config change rolls the pods."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]
