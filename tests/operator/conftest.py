"""Fixtures for the operator's tests: the CRD as a validator, sample objects, and an in-memory cluster.

The cluster is the project's in-memory Kubernetes API server (bench/apiserver.py, which ``make bench-operator``
runs too) on 127.0.0.1, in the test's event loop, keeping every request for the tests to inspect. The real kopf
operator (the package's handlers) runs against it, with looptime's fake clock, so that retries, back-offs and idle
periods take no real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import re
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import celpy
import jsonschema
import kopf
import pytest
import yaml

# bench/ only (never the repository root, which holds a folder named `operator`).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from apiserver import ApiServer, write_kubeconfig

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "inferenceservices.yaml"
KOPF_PEERING_CRDS_PATH = REPO / "crds" / "kopf-peering.yaml"
SAMPLES = REPO / "samples"
SCHEMAS = Path(__file__).parent / "schemas"
ISVC_RESOURCE = "serving.kubeserve.io/v1alpha1/inferenceservices"
DEPLOYMENTS = "apps/v1/deployments"
LABEL_ISVC = "serving.kubeserve.io/inferenceservice"
LABEL_REVISION = "serving.kubeserve.io/revision"


# --- The CRD as a validator (structural schema -> JSON schema, defaults, CEL rules with celpy) ---------------


class CrdValidator:
    """Does what the API server does with an object of the CRD: default it, validate it, run its CEL rules."""

    def __init__(self, crd: Mapping[str, Any]) -> None:
        (version,) = crd["spec"]["versions"]
        self.schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
        self._validator = jsonschema.Draft4Validator(_json_schema(self.schema))
        self._cel = celpy.Environment()
        self._programs: dict[str, celpy.Runner] = {}

    def defaulted(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        result = copy.deepcopy(dict(obj))
        _apply_defaults(self.schema, result)
        return result

    def errors(self, obj: Mapping[str, Any]) -> list[str]:
        """Problems as ``path: message``; empty when the API server would accept the object."""
        obj = self.defaulted(obj)
        problems = []
        for error in sorted(self._validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
            path = [str(part) for part in error.absolute_path]
            if error.validator == "required":  # reported at the missing field, as the API server does
                path.append(error.message.split("'")[1])
                problems.append(f"{'.'.join(path)}: Required value")
            else:
                problems.append(f"{'.'.join(path)}: {error.message}")
        if problems:  # CEL rules assume well-typed data, as they do in the API server
            return problems
        return list(self._rules(self.schema, obj, ""))

    def _rules(self, schema: Mapping[str, Any], value: Any, path: str) -> Iterator[str]:
        for rule in schema.get("x-kubernetes-validations", []):
            if not self._holds(rule["rule"], value):
                where = path + rule.get("fieldPath", "")
                yield f"{where.lstrip('.')}: {' '.join(rule['message'].split())}"
        if isinstance(value, dict):
            for key, sub in (schema.get("properties") or {}).items():
                if key in value:
                    yield from self._rules(sub, value[key], f"{path}.{key}")
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict):
                for key, item in value.items():
                    yield from self._rules(extra, item, f"{path}.{key}")
        if isinstance(value, list) and isinstance(schema.get("items"), dict):
            for index, item in enumerate(value):
                yield from self._rules(schema["items"], item, f"{path}[{index}]")

    def _holds(self, rule: str, value: Any) -> bool:
        if rule not in self._programs:
            self._programs[rule] = self._cel.program(self._cel.compile(rule))
        result = self._programs[rule].evaluate({"self": celpy.json_to_cel(value)})
        if not isinstance(result, celpy.celtypes.BoolType):
            raise AssertionError(f"CEL rule {rule!r} did not evaluate to a bool: {result!r}")
        return bool(result)


def _json_schema(schema: Mapping[str, Any], *, metadata: bool = False) -> dict[str, Any]:
    """OpenAPI v3 structural schema -> JSON schema draft 4 (its exclusiveMinimum is OpenAPI's boolean one).

    Unknown fields are errors unless preserved, as with kubectl's (default) strict field validation; metadata
    is the API server's and only ever restricted (name), never closed.
    """
    result: dict[str, Any] = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if "properties" in schema:
        result["properties"] = {
            key: _json_schema(sub, metadata=key == "metadata") for key, sub in schema["properties"].items()
        }
        closed = not metadata and not schema.get("x-kubernetes-preserve-unknown-fields")
        if closed and "additionalProperties" not in schema:
            result["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        result["additionalProperties"] = _json_schema(schema["additionalProperties"])
    if isinstance(schema.get("items"), dict):
        result["items"] = _json_schema(schema["items"])
    if schema.get("x-kubernetes-int-or-string"):
        result.pop("type", None)
    return result


def _apply_defaults(schema: Mapping[str, Any], value: Any) -> None:
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                _apply_defaults(sub, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _apply_defaults(schema["items"], item)


@pytest.fixture(scope="session")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


@pytest.fixture(scope="session")
def crd_validator(crd: dict[str, Any]) -> CrdValidator:
    return CrdValidator(crd)


@pytest.fixture(scope="session")
def vendored_crds() -> dict[str, dict[str, Any]]:
    """Other projects' CRDs the operator renders objects of (vendored in schemas/, from KEDA's, its HTTP add-on's and
    Gateway API's repositories), by kind."""
    return {
        kind: yaml.safe_load((SCHEMAS / filename).read_text())
        for kind, filename in [
            ("ScaledObject", "keda.sh_scaledobjects.yaml"),
            ("InterceptorRoute", "http.keda.sh_interceptorroutes.yaml"),
            ("HTTPRoute", "gateway.networking.k8s.io_httproutes.yaml"),
            ("GRPCRoute", "gateway.networking.k8s.io_grpcroutes.yaml"),
        ]
    }


@pytest.fixture(scope="session")
def crd_schemas(vendored_crds: dict[str, dict[str, Any]]) -> dict[str, CrdValidator]:
    """The vendored CRDs as validators, by kind."""
    return {kind: CrdValidator(crd) for kind, crd in vendored_crds.items()}


@pytest.fixture(scope="session")
def samples() -> dict[str, dict[str, Any]]:
    """Every sample manifest, by file name without the extension."""
    return {path.stem: yaml.safe_load(path.read_text()) for path in sorted(SAMPLES.glob("*.yaml"))}


@pytest.fixture
def isvc_factory() -> Callable[..., dict[str, Any]]:
    """An InferenceService body as the API server returns it (uid, generation), with spec overrides."""

    def make(name: str = "mlp", namespace: str = "ml", generation: int = 1, **spec: Any) -> dict[str, Any]:
        body_spec = {"model": {"version": "1", "uri": "file:///opt/kubeserve/samples/mlp.onnx"}}
        body_spec.update(spec)
        return {
            "apiVersion": "serving.kubeserve.io/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "generation": generation},
            "spec": body_spec,
        }

    return make


# --- The in-memory cluster ---------------------------------------------------------------------------------


@pytest.fixture
async def cluster(
    crd: dict[str, Any], vendored_crds: dict[str, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ApiServer]:
    """The API server, serving the resources the operator uses (the built-in ones, the InferenceService CRD, KEDA's
    two and Gateway API's HTTPRoute) and keeping every request; $KUBECONFIG points at it."""
    async with ApiServer(crds=[crd, *vendored_crds.values()], record=True) as server:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url, token="test-token")
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))  # wins over any in-cluster service account
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield server


@pytest.fixture
def kopf_peering_crds(cluster: ApiServer) -> None:
    """What ``kubectl apply -f crds/kopf-peering.yaml`` does: kopf's peering resources served, no objects."""
    for peering_crd in yaml.safe_load_all(KOPF_PEERING_CRDS_PATH.read_text()):
        cluster.add_crd(peering_crd)


@pytest.fixture
def eventually(cluster: ApiServer) -> Callable[..., Any]:
    """``await eventually(predicate)``: re-checked after every request to the cluster, never after a fixed sleep;
    fails after ``within`` seconds of (fake) loop time."""

    async def wait(predicate: Callable[[], Any], within: float = 600) -> None:
        async with asyncio.timeout(within), cluster.changed:
            await cluster.changed.wait_for(lambda: _safely(predicate))

    return wait


def _safely(predicate: Callable[[], Any]) -> bool:
    try:
        return bool(predicate())
    except (KeyError, TypeError, IndexError):  # the object is not there (yet)
        return False


@pytest.fixture
def run_operator(cluster: ApiServer) -> Callable[..., contextlib.AbstractAsyncContextManager[None]]:
    """``async with run_operator():`` runs the real operator (all handlers) against the in-memory cluster."""
    from kubeserve.operator import handlers  # noqa: F401  (registers the handlers with kopf)
    from kubeserve.operator.settings import OperatorSettings

    @contextlib.asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[None]:
        values: dict[str, Any] = {
            "cpu_image": "kubeserve-runtime:test",
            "cuda_image": "kubeserve-runtime-cuda:test",
            "standalone": True,
            "api_timeout_seconds": 10,
            "metrics_port": 0,
        }
        settings = OperatorSettings(**{**values, **overrides})
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(
            kopf.operator(
                clusterwide=settings.clusterwide,
                namespaces=list(settings.namespaces),
                memo=kopf.Memo(settings=settings),
                settings=kopf.OperatorSettings(),
                stop_flag=stop,
                ready_flag=ready,
            )
        )
        await ready.wait()
        try:
            yield
        finally:
            stop.set()
            await task

    return run


@pytest.fixture
def objects(cluster: ApiServer) -> Callable[[str, str, str], dict[str, Any] | None]:
    """A copy of the stored object, or None when absent (or deleted)."""

    def get(resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        stored = cluster.get(resource, namespace, name)
        return None if stored is None else copy.deepcopy(dict(stored))

    return get


def condition_of(status: Mapping[str, Any] | None, kind: str) -> dict[str, Any]:
    for condition in (status or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return {}


@pytest.fixture
def condition() -> Callable[[Mapping[str, Any] | None, str], dict[str, Any]]:
    return condition_of


@pytest.fixture
def camel_to_snake() -> Callable[[str], str]:
    return lambda name: re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class Api:
    """Requests a user (kubectl) or a built-in controller would send, over HTTP.

    Each request gets a session of its own: kopf, when it stops, cancels every task started while it ran,
    which would leave a long-lived session with a broken connection pool.
    """

    USER_AGENT = "kubectl/test"

    def __init__(self, cluster: ApiServer) -> None:
        self._base = cluster.url

    async def _send(self, method: str, path: str, body: Any = None, **headers: str) -> dict[str, Any]:
        headers = {"User-Agent": self.USER_AGENT, **headers}
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self._base + path, json=body, headers=headers) as response,
        ):
            assert response.status in (200, 201), await response.text()
            return await response.json()

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._send("POST", path, body)

    async def patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._send("PATCH", path, body, **{"Content-Type": "application/merge-patch+json"})

    async def delete(self, path: str) -> None:
        await self._send("DELETE", path)

    async def apply(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``kubectl apply --server-side`` of a whole manifest."""
        return await self._send(
            "PATCH", f"{path}?fieldManager=kubectl", body, **{"Content-Type": "application/apply-patch+yaml"}
        )

    async def scale(self, path: str, replicas: int) -> dict[str, Any]:
        """``kubectl scale --replicas``, which the HPA does too: a merge patch of the scale subresource."""
        return await self.patch(f"{path}/scale", {"spec": {"replicas": replicas}})


@pytest.fixture
def api(cluster: ApiServer) -> Api:
    return Api(cluster)


RevisionDeployments = Callable[[str, str], list[dict[str, Any]]]


@pytest.fixture
def revision_deployments(cluster: ApiServer) -> RevisionDeployments:
    """Every revision Deployment of an InferenceService, as copies, by name."""

    def found(namespace: str, isvc: str) -> list[dict[str, Any]]:
        deployments = [copy.deepcopy(dict(d)) for d in cluster.labelled(DEPLOYMENTS, namespace, LABEL_ISVC, isvc)]
        return sorted(deployments, key=lambda deployment: deployment["metadata"]["name"])

    return found


@pytest.fixture
def deployment_of(
    revision_deployments: RevisionDeployments, objects: Callable[[str, str, str], dict[str, Any] | None]
) -> Callable[[str, str], dict[str, Any] | None]:
    """The Deployment of the revision an InferenceService's status says it wants (its only one, before a status
    says), or None."""

    def wanted(namespace: str, isvc: str) -> dict[str, Any] | None:
        deployments = revision_deployments(namespace, isvc)
        owner = objects(ISVC_RESOURCE, namespace, isvc) or {}
        revision = ((owner.get("status") or {}).get("rollout") or {}).get("revision")
        if revision is None:
            return deployments[0] if len(deployments) == 1 else None
        return next((d for d in deployments if _template_revision(d) == revision), None)

    return wanted


def _template_revision(deployment: Mapping[str, Any]) -> str | None:
    return deployment["spec"]["template"]["metadata"]["labels"].get(LABEL_REVISION)


class DeploymentController:
    """Plays the Deployment controller and the kubelet: pods from the wanted revision's template, with a given
    status (``name`` is the InferenceService's)."""

    def __init__(self, api: Api, deployment_of: Callable[[str, str], dict[str, Any] | None]) -> None:
        self._api, self._deployment_of = api, deployment_of
        self._serial = itertools.count()

    async def run_pod(self, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        """The pod, created, then its status reported (a create ignores the status, as the API server does)."""
        deployment = self._deployment_of(namespace, name)
        assert deployment is not None, "no Deployment to make a pod from"
        template = deployment["spec"]["template"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-{next(self._serial)}",
                "namespace": namespace,
                "labels": template["metadata"]["labels"],
                "annotations": template["metadata"]["annotations"],
            },
            "spec": template["spec"],
        }
        pods = f"/api/v1/namespaces/{namespace}/pods"
        created = await self._api.create(pods, pod)
        return await self._api.patch(f"{pods}/{created['metadata']['name']}/status", {"status": dict(status)})

    async def report(self, namespace: str, name: str, *, replicas: int, ready: int, updated: int | None = None) -> None:
        """The wanted revision's Deployment status, as its controller reports it."""
        deployment = self._deployment_of(namespace, name)
        assert deployment is not None
        await self.report_deployment(namespace, deployment, replicas=replicas, ready=ready, updated=updated)

    async def report_deployment(
        self, namespace: str, deployment: Mapping[str, Any], *, replicas: int, ready: int, updated: int | None = None
    ) -> None:
        name = deployment["metadata"]["name"]
        status = {
            "observedGeneration": deployment["metadata"].get("generation", 1),
            "replicas": replicas,
            "updatedReplicas": replicas if updated is None else updated,
            "readyReplicas": ready,
            "availableReplicas": ready,
        }
        await self._api.patch(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}/status", {"status": status})


@pytest.fixture
def controller(api: Api, deployment_of: Callable[[str, str], dict[str, Any] | None]) -> DeploymentController:
    return DeploymentController(api, deployment_of)


# Pod statuses, as the kubelet reports them, for the failure modes the operator explains.
def _container(name: str, **state: Any) -> dict[str, Any]:
    return {"name": name, "ready": False, "restartCount": 3, "image": "kubeserve-runtime:test", **state}


POD_STATUSES: dict[str, dict[str, Any]] = {
    "serving": {
        "phase": "Running",
        "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
        "containerStatuses": [{**_container("runtime", state={"running": {}}), "ready": True, "restartCount": 0}],
    },
    "loading": {
        "phase": "Running",
        "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}],
        "containerStatuses": [_container("runtime", state={"running": {}}, restartCount=0)],
    },
    "unschedulable": {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
            }
        ],
    },
    "fetch_failed": {
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}],
        "initContainerStatuses": [
            _container(
                "fetch-model",
                state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting"}},
                lastState={
                    "terminated": {
                        "exitCode": 1,
                        "reason": "Error",
                        "message": "fetch https://models.example.com/m.onnx: HTTP 404 Not Found",
                    }
                },
            )
        ],
        "containerStatuses": [_container("runtime", state={"waiting": {"reason": "PodInitializing"}})],
    },
    "image_pull": {
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}],
        "containerStatuses": [
            _container(
                "runtime",
                state={
                    "waiting": {
                        "reason": "ImagePullBackOff",
                        "message": 'Back-off pulling image "kubeserve-runtime:nope"',
                    }
                },
            )
        ],
    },
    "load_failed": {
        "phase": "Running",
        "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}],
        "containerStatuses": [
            _container(
                "runtime",
                state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 1m20s restarting"}},
                lastState={
                    "terminated": {
                        "exitCode": 3,
                        "reason": "Error",
                        "message": "cannot load /models/model.onnx: Protobuf parsing failed",
                    }
                },
            )
        ],
    },
    "crash_loop": {
        "phase": "Running",
        "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}],
        "containerStatuses": [
            _container(
                "runtime",
                state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s restarting"}},
                lastState={"terminated": {"exitCode": 137, "reason": "OOMKilled", "message": ""}},
            )
        ],
    },
    "settings_rejected": {
        "phase": "Running",
        "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}],
        "containerStatuses": [
            _container(
                "runtime",
                state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                lastState={
                    "terminated": {
                        "exitCode": 2,
                        "reason": "Error",
                        "message": "kubeserve-runtime: invalid settings:\n  max_request_bytes: not an integer",
                    }
                },
            )
        ],
    },
    "config_error": {
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}],
        "initContainerStatuses": [
            _container(
                "fetch-model",
                state={"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "s3-creds" not found'}},
            )
        ],
    },
}


@pytest.fixture
def pod_statuses() -> dict[str, dict[str, Any]]:
    return copy.deepcopy(POD_STATUSES)
