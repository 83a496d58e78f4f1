"""The real operator (every kopf handler) against an in-memory Kubernetes API (kmock), on looptime's fake clock.

Each test drives the cluster the way users and built-in controllers would (POST/PATCH/DELETE over HTTP) and
waits for the state it expects, re-checked after every API request, never for a fixed time.
"""

from __future__ import annotations

import asyncio
import copy

import kmock
import pytest

pytestmark = pytest.mark.looptime

NS = "ml"
ISVCS = "serving.kubeserve.io/v1alpha1/inferenceservices"
DEPLOYMENTS = "apps/v1/deployments"
CONFIGMAPS = "v1/configmaps"
SERVICES = "v1/services"
HPAS = "autoscaling/v2/horizontalpodautoscalers"
ISVC_PATH = f"/apis/serving.kubeserve.io/v1alpha1/namespaces/{NS}/inferenceservices"
DEPLOYMENT_PATH = f"/apis/apps/v1/namespaces/{NS}/deployments"


def applies(cluster, resource: str, name: str) -> list[dict]:
    """The bodies of the server-side applies the operator sent for one object (less what the emulator stamps)."""
    bodies = []
    for request in cluster[kmock.method.PATCH, kmock.resource(resource), kmock.name(name)]:
        if "apply-patch" in request.headers.get("Content-Type", ""):
            body = copy.deepcopy(request.data)
            body["metadata"].pop("resourceVersion", None)
            body["metadata"].pop("generation", None)
            bodies.append(body)
    return bodies


def events(cluster, reason: str) -> list[dict]:
    posted = cluster[kmock.method.POST, kmock.resource("v1/events")]
    return [request.data for request in posted if request.data.get("reason") == reason]


async def test_create_applies_children_owned_by_the_inference_service(
    api, run_operator, eventually, objects, isvc_factory, condition
):
    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory())
        await eventually(lambda: objects(ISVCS, NS, "mlp")["status"]["observedGeneration"] == 1)

    for resource, name in [(CONFIGMAPS, "mlp-runtime-config"), (SERVICES, "mlp"), (DEPLOYMENTS, "mlp")]:
        child = objects(resource, NS, name)
        assert child is not None, f"{resource} {name} was not created"
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "serving.kubeserve.io/v1alpha1",
            "kind": "InferenceService",
            "name": "mlp",
            "uid": "uid-mlp",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    assert objects(HPAS, NS, "mlp") is None  # fixed replicas: no HPA
    isvc = objects(ISVCS, NS, "mlp")
    assert isvc["metadata"]["finalizers"] == ["serving.kubeserve.io/finalizer"]
    assert isvc["status"]["url"] == "http://mlp.ml.svc.cluster.local"
    ready = condition(isvc["status"], "Ready")
    assert ready["status"] == "False"
    assert ready["reason"] in ("Pending", "ModelLoading")
    assert ready["observedGeneration"] == 1


async def test_status_turns_ready_when_a_pod_serves_the_model(
    api, run_operator, eventually, objects, isvc_factory, controller, pod_statuses, condition
):
    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory())
        await eventually(lambda: objects(DEPLOYMENTS, NS, "mlp"))
        await controller.run_pod(NS, "mlp", pod_statuses["loading"])
        await controller.report(NS, "mlp", replicas=1, ready=0)
        await eventually(
            lambda: condition(objects(ISVCS, NS, "mlp")["status"], "ModelLoaded")["reason"] == "ModelLoading"
        )

        await controller.run_pod(NS, "mlp", pod_statuses["serving"])
        await controller.report(NS, "mlp", replicas=1, ready=1)
        await eventually(lambda: condition(objects(ISVCS, NS, "mlp")["status"], "Ready")["status"] == "True")

    status = objects(ISVCS, NS, "mlp")["status"]
    assert condition(status, "Ready")["reason"] == "Serving"
    assert "http://mlp.ml.svc.cluster.local/v2/models/mlp/infer" in condition(status, "Ready")["message"]
    assert condition(status, "ModelLoaded")["status"] == "True"
    assert condition(status, "RolloutComplete")["status"] == "True"
    assert (status["replicas"], status["readyReplicas"]) == (1, 1)


async def test_applying_again_changes_nothing(api, cluster, run_operator, eventually, objects, isvc_factory):
    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory())
        await eventually(lambda: objects(DEPLOYMENTS, NS, "mlp"))
        before = objects(DEPLOYMENTS, NS, "mlp")
        # The drift-repair timer applies everything again, level-triggered.
        await eventually(lambda: len(applies(cluster, DEPLOYMENTS, "mlp")) >= 2)

    first, second, *_ = applies(cluster, DEPLOYMENTS, "mlp")
    assert first == second
    after = objects(DEPLOYMENTS, NS, "mlp")
    assert after["spec"] == before["spec"]
    assert after["metadata"]["labels"] == before["metadata"]["labels"]


async def test_a_new_model_version_rolls_the_deployment(
    api, run_operator, eventually, objects, isvc_factory, condition
):
    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory())
        await eventually(lambda: objects(ISVCS, NS, "mlp")["status"]["observedGeneration"] == 1)
        old = objects(DEPLOYMENTS, NS, "mlp")["spec"]["template"]["metadata"]

        await api.patch(f"{ISVC_PATH}/mlp", {"spec": {"model": {"version": "2"}}})
        await eventually(lambda: objects(ISVCS, NS, "mlp")["status"]["observedGeneration"] == 2)

    new = objects(DEPLOYMENTS, NS, "mlp")["spec"]["template"]["metadata"]
    assert (old["labels"]["serving.kubeserve.io/revision"], new["labels"]["serving.kubeserve.io/revision"]) == (
        "1",
        "2",
    )
    assert (
        old["annotations"]["serving.kubeserve.io/config-hash"] != new["annotations"]["serving.kubeserve.io/config-hash"]
    )
    assert "model_version: '2'" in objects(CONFIGMAPS, NS, "mlp-runtime-config")["data"]["runtime.yaml"]
    rollout = condition(objects(ISVCS, NS, "mlp")["status"], "RolloutComplete")
    assert rollout["status"] == "False"


async def test_a_deleted_child_is_restored(api, run_operator, eventually, objects, isvc_factory):
    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory())
        await eventually(lambda: objects(DEPLOYMENTS, NS, "mlp") and objects(SERVICES, NS, "mlp"))

        await api.delete(f"{DEPLOYMENT_PATH}/mlp")
        await api.delete(f"/api/v1/namespaces/{NS}/services/mlp")
        assert objects(DEPLOYMENTS, NS, "mlp") is None
        await eventually(lambda: objects(DEPLOYMENTS, NS, "mlp") and objects(SERVICES, NS, "mlp"))

    assert objects(SERVICES, NS, "mlp")["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]


async def test_a_restarted_operator_repairs_what_changed_while_it_was_down(
    api, run_operator, eventually, objects, isvc_factory
):
    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory())
        await eventually(lambda: objects(ISVCS, NS, "mlp")["status"]["observedGeneration"] == 1)

    await api.delete(f"{DEPLOYMENT_PATH}/mlp")  # while no operator runs
    async with run_operator():  # resumes every InferenceService it finds
        await eventually(lambda: objects(DEPLOYMENTS, NS, "mlp"))


async def test_a_hand_edited_child_is_restored(api, run_operator, eventually, objects, isvc_factory):
    def image() -> str:
        return objects(DEPLOYMENTS, NS, "mlp")["spec"]["template"]["spec"]["containers"][0]["image"]

    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory())
        await eventually(lambda: objects(DEPLOYMENTS, NS, "mlp"))
        edited = objects(DEPLOYMENTS, NS, "mlp")["spec"]["template"]["spec"]["containers"]
        edited[0]["image"] = "someone/else:latest"
        await api.patch(f"{DEPLOYMENT_PATH}/mlp", {"spec": {"template": {"spec": {"containers": edited}}}})
        assert image() == "someone/else:latest"

        await eventually(lambda: image() == "kubeserve-runtime:test")


async def test_deleting_removes_the_children_then_the_inference_service(
    api, cluster, run_operator, eventually, objects, isvc_factory
):
    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory(autoscaling={"maxReplicas": 3}))
        await eventually(lambda: objects(HPAS, NS, "mlp") and objects(DEPLOYMENTS, NS, "mlp"))

        await api.delete(f"{ISVC_PATH}/mlp")
        await eventually(lambda: objects(ISVCS, NS, "mlp") is None)

    for resource, name in [(HPAS, "mlp"), (DEPLOYMENTS, "mlp"), (SERVICES, "mlp"), (CONFIGMAPS, "mlp-runtime-config")]:
        assert objects(resource, NS, name) is None, f"{resource} {name} survived"


async def test_conflicts_server_errors_and_timeouts_are_retried(
    api, cluster, run_operator, eventually, objects, isvc_factory, condition
):
    # The first three applies of the Deployment fail: 409, 500, then no answer within the timeout.
    deployment_patches = cluster[kmock.method.PATCH, kmock.resource(DEPLOYMENTS)]
    deployment_patches[0:1] << 409
    deployment_patches[1:2] << 500
    deployment_patches[2:3] << (lambda: asyncio.sleep(3600))

    async with run_operator(api_timeout_seconds=10):
        await api.create(ISVC_PATH, isvc_factory())
        await eventually(lambda: objects(ISVCS, NS, "mlp")["status"]["observedGeneration"] == 1)

    assert len(applies(cluster, DEPLOYMENTS, "mlp")) >= 4
    assert objects(DEPLOYMENTS, NS, "mlp")["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "kubeserve-runtime:test"
    )
    assert condition(objects(ISVCS, NS, "mlp")["status"], "RolloutComplete")["reason"] != "ApplyFailed"


async def test_a_refused_apply_is_reported_with_the_api_servers_message(
    api, cluster, run_operator, eventually, objects, isvc_factory, condition
):
    refusal = kmock.Response(
        status=403,
        payload={
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "code": 403,
            "reason": "Forbidden",
            "message": 'deployments.apps "mlp" is forbidden: User "system:serviceaccount:x:y" cannot patch',
        },
    )
    cluster[kmock.method.PATCH, kmock.resource(DEPLOYMENTS)] << refusal

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
    assert applies(cluster, DEPLOYMENTS, "mlp") == applies(cluster, CONFIGMAPS, "mlp-runtime-config") == []
    (event,) = events(cluster, "InvalidSpec")
    assert event["type"] == "Warning"
    assert event["involvedObject"]["name"] == "mlp"


async def test_an_invalid_update_keeps_the_running_version(
    api, cluster, run_operator, eventually, objects, isvc_factory, condition
):
    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory())
        await eventually(lambda: objects(ISVCS, NS, "mlp")["status"]["observedGeneration"] == 1)
        applied = len(applies(cluster, DEPLOYMENTS, "mlp"))

        await api.patch(f"{ISVC_PATH}/mlp", {"spec": {"model": {"version": "2"}, "runtime": {"device": "cuda"}}})
        await eventually(lambda: objects(ISVCS, NS, "mlp")["status"]["observedGeneration"] == 2)

    status = objects(ISVCS, NS, "mlp")["status"]
    assert condition(status, "Ready")["reason"] == "InvalidSpec"
    assert "cuda needs a GPU" in condition(status, "Ready")["message"]
    assert condition(status, "RolloutComplete")["message"] == "the runtime pods keep their last valid spec"
    assert len(applies(cluster, DEPLOYMENTS, "mlp")) == applied
    assert objects(DEPLOYMENTS, NS, "mlp")["spec"]["template"]["metadata"]["labels"][
        "serving.kubeserve.io/revision"
    ] == ("1")


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
        await eventually(lambda: objects(DEPLOYMENTS, NS, "mlp"))
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


async def test_autoscaling_adds_an_hpa_that_owns_the_replica_count_and_removing_it_deletes_the_hpa(
    api, cluster, run_operator, eventually, objects, isvc_factory
):
    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory(autoscaling={"minReplicas": 2, "maxReplicas": 5}))
        await eventually(lambda: objects(HPAS, NS, "mlp"))
        assert "replicas" not in applies(cluster, DEPLOYMENTS, "mlp")[-1]["spec"]

        await api.patch(f"{ISVC_PATH}/mlp", {"spec": {"autoscaling": None, "replicas": 3}})
        await eventually(lambda: objects(HPAS, NS, "mlp") is None)

    assert applies(cluster, DEPLOYMENTS, "mlp")[-1]["spec"]["replicas"] == 3


# Every request the operator sends, as (verb, resource), as documented in the README's RBAC list. (RBAC also
# needs "create" where it has "patch" on the children, since a server-side apply that creates is authorized as
# a create too, and "update" on inferenceservices/finalizers for blockOwnerDeletion; no request shows those.)
OPERATOR_VERBS = {
    ("list", "serving.kubeserve.io/inferenceservices"),
    ("watch", "serving.kubeserve.io/inferenceservices"),
    ("patch", "serving.kubeserve.io/inferenceservices"),
    ("patch", "serving.kubeserve.io/inferenceservices/status"),
    ("list", "pods"),
    ("watch", "pods"),
    ("list", "apps/deployments"),
    ("watch", "apps/deployments"),
    ("patch", "apps/deployments"),
    ("delete", "apps/deployments"),
    ("patch", "configmaps"),
    ("delete", "configmaps"),
    ("patch", "services"),
    ("delete", "services"),
    ("patch", "autoscaling/horizontalpodautoscalers"),
    ("delete", "autoscaling/horizontalpodautoscalers"),
    ("create", "events"),
    ("list", "apiextensions.k8s.io/customresourcedefinitions"),
    ("watch", "apiextensions.k8s.io/customresourcedefinitions"),
}


async def test_the_operator_uses_only_the_documented_api_verbs(
    api, cluster, run_operator, eventually, objects, isvc_factory
):
    test_requests = set()
    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory(autoscaling={"maxReplicas": 2}))
        await eventually(lambda: objects(HPAS, NS, "mlp"))
        await api.patch(f"{ISVC_PATH}/mlp", {"spec": {"autoscaling": None, "runtime": {"device": "cuda"}}})
        await eventually(lambda: events(cluster, "InvalidSpec"))
        await api.delete(f"{ISVC_PATH}/mlp")
        await eventually(lambda: objects(ISVCS, NS, "mlp") is None)
        test_requests = {id(request) for request in cluster if request.headers.get("User-Agent") == api.USER_AGENT}

    used = set()
    for request in cluster:
        if request.resource is None or request.resource.plural is None or id(request) in test_requests:
            continue  # discovery (/api, /apis/GROUP/VERSION) is open to every authenticated client
        verb = {"LIST": "list", "WATCH": "watch", "FETCH": "get", "CREATE": "create", "UPDATE": "patch"}.get(
            request.action.name if request.action else "", "delete" if request.method == "DELETE" else "?"
        )
        group = f"{request.resource.group}/" if request.resource.group else ""
        used.add((verb, f"{group}{request.resource.plural}{'/' + request.subresource if request.subresource else ''}"))
    assert used == OPERATOR_VERBS
