"""Metadata every child object carries: name, namespace, labels and the controller owner reference."""

from __future__ import annotations

from typing import Any

from kubeserve.operator import naming
from kubeserve.operator.spec import InferenceService


def owner_reference(isvc: InferenceService) -> dict[str, Any] | None:
    """None before the API server has given the object a uid (``render`` of a local file)."""
    if isvc.metadata.uid is None:
        return None
    return {
        "apiVersion": naming.API_VERSION,
        "kind": naming.KIND,
        "name": isvc.name,
        "uid": isvc.metadata.uid,
        # The garbage collector deletes the children with it; foreground deletion waits for them.
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(isvc: InferenceService, name: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": isvc.namespace,
        "labels": naming.common_labels(isvc.name),
    }
    reference = owner_reference(isvc)
    if reference is not None:
        metadata["ownerReferences"] = [reference]
    return metadata
