"""The runtime's config file for an InferenceService, checked by the runtime's own settings model."""

from __future__ import annotations

import hashlib
from typing import Any

import yaml
from kubeserve.operator import naming
from kubeserve.operator.model_source import model_source
from kubeserve.operator.spec import InferenceService
from kubeserve.runtime.config import RuntimeSettings, describe_validation_error
from pydantic import ValidationError


def runtime_settings(isvc: InferenceService) -> dict[str, Any]:
    """The flat mapping of ``RuntimeSettings`` names the runtime reads from its config file."""
    spec = isvc.spec
    runtime, batching = spec.runtime, spec.batching
    return {
        "model_path": model_source(spec.model).model_path,
        "model_name": isvc.model_name,
        "model_version": spec.model.version,
        "port": naming.HTTP_PORT,
        "max_batch_size": batching.max_batch_size,
        "max_queue_delay_microseconds": batching.max_queue_delay_microseconds,
        "preferred_batch_size": list(batching.preferred_batch_size),
        "max_queue_size": batching.max_queue_size,
        "default_timeout_microseconds": batching.default_timeout_microseconds,
        "instance_count": runtime.instance_count,
        "device": runtime.device or ("cuda" if isvc.wants_gpu else "cpu"),
        "intra_op_num_threads": runtime.intra_op_num_threads,
        "inter_op_num_threads": runtime.inter_op_num_threads,
        "allow_spinning": runtime.allow_spinning,
        "graph_optimization_level": runtime.graph_optimization_level,
        "drain_timeout_seconds": runtime.drain_timeout_seconds,
        "log_level": runtime.log_level,
    }


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
