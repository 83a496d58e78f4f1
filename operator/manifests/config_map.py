"""The ConfigMap holding a revision's runtime config file (one per revision: a canary's settings never reach the
stable revision's pods)."""

from __future__ import annotations

from typing import Any

from kubeserve.operator import naming
from kubeserve.operator.manifests.common import child_metadata
from kubeserve.operator.spec import InferenceService


def config_map(isvc: InferenceService, config_text: str, revision: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(isvc, naming.revision_object_name(isvc.name, revision)),
        "data": {naming.CONFIG_FILE: config_text},
    }
