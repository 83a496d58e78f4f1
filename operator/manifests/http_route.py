"""The Gateway API HTTPRoute of a rollout with a traffic router: the revision Services with the rollout's weights.

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


def http_route(isvc: InferenceService, gateway: GatewayAPI, weights: Mapping[str, int]) -> dict[str, Any]:
    """``weights``: percent by revision; a revision at 0 stays listed (weight 0: no requests), so the route's
    shape does not change between steps."""
    parent = gateway.parent_ref.model_dump(by_alias=True, exclude_none=True)
    backends = [
        {"name": naming.revision_object_name(isvc.name, revision), "port": naming.SERVICE_PORT, "weight": weight}
        for revision, weight in sorted(weights.items())
    ]
    spec: dict[str, Any] = {"parentRefs": [parent], "rules": [{"backendRefs": backends}]}
    if gateway.hostnames:
        spec["hostnames"] = list(gateway.hostnames)
    return {
        "apiVersion": HTTP_ROUTE_API,
        "kind": "HTTPRoute",
        "metadata": child_metadata(isvc, naming.http_route_name(isvc.name)),
        "spec": spec,
    }
