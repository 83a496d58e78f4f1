"""The Services in front of the runtime pods, port 80 (``naming.SERVICE_PORT``) to their ``http`` port: the
InferenceService's (every revision's ready pods) and one per revision."""

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


def revision_service(isvc: InferenceService, revision: str) -> dict[str, Any]:
    """``NAME-<revision>``: one revision alone (tests, shadow traffic, debugging); the main Service spans them all."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(isvc, naming.revision_object_name(isvc.name, revision)),
        "spec": {
            "type": "ClusterIP",
            "selector": {naming.LABEL_ISVC: isvc.name, naming.LABEL_REVISION: revision},
            "ports": [{"name": "http", "port": naming.SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }
