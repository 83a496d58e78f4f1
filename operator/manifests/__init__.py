"""Pure builders: an InferenceService (and the operator's settings) in, the child manifests out."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from kubeserve.operator import naming
from kubeserve.operator.manifests.autoscaler import autoscaler
from kubeserve.operator.manifests.config_map import config_map
from kubeserve.operator.manifests.deployment import (
    container_resources,
    deployment,
    fetched_files_limit,
    runtime_image,
)
from kubeserve.operator.manifests.http_route import GRPC_ROUTE_API, HTTP_ROUTE_API
from kubeserve.operator.manifests.keda import (
    INTERCEPTOR_ROUTE_API,
    SCALED_OBJECT_API,
    cold_start_service,
    cold_start_url,
    interceptor_route,
    scaled_object,
)
from kubeserve.operator.manifests.service import revision_service, service
from kubeserve.operator.object_ref import ObjectRef
from kubeserve.operator.runtime_config import config_file, config_hash, runtime_settings
from kubeserve.operator.settings import OperatorSettings
from kubeserve.operator.spec import InferenceService


@dataclass(frozen=True)
class Children:
    """What the spec asks for: the objects to apply, in order (config before the pods that mount it), and what
    must not exist. ``revision`` names the revision the spec describes (``naming.revision_name``): its ConfigMap,
    Service and Deployment are ``NAME-<revision>``, and the rollout gives that Deployment its replicas (rendered
    here with the whole total). ``config_hash`` is the runtime config file's, which the revision's pods carry;
    ``url`` is where callers reach the model."""

    manifests: list[dict[str, Any]]
    absent: list[ObjectRef] = field(default_factory=list)
    config_hash: str = ""
    url: str = ""
    revision: str = ""
    version: str = ""

    def revision_objects(self) -> list[dict[str, Any]]:
        """The wanted revision's own objects (the ones named ``NAME-<revision>``)."""
        return [
            manifest
            for manifest in self.manifests
            if manifest["metadata"]["name"]
            == naming.revision_object_name(manifest["metadata"]["labels"][naming.LABEL_ISVC], self.revision)
        ]

    def with_replicas(self, replicas: int, *, adopted: bool = False) -> list[dict[str, Any]]:
        """The manifests to apply, the revision's Deployment with ``replicas``; with ``adopted`` (an earlier
        Deployment serves this revision) without the revision's own objects, so its pods are not restarted."""
        own = self.revision_objects()
        result = []
        for manifest in self.manifests:
            if manifest in own and adopted:
                continue
            if manifest in own and manifest["kind"] == "Deployment":
                manifest = {**manifest, "spec": {**manifest["spec"], "replicas": replicas}}
            result.append(manifest)
        return result


def revision_digest(isvc: InferenceService, settings: OperatorSettings, config_digest: str) -> str:
    """Everything that makes a revision: the model, the runtime's template (image, resources, scheduling, env, the
    operator's OTEL_* exporter settings, never its pod's name) and its config file. Not the replicas, autoscaling or
    rollout settings, which change no pod."""
    identity: dict[str, Any] = {
        "config": config_digest,
        # Not spec.model.size: it feeds the memory plan and the fetched files' bound, and what those change in a pod
        # is below.
        "model": isvc.spec.model.model_dump(mode="json", by_alias=True, exclude={"size"}),
        "runtime": isvc.spec.runtime.model_dump(mode="json", by_alias=True),
        "image": runtime_image(isvc, settings),
        "imagePullPolicy": isvc.spec.runtime.image_pull_policy or settings.image_pull_policy,
    }
    default_memory = container_resources(isvc).get("requests", {}).get("memory")
    if "memory" not in isvc.spec.runtime.resources.requests and default_memory is not None:
        identity["defaultMemoryRequest"] = default_memory  # the estimate, as the pods' request
    if (fetched := fetched_files_limit(isvc)) is not None:
        identity["fetchedFilesLimit"] = fetched  # the fetched files' emptyDir sizeLimit and --max-bytes
    if settings.otel_env:  # tracing's variables, which the pods get; none: the revisions of an operator without them
        identity["otelEnv"] = settings.otel_env
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def children(isvc: InferenceService, settings: OperatorSettings) -> Children:
    config_text = config_file(runtime_settings(isvc))
    digest = config_hash(config_text)
    version = isvc.spec.model.version
    revision = naming.revision_name(version, revision_digest(isvc, settings, digest), isvc_name=isvc.name)
    manifests = [
        config_map(isvc, config_text, revision),
        service(isvc),
        revision_service(isvc, revision),
        deployment(isvc, settings, digest, revision, isvc.replicas),
    ]
    autoscaling = isvc.spec.autoscaling
    engine = autoscaling.engine if autoscaling is not None else None
    url = naming.service_url(isvc.name, isvc.namespace)
    if autoscaling is not None and engine == "hpa":
        manifests.append(autoscaler(isvc, autoscaling))
    if autoscaling is not None and engine == "keda":
        manifests.append(scaled_object(isvc, autoscaling, settings))
        if autoscaling.scales_to_zero:
            manifests += [interceptor_route(isvc), cold_start_service(isvc, settings)]
            url = cold_start_url(isvc, settings)
    wanted = {(manifest["kind"], manifest["metadata"]["name"]) for manifest in manifests}
    if isvc.spec.rollout.traffic_routing is not None:  # rendered with the rollout's weights (http_route)
        wanted.add(("HTTPRoute", naming.http_route_name(isvc.name)))
        if "grpc" in isvc.spec.runtime.protocols:
            wanted.add(("GRPCRoute", naming.http_route_name(isvc.name)))
    absent = [ref for ref in _optional_objects(isvc) if (ref.kind, ref.name) not in wanted]
    return Children(manifests, absent, digest, url, revision, version)


def revision_objects(namespace: str, isvc_name: str, revision: str, *, legacy: bool = False) -> list[ObjectRef]:
    """What a revision consists of, to delete it: its Deployment, Service and ConfigMap; for the Deployment of an
    InferenceService created before revisions (``legacy``), that Deployment and its ConfigMap (its Service is the
    InferenceService's own, which stays), and the Service a traffic router needed for it."""
    if legacy:
        return [
            ObjectRef("apps/v1", "Deployment", namespace, naming.legacy_deployment_name(isvc_name)),
            ObjectRef("v1", "ConfigMap", namespace, naming.legacy_config_map_name(isvc_name)),
            # Made only for a traffic router (deleted when it exists).
            ObjectRef("v1", "Service", namespace, naming.revision_object_name(isvc_name, revision)),
        ]
    name = naming.revision_object_name(isvc_name, revision)
    return [
        ObjectRef("apps/v1", "Deployment", namespace, name),
        ObjectRef("v1", "Service", namespace, name),
        ObjectRef("v1", "ConfigMap", namespace, name),
    ]


def _optional_objects(isvc: InferenceService) -> list[ObjectRef]:
    """Every object an autoscaling engine or a traffic router may have had the operator create: those no longer
    wanted are deleted."""
    name, namespace = isvc.name, isvc.namespace
    return [
        ObjectRef("autoscaling/v2", "HorizontalPodAutoscaler", namespace, naming.hpa_name(name)),
        ObjectRef(SCALED_OBJECT_API, "ScaledObject", namespace, naming.scaled_object_name(name)),
        ObjectRef(INTERCEPTOR_ROUTE_API, "InterceptorRoute", namespace, naming.interceptor_route_name(name)),
        ObjectRef("v1", "Service", namespace, naming.cold_start_service_name(name)),
        ObjectRef(HTTP_ROUTE_API, "HTTPRoute", namespace, naming.http_route_name(name)),
        ObjectRef(GRPC_ROUTE_API, "GRPCRoute", namespace, naming.http_route_name(name)),
    ]
