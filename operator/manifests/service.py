"""The Services in front of the runtime pods, port 80 (``naming.SERVICE_PORT``) to their ``http`` port and 8001
(``naming.GRPC_PORT``) to their ``grpc`` port, as far as the pods serve each protocol: the InferenceService's (every
revision's ready pods) and one per revision. The gRPC port says it speaks HTTP/2 in clear text (``appProtocol:
kubernetes.io/h2c``), for gateways and meshes that route by it."""

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
            "ports": service_ports(isvc),
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
            "ports": service_ports(isvc),
        },
    }


def service_ports(isvc: InferenceService) -> list[dict[str, Any]]:
    protocols = isvc.spec.runtime.protocols
    ports: list[dict[str, Any]] = []
    if "http" in protocols:
        ports.append({"name": "http", "port": naming.SERVICE_PORT, "targetPort": "http", "protocol": "TCP"})
    if "grpc" in protocols:
        ports.append(
            {
                "name": "grpc",
                "port": naming.GRPC_PORT,
                "targetPort": "grpc",
                "protocol": "TCP",
                "appProtocol": "kubernetes.io/h2c",
            }
        )
    return ports
