"""kopf peering, only where its objects exist: otherwise the operator works alone and says how to turn peering on.

With peering, kopf pauses every watch until the named peering object exists, and says why only at debug level:
an operator started without the object would idle, silently, forever.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kubeserve.operator.settings import OperatorSettings, env_name

if TYPE_CHECKING:  # the API client is heavy to import
    from kubeserve.operator.cluster import Cluster

# kopf's peering resources (crds/kopf-peering.yaml).
API_VERSION = "kopf.dev/v1"
CLUSTER_KIND, CLUSTER_PLURAL = "ClusterKopfPeering", "clusterkopfpeerings"
NAMESPACED_KIND, NAMESPACED_PLURAL = "KopfPeering", "kopfpeerings"

# A namespace name (DNS-1123 label); anything else in the namespace list is one of kopf's glob patterns.
_NAMESPACE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@dataclass(frozen=True)
class PeeringObject:
    kind: str
    plural: str
    name: str
    namespace: str | None

    def __str__(self) -> str:
        where = f" in namespace {self.namespace}" if self.namespace else ""
        return f"{self.kind} {self.name!r}{where}"


def needed(settings: OperatorSettings) -> list[PeeringObject] | None:
    """The peering objects kopf waits for; None when a namespace pattern makes them unknowable in advance."""
    if settings.clusterwide:
        return [PeeringObject(CLUSTER_KIND, CLUSTER_PLURAL, settings.peering_name, None)]
    if not all(_NAMESPACE_NAME.fullmatch(namespace) for namespace in settings.namespaces):
        return None
    return [
        PeeringObject(NAMESPACED_KIND, NAMESPACED_PLURAL, settings.peering_name, namespace)
        for namespace in settings.namespaces
    ]


async def why_standalone(cluster: Cluster, settings: OperatorSettings) -> str | None:
    """None when peering can work; otherwise, for a warning, why it cannot and how to enable it.

    kopf pauses the whole operator while any one of its peering objects is missing, so every one must exist.
    """
    on_purpose = f"To run standalone on purpose, set {env_name('standalone')}=true (--standalone)."
    objects = needed(settings)
    if objects is None:
        return (
            "peering is off, so this replica works alone, as would any other: with namespace patterns, the "
            f"KopfPeering {settings.peering_name!r} each matching namespace needs cannot be checked. To enable "
            f"peering, name the namespaces. {on_purpose}"
        )
    missing = [obj for obj in objects if not await cluster.exists(API_VERSION, obj.plural, obj.name, obj.namespace)]
    if not missing:
        return None
    return (
        f"peering is off, so this replica works alone, as would any other: no {', no '.join(map(str, missing))} "
        f"({API_VERSION}). To enable peering, create {'it' if len(missing) == 1 else 'them'} (the Helm chart does; "
        f"kopf's CRDs are in crds/kopf-peering.yaml). {on_purpose}"
    )
