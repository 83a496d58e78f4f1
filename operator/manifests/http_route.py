"""The Gateway API HTTPRoute of a rollout with a traffic router: the revision Services with the rollout's weights;
and, for pods that serve gRPC, its GRPCRoute: the same revisions, the same weights, on their Services' gRPC port.

Its weights change with the rollout (``rollout.Decision.route``), not only with the spec, so the controller renders
it at every step; the spec alone says whether there is one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubeserve.operator import naming
from kubeserve.operator.manifests.common import child_metadata
from kubeserve.operator.spec import GatewayAPI, InferenceService

HTTP_ROUTE_API = "gateway.networking.k8s.io/v1"
GRPC_ROUTE_API = HTTP_ROUTE_API  # GA in Gateway API v1.1


def http_route(isvc: InferenceService, gateway: GatewayAPI, weights: Mapping[str, int]) -> dict[str, Any]:
    """``weights``: percent by revision; a revision at 0 stays listed (weight 0: no requests), so the route's
    shape does not change between steps."""
    return {
        "apiVersion": HTTP_ROUTE_API,
        "kind": "HTTPRoute",
        "metadata": child_metadata(isvc, naming.http_route_name(isvc.name)),
        "spec": _route_spec(isvc, gateway, weights, naming.SERVICE_PORT),
    }


def grpc_route(isvc: InferenceService, gateway: GatewayAPI, weights: Mapping[str, int]) -> dict[str, Any]:
    """The GRPCRoute beside ``http_route``, with the same weights, to the revision Services' gRPC port (named as the
    HTTPRoute is: the two are different kinds)."""
    return {
        "apiVersion": GRPC_ROUTE_API,
        "kind": "GRPCRoute",
        "metadata": child_metadata(isvc, naming.http_route_name(isvc.name)),
        "spec": _route_spec(isvc, gateway, weights, naming.GRPC_PORT),
    }


def _route_spec(isvc: InferenceService, gateway: GatewayAPI, weights: Mapping[str, int], port: int) -> dict[str, Any]:
    parent = gateway.parent_ref.model_dump(by_alias=True, exclude_none=True)
    backends = [
        {"name": naming.revision_object_name(isvc.name, revision), "port": port, "weight": weight}
        for revision, weight in sorted(weights.items())
    ]
    spec: dict[str, Any] = {"parentRefs": [parent], "rules": [{"backendRefs": backends}]}
    if gateway.hostnames:
        spec["hostnames"] = list(gateway.hostnames)
    return spec
