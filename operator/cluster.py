"""The thin API layer: server-side apply, a status patch, delete, whether an object exists; every failure sorted
into "retry later" (with the API server's own ``Retry-After`` when it sends one) or "rejected".

Built on the official client's asyncio flavour (``kubernetes.aio``), so that it shares kopf's event loop.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes.aio import client, config
from kubeserve.operator import naming
from kubeserve.operator.object_ref import ObjectRef

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"

# kind -> (typed API, method suffix): the four kinds the operator owns.
_APIS: dict[tuple[str, str], tuple[type, str]] = {
    ("v1", "ConfigMap"): (client.CoreV1Api, "config_map"),
    ("v1", "Service"): (client.CoreV1Api, "service"),
    ("apps/v1", "Deployment"): (client.AppsV1Api, "deployment"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"): (client.AutoscalingV2Api, "horizontal_pod_autoscaler"),
}
# kind -> plural: the custom resources the operator owns (autoscaling engine keda, Gateway API routing), through the
# generic API.
_CUSTOM_PLURALS: dict[tuple[str, str], str] = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobjects",
    ("http.keda.sh/v1beta1", "InterceptorRoute"): "interceptorroutes",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproutes",
    ("gateway.networking.k8s.io/v1", "GRPCRoute"): "grpcroutes",
}

# Worth retrying: conflicts, throttling, the API server's own trouble.
RETRYABLE_STATUSES = frozenset({409, 429, 500, 502, 503, 504})


class ClusterError(Exception):
    """An API request failed; ``retryable`` says whether the same request may succeed later."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        # The API server's Retry-After (a 429 from API Priority and Fairness, a 503): the least wait before a retry.
        self.retry_after = retry_after


class Cluster:
    """The operator's own requests; kopf does its watching and posts the Events itself."""

    def __init__(self, api_client: client.ApiClient, *, timeout: float) -> None:
        self._api_client = api_client
        self._timeout = timeout

    @classmethod
    async def connect(cls, *, request_timeout: float) -> Cluster:
        """$KUBECONFIG when set, else the pod's service account, else ~/.kube/config (as the login handler)."""
        configuration = client.Configuration()
        # Read $KUBECONFIG now: the client library reads it once, at import.
        path = os.environ.get("KUBECONFIG")
        if path is None:
            try:
                config.load_incluster_config(client_configuration=configuration)
            except config.ConfigException:
                path = str(Path("~/.kube/config").expanduser())  # noqa: ASYNC240
            else:
                return cls(client.ApiClient(configuration), timeout=request_timeout)
        if not Path(path).is_file():  # noqa: ASYNC240  (one stat at start)
            raise ClusterError(
                f"no cluster to talk to: not in a pod, and kubeconfig {path} does not exist", retryable=False
            )
        try:
            await config.load_kube_config(config_file=path, client_configuration=configuration, persist_config=False)
        except (config.ConfigException, OSError) as error:
            raise ClusterError(
                f"no cluster to talk to: not in a pod, and kubeconfig {path} is unusable: {error}", retryable=False
            ) from error
        return cls(client.ApiClient(configuration), timeout=request_timeout)

    async def close(self) -> None:
        await self._api_client.close()

    async def apply(self, manifest: Mapping[str, Any]) -> None:
        """Server-side apply as field manager ``kubeserve``, taking over fields others changed by hand."""
        metadata = manifest["metadata"]
        what = f"apply {manifest['kind']} {metadata['namespace']}/{metadata['name']}"
        options = {
            "field_manager": naming.FIELD_MANAGER,
            "force": True,
            "_content_type": APPLY_PATCH,
            "_request_timeout": self._timeout,
        }
        custom = _CUSTOM_PLURALS.get((manifest["apiVersion"], manifest["kind"]))
        if custom is not None:
            group, version = manifest["apiVersion"].split("/")
            api = client.CustomObjectsApi(self._api_client)
            request = api.patch_namespaced_custom_object_without_preload_content(
                group, version, metadata["namespace"], custom, metadata["name"], dict(manifest), **options
            )
        else:
            api, suffix = self._api(manifest["apiVersion"], manifest["kind"])
            patch = getattr(api, f"patch_namespaced_{suffix}_without_preload_content")
            request = patch(metadata["name"], metadata["namespace"], dict(manifest), **options)
        await self._call(what, request)

    async def patch_status(self, namespace: str, name: str, fields: Mapping[str, Any]) -> None:
        """Merge-patch these fields into an InferenceService's status (the status subresource)."""
        api = client.CustomObjectsApi(self._api_client)
        await self._call(
            f"patch status of {naming.KIND} {namespace}/{name}",
            api.patch_namespaced_custom_object_status_without_preload_content(
                naming.GROUP,
                naming.VERSION,
                namespace,
                naming.PLURAL,
                name,
                {"status": dict(fields)},
                _content_type=MERGE_PATCH,
                _request_timeout=self._timeout,
            ),
        )

    async def scale(self, namespace: str, name: str, replicas: int) -> None:
        """Set an InferenceService's spec.replicas through its scale subresource, as ``kubectl scale`` does."""
        api = client.CustomObjectsApi(self._api_client)
        await self._call(
            f"scale {naming.KIND} {namespace}/{name}",
            api.patch_namespaced_custom_object_scale_without_preload_content(
                naming.GROUP,
                naming.VERSION,
                namespace,
                naming.PLURAL,
                name,
                {"spec": {"replicas": replicas}},
                _content_type=MERGE_PATCH,
                _request_timeout=self._timeout,
            ),
        )

    async def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        """Set a revision Deployment's replicas, leaving its template as it is (an earlier revision's, which the
        spec no longer describes)."""
        api = client.AppsV1Api(self._api_client)
        await self._call(
            f"scale Deployment {namespace}/{name} to {replicas}",
            api.patch_namespaced_deployment_without_preload_content(
                name,
                namespace,
                {"spec": {"replicas": replicas}},
                field_manager=naming.FIELD_MANAGER,
                _content_type=MERGE_PATCH,
                _request_timeout=self._timeout,
            ),
        )

    async def delete(self, ref: ObjectRef) -> bool:
        """Delete the object (its dependents in the background); False when it was not there."""
        options = {"propagation_policy": "Background", "_request_timeout": self._timeout}
        custom = _CUSTOM_PLURALS.get((ref.api_version, ref.kind))
        if custom is not None:
            group, version = ref.api_version.split("/")
            api = client.CustomObjectsApi(self._api_client)
            request = api.delete_namespaced_custom_object_without_preload_content(
                group, version, ref.namespace, custom, ref.name, **options
            )
        else:
            api, suffix = self._api(ref.api_version, ref.kind)
            request = getattr(api, f"delete_namespaced_{suffix}_without_preload_content")(
                ref.name, ref.namespace, **options
            )
        try:
            await self._call(f"delete {ref.kind} {ref.namespace}/{ref.name}", request, missing_ok=True)
        except _NotFound:
            return False
        return True

    async def exists(self, api_version: str, plural: str, name: str, namespace: str | None = None) -> bool:
        """Whether a custom object exists; False too when its resource is not served at all (no CRD)."""
        group, version = api_version.split("/")
        api = client.CustomObjectsApi(self._api_client)
        if namespace is None:
            what = f"get {plural} {name}"
            request = api.get_cluster_custom_object_without_preload_content(
                group, version, plural, name, _request_timeout=self._timeout
            )
        else:
            what = f"get {plural} {namespace}/{name}"
            request = api.get_namespaced_custom_object_without_preload_content(
                group, version, namespace, plural, name, _request_timeout=self._timeout
            )
        try:
            await self._call(what, request, missing_ok=True)
        except _NotFound:
            return False
        return True

    def _api(self, api_version: str, kind: str) -> Any:
        api_class, suffix = _APIS[api_version, kind]
        return api_class(self._api_client), suffix

    async def _call(self, what: str, request: Any, *, missing_ok: bool = False) -> None:
        # Responses are read raw: the operator needs their status, not the client's models of their bodies.
        try:
            response = await request
            try:
                body = await response.read()
            finally:
                response.release()
        except TimeoutError:
            raise ClusterError(f"{what}: no answer within {self._timeout:g}s", retryable=True) from None
        except aiohttp.ClientError as error:
            raise ClusterError(f"{what}: {error}", retryable=True) from error
        if 200 <= response.status < 300:
            return
        if response.status == 404 and missing_ok:
            raise _NotFound(what)
        message = _api_message(body) or response.reason or "error"
        raise ClusterError(
            f"{what}: {response.status} {message}",
            retryable=response.status in RETRYABLE_STATUSES,
            retry_after=_retry_after(response.headers.get("Retry-After")),
        )


class _NotFound(Exception):
    pass


def _api_message(body: bytes) -> str | None:
    """The API server's own words: the message of the Status object it answers errors with."""
    try:
        status = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()[:200] or None
    return str(status.get("message")) if isinstance(status, dict) and status.get("message") else None


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds, the only form the API server sends; None when absent or unreadable (an HTTP date)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and seconds >= 0 else None
