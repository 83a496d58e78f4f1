"""The ConfigMap holding the runtime's config file."""

from __future__ import annotations

from typing import Any

from kubeserve.operator import naming
from kubeserve.operator.manifests.common import child_metadata
from kubeserve.operator.spec import InferenceService


def config_map(isvc: InferenceService, config_text: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(isvc, naming.config_map_name(isvc.name)),
        "data": {naming.CONFIG_FILE: config_text},
    }
