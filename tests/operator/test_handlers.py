"""The real operator (every kopf handler) against an in-memory Kubernetes API (bench/apiserver.py), on looptime's
fake clock.

Each test drives the cluster the way users and built-in controllers would (POST/PATCH/DELETE over HTTP) and
waits for the state it expects, re-checked after every API request, never for a fixed time.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import pytest

# bench/ only (never the repository root, which holds a folder named `operator`).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from apiserver import Reply
from kubeserve.operator import peering
from kubeserve.operator.cluster import Cluster
from kubeserve.operator.settings import OperatorSettings

pytestmark = pytest.mark.looptime

NS = "ml"
ISVCS = "serving.kubeserve.io/v1alpha1/inferenceservices"
DEPLOYMENTS = "apps/v1/deployments"
CONFIGMAPS = "v1/configmaps"
SERVICES = "v1/services"
HPAS = "autoscaling/v2/horizontalpodautoscalers"
ISVC_PATH = f"/apis/serving.kubeserve.io/v1alpha1/namespaces/{NS}/inferenceservices"
DEPLOYMENT_PATH = f"/apis/apps/v1/namespaces/{NS}/deployments"


def applies(cluster, resource: str, name: str | None = None) -> list[dict]:
    """The bodies of the server-side applies the operator sent for one object, or for any of that resource."""
    patches = cluster.requests(method="PATCH", resource=resource, name=name)
    return [request.body for request in patches if "apply-patch" in request.headers.get("Content-Type", "")]


def events(cluster, reason: str) -> list[dict]:
    posted = cluster.requests(method="POST", resource="v1/events")
    return [request.body for request in posted if request.body.get("reason") == reason]


async def test_create_applies_children_owned_by_the_inference_service(
    api, run_operator, eventually, objects, deployment_of, isvc_factory, condition
):
    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory())
        await eventually(lambda: objects(ISVCS, NS, "mlp")["status"]["observedGeneration"] == 1)
    uid = objects(ISVCS, NS, "mlp")["metadata"]["uid"]

    # The revision's ConfigMap, Service and Deployment (NAME-<revision>), and the InferenceService's Service.
    revision = deployment_of(NS, "mlp")["metadata"]["name"]
    assert revision.startswith("mlp-1-")
    for resource, name in [(CONFIGMAPS, revision), (SERVICES, "mlp"), (SERVICES, revision), (DEPLOYMENTS, revision)]:
        child = objects(resource, NS, name)
        assert child is not None, f"{resource} {name} was not created"
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "serving.kubeserve.io/v1alpha1",
            "kind": "InferenceService",
            "name": "mlp",
            "uid": uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    assert objects(HPAS, NS, "mlp") is None  # fixed replicas: no HPA
    isvc = objects(ISVCS, NS, "mlp")
    # No timers and no deletion handler, so no finalizer: a deletion never waits for the operator.
    assert "finalizers" not in isvc["metadata"]
    assert isvc["status"]["url"] == "http://mlp.ml.svc.cluster.local"
    ready = condition(isvc["status"], "Ready")
    assert ready["status"] == "False"
    assert ready["reason"] in ("Pending", "ModelLoading")
    assert ready["observedGeneration"] == 1


async def test_status_turns_ready_when_a_pod_serves_the_model(
    api, run_operator, eventually, objects, deployment_of, isvc_factory, controller, pod_statuses, condition
):
    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory())
        await eventually(lambda: deployment_of(NS, "mlp"))
        await controller.run_pod(NS, "mlp", pod_statuses["loading"])
        await controller.report(NS, "mlp", replicas=1, ready=0)
        await eventually(
            lambda: condition(objects(ISVCS, NS, "mlp")["status"], "ModelLoaded")["reason"] == "ModelLoading"
        )

        await controller.run_pod(NS, "mlp", pod_statuses["serving"])
        await controller.report(NS, "mlp", replicas=1, ready=1)
        # From the pod's and the Deployment's watch events: no timer, so no fake time has to pass.
        await eventually(lambda: condition(objects(ISVCS, NS, "mlp")["status"], "Ready")["status"] == "True", within=1)

    status = objects(ISVCS, NS, "mlp")["status"]
    assert condition(status, "Ready")["reason"] == "Serving"
    assert "http://mlp.ml.svc.cluster.local/v2/models/mlp/infer" in condition(status, "Ready")["message"]
    assert condition(status, "ModelLoaded")["status"] == "True"
    assert condition(status, "RolloutComplete")["status"] == "True"
    assert (status["replicas"], status["readyReplicas"]) == (1, 1)


async def test_applying_again_at_start_changes_nothing(
    api, cluster, run_operator, eventually, objects, deployment_of, isvc_factory
):
    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory())
        await eventually(lambda: objects(ISVCS, NS, "mlp")["status"]["observedGeneration"] == 1)
        before = deployment_of(NS, "mlp")
        revision = before["metadata"]["name"]

    # The resync: a (re)started operator applies every InferenceService's children again, level-triggered.
    async with run_operator():
        await eventually(lambda: len(applies(cluster, DEPLOYMENTS, revision)) == 2)

    first, second = applies(cluster, DEPLOYMENTS, revision)
    assert first == second
    after = deployment_of(NS, "mlp")
    assert after["spec"] == before["spec"]
    assert after["metadata"]["labels"] == before["metadata"]["labels"]


async def test_a_new_model_version_is_a_new_revision_with_its_own_objects(
    api, run_operator, eventually, objects, deployment_of, revision_deployments, isvc_factory, condition
):
    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory())
        await eventually(lambda: objects(ISVCS, NS, "mlp")["status"]["observedGeneration"] == 1)
        old = deployment_of(NS, "mlp")

        await api.patch(f"{ISVC_PATH}/mlp", {"spec": {"model": {"version": "2"}}})
        await eventually(lambda: objects(ISVCS, NS, "mlp")["status"]["observedGeneration"] == 2)
        await eventually(lambda: len(revision_deployments(NS, "mlp")) == 2)
        new = deployment_of(NS, "mlp")

    labels = [d["spec"]["template"]["metadata"]["labels"] for d in (old, new)]
    assert [label["serving.kubeserve.io/version"] for label in labels] == ["1", "2"]
    revisions = [label["serving.kubeserve.io/revision"] for label in labels]
    assert revisions[0].startswith("1-") and revisions[1].startswith("2-")
    assert [d["metadata"]["name"] for d in (old, new)] == [f"mlp-{revision}" for revision in revisions]
    # Each revision mounts its own config file: the new settings never reach the old pods.
    assert "model_version: '2'" in objects(CONFIGMAPS, NS, new["metadata"]["name"])["data"]["runtime.yaml"]
    assert "model_version: '1'" in objects(CONFIGMAPS, NS, old["metadata"]["name"])["data"]["runtime.yaml"]
    status = objects(ISVCS, NS, "mlp")["status"]
    assert condition(status, "RolloutComplete")["status"] == "False"
    assert status["rollout"]["revision"] == revisions[1]


async def test_a_deleted_child_is_restored_from_its_watch_event_within_a_second(
    api, cluster, run_operator, eventually, objects, deployment_of, isvc_factory
):
    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory())
        await eventually(lambda: objects(ISVCS, NS, "mlp")["status"]["observedGeneration"] == 1)
        revision = deployment_of(NS, "mlp")["metadata"]["name"]

        # No timer is involved: the fake clock may not move past a second before each is back, applied again.
        for resource, name, path in [
            (SERVICES, "mlp", f"/api/v1/namespaces/{NS}/services/mlp"),
            (SERVICES, revision, f"/api/v1/namespaces/{NS}/services/{revision}"),
            (DEPLOYMENTS, revision, f"{DEPLOYMENT_PATH}/{revision}"),
            (CONFIGMAPS, revision, f"/api/v1/namespaces/{NS}/configmaps/{revision}"),
        ]:
            applied = len(applies(cluster, resource, name))
            await api.delete(path)
            await eventually(
                lambda r=resource, n=name, a=applied: objects(r, NS, n) and len(applies(cluster, r, n)) > a, within=1
            )

    assert objects(SERVICES, NS, "mlp")["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
        {"name": "grpc", "port": 8001, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"},
    ]


async def test_a_restarted_operator_repairs_what_changed_while_it_was_down(
    api, run_operator, eventually, objects, deployment_of, isvc_factory
):
    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory())
        await eventually(lambda: objects(ISVCS, NS, "mlp")["status"]["observedGeneration"] == 1)
        revision = deployment_of(NS, "mlp")["metadata"]["name"]

    await api.delete(f"{DEPLOYMENT_PATH}/{revision}")  # while no operator runs
    async with run_operator():  # resumes every InferenceService it finds
        await eventually(lambda: deployment_of(NS, "mlp"))


async def test_a_hand_edited_child_is_restored_from_its_watch_event_within_a_second(
    api, run_operator, eventually, objects, deployment_of, isvc_factory
):
    def image() -> str:
        return deployment_of(NS, "mlp")["spec"]["template"]["spec"]["containers"][0]["image"]

    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory())
        await eventually(lambda: objects(ISVCS, NS, "mlp")["status"]["observedGeneration"] == 1)
        edited = deployment_of(NS, "mlp")["spec"]["template"]["spec"]["containers"]
        edited[0]["image"] = "someone/else:latest"
        revision = deployment_of(NS, "mlp")["metadata"]["name"]
        await api.patch(f"{DEPLOYMENT_PATH}/{revision}", {"spec": {"template": {"spec": {"containers": edited}}}})
        assert image() == "someone/else:latest"
        await eventually(lambda: image() == "kubeserve-runtime:test", within=1)

        await api.patch(
            f"/api/v1/namespaces/{NS}/services/mlp",
            {"spec": {"selector": {"serving.kubeserve.io/inferenceservice": "x"}}},
        )
        await eventually(
            lambda: (
                objects(SERVICES, NS, "mlp")["spec"]["selector"] == {"serving.kubeserve.io/inferenceservice": "mlp"}
            ),
            within=1,
        )


async def test_deleting_leaves_the_children_to_the_garbage_collector(
    api, cluster, run_operator, eventually, objects, deployment_of, isvc_factory
):
    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory(autoscaling={"maxReplicas": 3}))
        await eventually(lambda: objects(HPAS, NS, "mlp") and deployment_of(NS, "mlp"))
        uid = objects(ISVCS, NS, "mlp")["metadata"]["uid"]

        await api.delete(f"{ISVC_PATH}/mlp")
        assert objects(ISVCS, NS, "mlp") is None  # no finalizer: gone at once, the operator has no say

    # Their owner references make them the garbage collector's (which the in-memory API server lacks): the operator
    # deletes nothing.
    operator_deletes = [r for r in cluster.requests(method="DELETE") if r.headers.get("User-Agent") != api.USER_AGENT]
    assert operator_deletes == []
    revision = deployment_of(NS, "mlp")["metadata"]["name"]
    for resource, name in [(HPAS, "mlp"), (DEPLOYMENTS, revision), (SERVICES, "mlp"), (CONFIGMAPS, revision)]:
        (owner,) = objects(resource, NS, name)["metadata"]["ownerReferences"]
        assert (owner["uid"], owner["controller"]) == (uid, True)


async def test_conflicts_server_errors_and_timeouts_are_retried(
    api, cluster, run_operator, eventually, objects, deployment_of, isvc_factory, condition
):
    # The first three applies of the Deployment fail: 409, 500, then no answer within the timeout.
    for reply in (Reply(409), Reply(500), Reply(504, delay=3600)):
        cluster.inject(reply, times=1, method="PATCH", resource=DEPLOYMENTS)

    async with run_operator(api_timeout_seconds=10):
        await api.create(ISVC_PATH, isvc_factory())
        await eventually(lambda: objects(ISVCS, NS, "mlp")["status"]["observedGeneration"] == 1)
        # Checked while the operator runs: a timer that fires as it stops may find the API server gone.
        recovered = objects(ISVCS, NS, "mlp")["status"]

    assert len(applies(cluster, DEPLOYMENTS, deployment_of(NS, "mlp")["metadata"]["name"])) >= 4
    assert deployment_of(NS, "mlp")["spec"]["template"]["spec"]["containers"][0]["image"] == ("kubeserve-runtime:test")
    assert condition(recovered, "RolloutComplete")["reason"] != "ApplyFailed"
    assert condition(recovered, "Ready")["reason"] != "ApplyFailed"
    # A first failure, which may pass on its retry (a 409 is routine), is no event; one that survived a retry is.
    announced = [event["message"] for event in events(cluster, "ApplyFailed")]
    assert (
        announced[0] == f"apply Deployment ml/{deployment_of(NS, 'mlp')['metadata']['name']}: 500 Internal Server Error"
    )
    assert not [message for message in announced if "409" in message]


async def test_an_apply_that_keeps_failing_shows_in_the_status_with_its_attempts_then_recovers(
    api, cluster, run_operator, eventually, objects, isvc_factory, condition
):
    range_full = Reply(
        500,
        body={
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "code": 500,
            "reason": "InternalError",
            "message": "Internal error occurred: failed to allocate a serviceIP: range is full",
        },
    )
    cluster.inject(range_full, times=3, method="PATCH", resource=SERVICES)

    def ready() -> dict:
        return condition(objects(ISVCS, NS, "mlp")["status"], "Ready")

    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory())
        await eventually(lambda: "attempt 3 failed" in ready()["message"])
        failing = objects(ISVCS, NS, "mlp")["status"]
        await eventually(lambda: objects(ISVCS, NS, "mlp")["status"].get("observedGeneration") == 1)
        recovered = objects(ISVCS, NS, "mlp")["status"]

    shown = condition(failing, "Ready")
    assert (shown["status"], shown["reason"]) == ("False", "ApplyFailed")
    assert shown["message"].startswith(
        "apply Service ml/mlp: 500 Internal error occurred: failed to allocate a serviceIP: range is full (attempt 3"
    )
    assert shown["observedGeneration"] == 1
    assert condition(failing, "RolloutComplete")["reason"] == "ApplyFailed"
    assert "observedGeneration" not in failing  # not acted on yet
    assert condition(recovered, "Ready")["reason"] in ("Pending", "ModelLoading")
    assert condition(recovered, "RolloutComplete")["reason"] != "ApplyFailed"
    (event,) = events(cluster, "ApplyFailed")  # once it survived a retry, and once only
    assert "range is full" in event["message"]


async def test_a_refused_apply_is_reported_with_the_api_servers_message(
    api, cluster, run_operator, eventually, objects, isvc_factory, condition
):
    refusal = Reply(
        403,
        body={
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "code": 403,
            "reason": "Forbidden",
            "message": 'deployments.apps "mlp" is forbidden: User "system:serviceaccount:x:y" cannot patch',
        },
    )
    cluster.inject(refusal, method="PATCH", resource=DEPLOYMENTS)

    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory())
        await eventually(lambda: condition(objects(ISVCS, NS, "mlp")["status"], "Ready")["reason"] == "ApplyFailed")

    ready = condition(objects(ISVCS, NS, "mlp")["status"], "Ready")
    assert "403" in ready["message"] and "cannot patch" in ready["message"]
    assert events(cluster, "ApplyFailed")


async def test_an_invalid_spec_is_reported_and_nothing_is_applied(
    api, cluster, run_operator, eventually, objects, isvc_factory, condition
):
    invalid = isvc_factory(runtime={"resources": {"requests": {"nvidia.com/gpu": 1}}})
    async with run_operator():
        await api.create(ISVC_PATH, invalid)
        await eventually(lambda: condition(objects(ISVCS, NS, "mlp")["status"], "Ready")["reason"] == "InvalidSpec")
        await eventually(lambda: events(cluster, "InvalidSpec"))

    status = objects(ISVCS, NS, "mlp")["status"]
    assert "nvidia.com/gpu is an extended resource: set it in limits" in condition(status, "Ready")["message"]
    assert status["observedGeneration"] == 1
    assert applies(cluster, DEPLOYMENTS) == applies(cluster, CONFIGMAPS) == []
    (event,) = events(cluster, "InvalidSpec")
    assert event["type"] == "Warning"
    assert event["involvedObject"]["name"] == "mlp"


async def test_an_invalid_update_keeps_the_running_version(
    api, cluster, run_operator, eventually, objects, deployment_of, revision_deployments, isvc_factory, condition
):
    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory())
        await eventually(lambda: objects(ISVCS, NS, "mlp")["status"]["observedGeneration"] == 1)
        running = deployment_of(NS, "mlp")["metadata"]["name"]
        applied = len(applies(cluster, DEPLOYMENTS, running))

        await api.patch(f"{ISVC_PATH}/mlp", {"spec": {"model": {"version": "2"}, "runtime": {"device": "cuda"}}})
        await eventually(lambda: objects(ISVCS, NS, "mlp")["status"]["observedGeneration"] == 2)

    status = objects(ISVCS, NS, "mlp")["status"]
    assert condition(status, "Ready")["reason"] == "InvalidSpec"
    assert "cuda needs a GPU" in condition(status, "Ready")["message"]
    assert condition(status, "RolloutComplete")["message"] == "the runtime pods keep their last valid spec"
    assert len(applies(cluster, DEPLOYMENTS, running)) == applied
    # Nothing new was created: the revision that ran still does, alone.
    assert [d["metadata"]["name"] for d in revision_deployments(NS, "mlp")] == [running]


@pytest.mark.parametrize(
    ("pod", "reason", "words"),
    [
        ("fetch_failed", "ModelFetchFailed", "HTTP 404 Not Found"),
        ("unschedulable", "Unschedulable", "Insufficient nvidia.com/gpu"),
        ("load_failed", "ModelLoadFailed", "Protobuf parsing failed"),
    ],
)
async def test_a_failing_pod_explains_itself_in_status_and_events(
    api,
    cluster,
    run_operator,
    eventually,
    objects,
    deployment_of,
    isvc_factory,
    controller,
    pod_statuses,
    condition,
    pod,
    reason,
    words,
):
    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory())
        await eventually(lambda: deployment_of(NS, "mlp"))
        await controller.run_pod(NS, "mlp", pod_statuses[pod])
        await controller.report(NS, "mlp", replicas=1, ready=0)
        await eventually(lambda: condition(objects(ISVCS, NS, "mlp")["status"], "Ready")["reason"] == reason)
        await eventually(lambda: events(cluster, reason))

    status = objects(ISVCS, NS, "mlp")["status"]
    for kind in ("Ready", "ModelLoaded", "RolloutComplete"):
        assert condition(status, kind)["reason"] == reason
        assert words in condition(status, kind)["message"]
    assert status["lastFailure"]["reason"] == reason
    assert words in status["lastFailure"]["message"]


SELECTOR = "app.kubernetes.io/managed-by=kubeserve,serving.kubeserve.io/inferenceservice=mlp"


def selects(selector: str, labels: dict[str, str]) -> bool:
    """Whether an equality-based label selector (``a=b,c=d``) matches these labels."""
    return all(labels.get(key) == value for key, _, value in (term.partition("=") for term in selector.split(",")))


async def test_kubectl_scale_scales_the_deployment_and_the_status_serves_the_scale_subresource(
    api, run_operator, eventually, objects, deployment_of, isvc_factory, controller, pod_statuses
):
    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory())
        await eventually(lambda: deployment_of(NS, "mlp")["spec"]["replicas"] == 1)

        await api.scale(f"{ISVC_PATH}/mlp", 3)
        await eventually(lambda: deployment_of(NS, "mlp")["spec"]["replicas"] == 3, within=1)
        pods = [await controller.run_pod(NS, "mlp", pod_statuses["serving"]) for _ in range(3)]
        await controller.report(NS, "mlp", replicas=3, ready=3)
        await eventually(lambda: objects(ISVCS, NS, "mlp")["status"]["replicas"] == 3, within=1)

    status = objects(ISVCS, NS, "mlp")["status"]
    assert objects(ISVCS, NS, "mlp")["spec"]["replicas"] == 3
    # The scale subresource's selector picks exactly the runtime pods, as an HPA averaging over them needs.
    assert status["selector"] == SELECTOR
    assert all(selects(status["selector"], pod["metadata"]["labels"]) for pod in pods)
    assert not selects(status["selector"], {**pods[0]["metadata"]["labels"], "app.kubernetes.io/managed-by": "x"})
    assert "autoscaler" not in status  # no HPA


HPA_STATUS = {
    "currentReplicas": 3,
    "desiredReplicas": 4,
    "currentMetrics": [
        {
            "type": "Pods",
            # The adapter serves microseconds; the HPA reports what it read as a quantity (1300.5 µs here).
            "pods": {
                "metric": {"name": "kubeserve_queue_delay_microseconds"},
                "current": {"averageValue": "1300500m"},
            },
        }
    ],
    "conditions": [
        {"type": "AbleToScale", "status": "True", "reason": "SucceededRescale", "message": "ok"},
        {"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound", "message": "ok"},
    ],
}


async def test_with_autoscaling_the_hpa_scales_the_inference_service_and_the_deployment_follows(
    api, cluster, run_operator, eventually, objects, deployment_of, isvc_factory
):
    hpa_path = f"/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers/mlp"
    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory(autoscaling={"minReplicas": 2, "maxReplicas": 5}))
        await eventually(lambda: objects(HPAS, NS, "mlp"))
        assert objects(HPAS, NS, "mlp")["spec"]["scaleTargetRef"] == {
            "apiVersion": "serving.kubeserve.io/v1alpha1",
            "kind": "InferenceService",
            "name": "mlp",
        }
        # The starting point: minReplicas, in spec.replicas too (an HPA does not scale a target whose count is 0).
        await eventually(lambda: objects(ISVCS, NS, "mlp")["spec"]["replicas"] == 2)
        assert deployment_of(NS, "mlp")["spec"]["replicas"] == 2

        # The HPA writes spec.replicas through the scale subresource; the CRD accepts it, the Deployment follows.
        await api.scale(f"{ISVC_PATH}/mlp", 4)
        await eventually(lambda: deployment_of(NS, "mlp")["spec"]["replicas"] == 4, within=1)
        # A user's apply that leaves replicas out changes something else and keeps the HPA's count.
        await api.apply(f"{ISVC_PATH}/mlp", isvc_factory(autoscaling={"minReplicas": 2, "maxReplicas": 6}))
        await eventually(lambda: objects(HPAS, NS, "mlp")["spec"]["maxReplicas"] == 6)
        assert objects(ISVCS, NS, "mlp")["spec"]["replicas"] == 4
        assert deployment_of(NS, "mlp")["spec"]["replicas"] == 4

        # The HPA's view reaches the status, from the HPA's watch event.
        assert "autoscaler" not in objects(ISVCS, NS, "mlp")["status"]  # the HPA has not reported yet
        await api.patch(f"{hpa_path}/status", {"status": HPA_STATUS})
        # In seconds, as the user wrote the target.
        view = {"currentReplicas": 3, "desiredReplicas": 4, "currentQueueDelay": "0.0013005"}
        await eventually(lambda: objects(ISVCS, NS, "mlp")["status"].get("autoscaler") == view, within=1)
        # Without a metrics adapter, the HPA says why it cannot scale; so does the status.
        failing = {
            "type": "ScalingActive",
            "status": "False",
            "reason": "FailedGetPodsMetric",
            "message": (
                "the HPA was unable to compute the replica count: unable to get metric "
                "kubeserve_queue_delay_microseconds: no metrics returned from custom metrics API"
            ),
        }
        await api.patch(f"{hpa_path}/status", {"status": {"currentMetrics": None, "conditions": [failing]}})
        await eventually(lambda: "message" in objects(ISVCS, NS, "mlp")["status"]["autoscaler"], within=1)
        view = objects(ISVCS, NS, "mlp")["status"]["autoscaler"]
        # ...in plain words first: what is missing and how to provide it, then the HPA's own.
        assert view["message"].startswith(
            "the queue-delay metric kubeserve_queue_delay_microseconds is not available, so the HPA cannot scale"
        )
        assert "install prometheus-adapter with kubeserve's rule" in view["message"]
        assert "monitoring.adapterRule.enabled=true" in view["message"]
        assert view["message"].endswith(f"The HPA says: FailedGetPodsMetric: {failing['message']}")
        assert "currentQueueDelay" not in view

        await api.patch(f"{ISVC_PATH}/mlp", {"spec": {"autoscaling": None, "replicas": 3}})
        await eventually(lambda: objects(HPAS, NS, "mlp") is None)
        await eventually(lambda: "autoscaler" not in objects(ISVCS, NS, "mlp")["status"])

    assert applies(cluster, DEPLOYMENTS, deployment_of(NS, "mlp")["metadata"]["name"])[-1]["spec"]["replicas"] == 3


# Every request the operator sends, as (verb, resource), as documented in docs/operations/rbac.md. (RBAC also
# needs "create" where it has "patch" on the children, since a server-side apply that creates is authorized as
# a create too, and "update" on inferenceservices/finalizers for blockOwnerDeletion; no request shows those.)
# The children are listed and watched to repair drift; the InferenceServices patched for kopf's annotation.
KEDA_RESOURCES = ("keda.sh/scaledobjects", "http.keda.sh/interceptorroutes")
WATCHED_ONLY = ("gateway.networking.k8s.io/httproutes", "gateway.networking.k8s.io/grpcroutes")  # no route here
OPERATOR_VERBS = {
    ("list", "serving.kubeserve.io/inferenceservices"),
    ("watch", "serving.kubeserve.io/inferenceservices"),
    ("patch", "serving.kubeserve.io/inferenceservices"),
    ("patch", "serving.kubeserve.io/inferenceservices/status"),
    ("patch", "serving.kubeserve.io/inferenceservices/scale"),
    ("list", "pods"),
    ("watch", "pods"),
    ("list", "apps/deployments"),
    ("watch", "apps/deployments"),
    ("patch", "apps/deployments"),
    ("list", "configmaps"),
    ("watch", "configmaps"),
    ("patch", "configmaps"),
    ("list", "services"),
    ("watch", "services"),
    ("patch", "services"),
    ("list", "autoscaling/horizontalpodautoscalers"),
    ("watch", "autoscaling/horizontalpodautoscalers"),
    ("patch", "autoscaling/horizontalpodautoscalers"),
    ("delete", "autoscaling/horizontalpodautoscalers"),
    ("delete", "services"),
    *[(verb, resource) for verb in ("list", "watch", "patch", "delete") for resource in KEDA_RESOURCES],
    *[(verb, resource) for verb in ("list", "watch") for resource in WATCHED_ONLY],
    ("create", "events"),
    ("list", "apiextensions.k8s.io/customresourcedefinitions"),
    ("watch", "apiextensions.k8s.io/customresourcedefinitions"),
}


def used_verbs(cluster, but: set[int]) -> set[tuple[str, str]]:
    """(verb, resource) of every request sent, but those with the given ids (the test's own)."""
    used = set()
    for request in cluster.requests():
        if request.resource is None or id(request) in but:
            continue  # discovery (/api, /apis/GROUP/VERSION) is open to every authenticated client
        group = f"{request.resource.group}/" if request.resource.group else ""
        subresource = f"/{request.subresource}" if request.subresource else ""
        used.add((request.verb, f"{group}{request.resource.plural}{subresource}"))
    return used


def requests_of(cluster, user_agent: str) -> set[int]:
    return {id(request) for request in cluster.requests(user_agent=user_agent)}


async def test_the_operator_uses_only_the_documented_api_verbs(
    api, cluster, run_operator, eventually, objects, isvc_factory
):
    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory(autoscaling={"maxReplicas": 2}))
        await eventually(lambda: objects(HPAS, NS, "mlp"))
        # To KEDA and scale to zero, then no autoscaling at all: each engine's objects come and go.
        keda = {"engine": "keda", "minReplicas": 0, "keda": {"serverAddress": "http://prometheus:9090"}}
        await api.patch(f"{ISVC_PATH}/mlp", {"spec": {"autoscaling": keda}})
        await eventually(lambda: objects(HPAS, NS, "mlp") is None and objects(SERVICES, NS, "mlp-proxy"))
        await api.patch(f"{ISVC_PATH}/mlp", {"spec": {"autoscaling": None}})
        await eventually(lambda: objects(SERVICES, NS, "mlp-proxy") is None)
        await api.patch(f"{ISVC_PATH}/mlp", {"spec": {"runtime": {"device": "cuda"}}})
        await eventually(lambda: events(cluster, "InvalidSpec"))
        await api.delete(f"{ISVC_PATH}/mlp")
        await eventually(lambda: objects(ISVCS, NS, "mlp") is None)
        test_requests = requests_of(cluster, api.USER_AGENT)

    assert used_verbs(cluster, but=test_requests) == OPERATOR_VERBS


# --- Peering -------------------------------------------------------------------------------------------------

PEERING_VERBS = {"get", "list", "watch", "patch"}  # kopf's RBAC documentation, and the operator's check (get)


@pytest.mark.usefixtures("kopf_peering_crds")
async def test_without_its_peering_object_the_operator_works_alone_and_says_how_to_enable_peering(
    api, run_operator, eventually, objects, deployment_of, isvc_factory, caplog
):
    with caplog.at_level(logging.WARNING, logger="kubeserve.operator"):
        async with run_operator(standalone=False):
            await api.create(ISVC_PATH, isvc_factory())
            await eventually(lambda: objects(ISVCS, NS, "mlp")["status"]["observedGeneration"] == 1)

    assert deployment_of(NS, "mlp") is not None
    (warning,) = [record for record in caplog.records if getattr(record, "event", None) == "peering_off"]
    assert warning.levelno == logging.WARNING
    assert warning.getMessage() == (
        "peering is off, so this replica works alone, as would any other: no ClusterKopfPeering 'kubeserve' "
        "(kopf.dev/v1). To enable peering, create it (the Helm chart does; kopf's CRDs are in "
        "crds/kopf-peering.yaml). To run standalone on purpose, set KUBESERVE_OPERATOR_STANDALONE=true (--standalone)."
    )


@pytest.mark.usefixtures("kopf_peering_crds")
async def test_peering_needs_its_object_in_every_watched_namespace(api):
    # This checks the operator's own check, without kopf (and its namespace listing).
    await api.create(
        "/apis/kopf.dev/v1/namespaces/team-a/kopfpeerings", {"metadata": {"name": "kubeserve", "namespace": "team-a"}}
    )
    client = await Cluster.connect(request_timeout=10)
    try:
        assert await peering.why_standalone(client, OperatorSettings(namespaces=("team-a",))) is None
        both = await peering.why_standalone(client, OperatorSettings(namespaces=("team-a", "team-b")))
        pattern = await peering.why_standalone(client, OperatorSettings(namespaces=("team-a", "team-*")))
        elsewhere = await peering.why_standalone(client, OperatorSettings(peering_name="blue", namespaces=("team-a",)))
    finally:
        await client.close()

    assert "no KopfPeering 'kubeserve' in namespace team-b (kopf.dev/v1)" in both
    assert "team-a" not in both
    assert "with namespace patterns, the KopfPeering 'kubeserve' each matching namespace needs cannot be checked" in (
        pattern
    )
    assert "no KopfPeering 'blue' in namespace team-a" in elsewhere


async def test_without_kopfs_peering_crds_the_operator_works_alone_too(api, cluster):
    client = await Cluster.connect(request_timeout=10)
    try:
        why = await peering.why_standalone(client, OperatorSettings())
    finally:
        await client.close()

    assert "no ClusterKopfPeering 'kubeserve' (kopf.dev/v1)" in why


@pytest.mark.usefixtures("kopf_peering_crds")
async def test_with_its_peering_object_the_operator_peers(
    api, cluster, run_operator, eventually, objects, isvc_factory, caplog
):
    await api.create("/apis/kopf.dev/v1/clusterkopfpeerings", {"metadata": {"name": "kubeserve"}})
    with caplog.at_level(logging.WARNING, logger="kubeserve.operator"):
        async with run_operator(standalone=False, peering_priority=7):
            await api.create(ISVC_PATH, isvc_factory())
            await eventually(lambda: objects(ISVCS, NS, "mlp")["status"]["observedGeneration"] == 1)
            peers = objects("kopf.dev/v1/clusterkopfpeerings", None, "kubeserve")["status"]
            test_requests = requests_of(cluster, api.USER_AGENT)

    assert [peer["priority"] for peer in peers.values() if peer] == [7]
    assert not [record for record in caplog.records if getattr(record, "event", None) == "peering_off"]
    peering = {verb for verb, resource in used_verbs(cluster, but=test_requests) if resource.startswith("kopf.dev/")}
    assert peering == PEERING_VERBS


# --- At scale: events, not timers ------------------------------------------------------------------------------


def operator_requests(cluster, api) -> list:
    """Every request the operator sent but its watch streams (kopf's, held open and re-opened): lists, applies,
    status patches, events."""
    return [
        request
        for request in cluster.requests()
        if request.headers.get("User-Agent") != api.USER_AGENT and request.verb != "watch"
    ]


def status_patches(cluster, name: str) -> list[dict]:
    patches = cluster.requests(method="PATCH", resource=ISVCS, name=name)
    return [request.body["status"] for request in patches if request.subresource == "status"]


async def test_with_nothing_changing_the_operator_makes_no_api_requests(
    api, cluster, run_operator, eventually, objects, deployment_of, isvc_factory, controller, pod_statuses, condition
):
    names = [f"m{i}" for i in range(20)]
    async with run_operator():
        for name in names:
            await api.create(ISVC_PATH, isvc_factory(name))
        await eventually(lambda: all(objects(ISVCS, NS, n)["status"]["observedGeneration"] == 1 for n in names))
        for name in names[:5]:  # some serve: their status depends on their pods and Deployments
            await controller.run_pod(NS, name, pod_statuses["serving"])
            await controller.report(NS, name, replicas=1, ready=1)
        await eventually(
            lambda: all(condition(objects(ISVCS, NS, n)["status"], "Ready")["status"] == "True" for n in names[:5])
        )
        for name in names:
            revision = deployment_of(NS, name)["metadata"]["name"]
            assert objects(SERVICES, NS, name) and objects(CONFIGMAPS, NS, revision)

        before = len(operator_requests(cluster, api))
        # Ten idle minutes on the fake clock, kopf's watches open throughout (none re-opened). Timers of any period
        # up to minutes, per object or not, would show.
        await asyncio.sleep(600)
        during = operator_requests(cluster, api)[before:]

    assert [(request.method, request.path, dict(request.query)) for request in during] == []


async def test_the_status_is_written_only_when_it_changes(
    api, cluster, run_operator, eventually, objects, isvc_factory, controller, pod_statuses, condition
):
    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory())
        await eventually(lambda: objects(ISVCS, NS, "mlp")["status"]["observedGeneration"] == 1)
        pod = await controller.run_pod(NS, "mlp", pod_statuses["loading"])
        await controller.report(NS, "mlp", replicas=1, ready=0)
        await eventually(
            lambda: condition(objects(ISVCS, NS, "mlp")["status"], "ModelLoaded")["reason"] == "ModelLoading"
        )
        # Events that change nothing the status shows: a label on the pod, the same Deployment status again.
        await api.patch(f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}", {"metadata": {"labels": {"a": "b"}}})
        await controller.report(NS, "mlp", replicas=1, ready=0)
        await controller.run_pod(NS, "mlp", pod_statuses["serving"])
        await controller.report(NS, "mlp", replicas=2, ready=1)
        await eventually(lambda: condition(objects(ISVCS, NS, "mlp")["status"], "Ready")["status"] == "True")

    # Replayed in order, every status patch the operator sent changed something.
    status: dict = {}
    for patch in status_patches(cluster, "mlp"):
        assert patch and any(status.get(key) != value for key, value in patch.items()), patch
        status.update(patch)


async def test_the_finalizer_of_earlier_versions_is_removed(
    api, run_operator, eventually, objects, deployment_of, isvc_factory
):
    # As an upgrade finds it: put there by a version of the operator that had timers.
    old = isvc_factory()
    old["metadata"]["finalizers"] = ["serving.kubeserve.io/finalizer"]
    await api.create(ISVC_PATH, old)

    async with run_operator():
        await eventually(lambda: not objects(ISVCS, NS, "mlp")["metadata"].get("finalizers"))
        await eventually(lambda: objects(ISVCS, NS, "mlp")["status"]["observedGeneration"] == 1)

    assert deployment_of(NS, "mlp") is not None


async def test_throttling_is_retried_no_sooner_than_the_api_server_asks(
    api, cluster, run_operator, eventually, objects, isvc_factory, condition
):
    throttled = Reply(
        429,
        headers={"Retry-After": "30"},
        body={
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "code": 429,
            "reason": "TooManyRequests",
            "message": "Too many requests, please try again later.",
        },
    )
    cluster.inject(throttled, times=1, method="PATCH", resource=SERVICES)

    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory())
        await eventually(lambda: applies(cluster, SERVICES, "mlp"))
        # Not the back-off's 1 s: the 30 s the API server asked for (on the fake clock), and meanwhile no other
        # request about it (no status patch, no Event): a throttled operator must not add to the load.
        with pytest.raises(TimeoutError):
            await eventually(lambda: len(applies(cluster, SERVICES, "mlp")) > 1, within=29)
        assert status_patches(cluster, "mlp") == [] and events(cluster, "ApplyFailed") == []
        # Retried at 30 s, a little later at most (retries are spread so that a throttled burst does not return
        # all at once).
        await eventually(lambda: objects(ISVCS, NS, "mlp")["status"].get("observedGeneration") == 1, within=8)

    assert condition(objects(ISVCS, NS, "mlp")["status"], "Ready")["reason"] != "ApplyFailed"
    assert len(applies(cluster, SERVICES, "mlp")) == 2
    # The retry resumed at the Service: the ConfigMap applied before it was not sent again.
    assert len(applies(cluster, CONFIGMAPS)) == 1


async def test_an_inference_service_created_again_under_the_same_name_gets_a_status_of_its_own(
    api, run_operator, eventually, objects, deployment_of, isvc_factory, condition
):
    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory())
        await eventually(lambda: objects(ISVCS, NS, "mlp")["status"]["observedGeneration"] == 1)
        await api.delete(f"{ISVC_PATH}/mlp")

        await api.create(ISVC_PATH, isvc_factory())  # the API server gives it a uid of its own
        await eventually(lambda: objects(ISVCS, NS, "mlp")["status"]["observedGeneration"] == 1)
    again = objects(ISVCS, NS, "mlp")["metadata"]["uid"]

    status = objects(ISVCS, NS, "mlp")["status"]
    assert status["url"] == "http://mlp.ml.svc.cluster.local"
    assert condition(status, "Ready")["reason"] in ("Pending", "ModelLoading")
    assert deployment_of(NS, "mlp")["metadata"]["ownerReferences"][-1]["uid"] == again
