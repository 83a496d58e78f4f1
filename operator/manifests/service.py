"""The Service in front of the runtime pods: port 80 (``naming.SERVICE_PORT``) to their ``http`` port."""

from __future__ import annotations

from typing import Any

from kubeserve.operator import naming
from kubeserve.operator.manifests.common import child_metadata
from kubeserve.operator.spec import InferenceService


def service(isvc: InferenceService) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(isvc, naming.service_name(isvc.name)),
        "spec": {
            "type": "ClusterIP",
            # Only the InferenceService label: a later revision's pods join the same Service.
            "selector": {naming.LABEL_ISVC: isvc.name},
            "ports": [{"name": "http", "port": naming.SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }
