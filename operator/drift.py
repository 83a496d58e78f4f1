"""Whether a child object the operator owns has drifted from what its InferenceService asks for: pure functions.

The desired manifest is computed from the owner's spec alone. It is compared as a subset of the live object
(desired ⊆ live), so that what the API server adds (defaults, status, managed fields) is not drift. Quantities
are compared by value, since the API server rewrites them in canonical form (``0.05`` comes back as ``50m``, a GPU
count ``1`` as ``"1"``): otherwise every status update of an HPA or a Deployment would look like drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

from kubernetes.utils import parse_quantity
from kubeserve.operator.manifests import Children

DELETED = "DELETED"  # a watch event's type (kopf gives None for objects found by listing)


def contains(live: Any, desired: Any, path: tuple[str, ...] = ()) -> bool:
    """Every field of ``desired`` is in ``live`` with the same value; lists match item by item."""
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(
            key in live and contains(live[key], value, (*path, key)) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(live) == len(desired)
            and all(contains(item, wanted, path) for item, wanted in zip(live, desired, strict=True))
        )
    return bool(live == desired) or (_holds_quantity(path) and _same_quantity(live, desired))


def _holds_quantity(path: tuple[str, ...]) -> bool:
    # Resource amounts (containers' limits and requests), an HPA's metric targets and its scaling tolerance.
    return (
        path[-2:-1] in (("limits",), ("requests",))
        or path[-2:]
        in (
            ("target", "averageValue"),
            ("target", "value"),
        )
        or path[-1:] == ("tolerance",)
    )


def _same_quantity(live: Any, desired: Any) -> bool:
    try:
        return bool(parse_quantity(live) == parse_quantity(desired))
    except (ValueError, TypeError):
        return False


class Repair(Enum):
    ROUTE = "route"  # apply the HTTPRoute again
    CHILDREN = "children"  # apply every child again


def repair(
    event_type: str | None,
    kind: str,
    child: Mapping[str, Any],
    children: Children | None,
    route: Mapping[str, Any] | None,
) -> Repair | None:
    """What a child's watch event asks of the operator, if anything. ``children``: the owner's, None while its spec
    is invalid (nothing is applied, so nothing is repaired); ``route``: the HTTPRoute as last applied, if any."""
    if kind == "HTTPRoute" and route is not None:
        # Its weights are the rollout's, not the spec's: compared with the one last applied.
        return Repair.ROUTE if event_type == DELETED or not contains(child, route) else None
    if kind == "GRPCRoute" and route is not None:
        # The HTTPRoute's weights to the gRPC ports (manifests.http_route): compared with the HTTPRoute last applied.
        return Repair.ROUTE if event_type == DELETED or not _same_split(child, route) else None
    if children is None:
        return None
    return Repair.CHILDREN if needs_repair(event_type, kind, child, children) else None


def needs_repair(event_type: str | None, kind: str, child: Mapping[str, Any], plan: Children) -> bool:
    """Whether applying the owner's children again would change this child (``event_type`` as kopf gives it)."""
    name = (child.get("metadata") or {}).get("name")
    desired = next((m for m in plan.manifests if (m["kind"], m["metadata"]["name"]) == (kind, name)), None)
    if event_type == DELETED:
        return desired is not None  # an object the owner must not have (an HPA no longer wanted) may go
    if any((ref.kind, ref.name) == (kind, name) for ref in plan.absent):
        return True
    if desired is not None and kind == "Deployment":
        # A revision's replicas are the rollout's to set (from the replica total and the step), not the spec's.
        desired = {**desired, "spec": {key: value for key, value in desired["spec"].items() if key != "replicas"}}
    return desired is not None and not contains(child, desired)


def _same_split(grpc_route: Mapping[str, Any], route: Mapping[str, Any]) -> bool:
    """Whether a GRPCRoute sends to the HTTPRoute's parents and revisions with its weights."""

    def split(spec: Mapping[str, Any]) -> tuple[Any, ...]:
        rules = spec.get("rules") or [{}]
        backends = [(ref.get("name"), ref.get("weight")) for ref in rules[0].get("backendRefs") or []]
        return spec.get("parentRefs"), spec.get("hostnames"), len(rules), backends

    return split(grpc_route.get("spec") or {}) == split(route.get("spec") or {})
