"""Rollouts through the real operator against the in-memory API, on looptime's fake clock: revision Deployments
created and scaled step by step, the adoption of a Deployment from before revisions, a failed canary rolled back,
a rollback to a kept revision, pruning; status and Events as a user reads them.

The tests play the Deployment controller (``controller.report_deployment``): they say how many pods of a revision
are ready, and the operator acts on that Deployment's watch event.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubeserve.operator import manifests
from kubeserve.operator.plan import assess
from kubeserve.operator.settings import OperatorSettings

pytestmark = pytest.mark.looptime

NS = "ml"
ISVCS = "serving.kubeserve.io/v1alpha1/inferenceservices"
DEPLOYMENTS = "apps/v1/deployments"
SERVICES = "v1/services"
CONFIGMAPS = "v1/configmaps"
ISVC_PATH = f"/apis/serving.kubeserve.io/v1alpha1/namespaces/{NS}/inferenceservices"
DEPLOYMENT_PATH = f"/apis/apps/v1/namespaces/{NS}/deployments"


def posted(cluster: Any, reason: str) -> list[str]:
    requests = cluster.requests(method="POST", resource="v1/events")
    return [request.body["message"] for request in requests if request.body.get("reason") == reason]


@pytest.fixture
def replicas(revision_deployments):
    """Replicas of each revision Deployment of ``mlp``, by name."""

    def of() -> dict[str, int]:
        return {d["metadata"]["name"]: d["spec"]["replicas"] for d in revision_deployments(NS, "mlp")}

    return of


@pytest.fixture
def status(objects):
    def of() -> dict[str, Any]:
        return objects(ISVCS, NS, "mlp")["status"]

    return of


async def serve(controller, objects, name: str, ready: int) -> None:
    """The Deployment ``name`` has ``ready`` ready pods (and as many in all)."""
    deployment = objects(DEPLOYMENTS, NS, name)
    await controller.report_deployment(NS, deployment, replicas=ready, ready=ready)


@pytest.fixture
def rolled_out(api, eventually, objects, replicas, status, isvc_factory, controller):
    """``mlp`` created with these settings, its first revision serving with all its pods: that revision's name."""

    async def first(total: int, rollout: dict[str, Any]) -> str:
        await api.create(ISVC_PATH, isvc_factory(replicas=total, rollout=rollout))
        await eventually(lambda: len(replicas()) == 1)
        (v1,) = replicas()
        await serve(controller, objects, v1, total)
        await eventually(lambda: status()["rollout"]["phase"] == "Succeeded")
        return v1

    return first


@pytest.fixture
def released(api, eventually, replicas):
    """Version 2 asked for: the new revision's name, once its Deployment exists."""

    async def version_2() -> str:
        before = set(replicas())
        await api.patch(f"{ISVC_PATH}/mlp", {"spec": {"model": {"version": "2"}}})
        await eventually(lambda: len(replicas()) == len(before) + 1)
        (new,) = set(replicas()) - before
        return new

    return version_2


async def test_a_new_version_goes_step_by_step_and_capacity_never_dips(
    cluster, run_operator, eventually, objects, replicas, status, controller, condition, rolled_out, released
):
    rollout = {"steps": [{"weight": 25, "pauseSeconds": 60}]}
    async with run_operator():
        # A first revision has nothing to compare with: it is simply the one serving.
        v1 = await rolled_out(4, rollout)
        assert status()["servingVersion"] == "1"

        v2 = await released()
        # Step 1, 25% of 4: one canary pod; the stable revision keeps all 4 until it is ready.
        await eventually(lambda: replicas() == {v1: 4, v2: 1})
        await eventually(lambda: (status()["rollout"]["phase"], status()["rollout"]["weight"]) == ("Progressing", 25))
        assert condition(status(), "RolloutComplete")["reason"] == "RolloutInProgress"
        await serve(controller, objects, v2, 1)
        await eventually(lambda: replicas() == {v1: 3, v2: 1})

        # The pause (60 s of fake time, a timer only while this rollout runs), then 100%.
        await eventually(lambda: replicas()[v2] == 4, within=90)
        assert replicas()[v1] == 3  # still, until the canary's pods are ready
        await serve(controller, objects, v2, 4)
        await eventually(lambda: replicas() == {v1: 0, v2: 4})
        await eventually(lambda: status()["rollout"]["phase"] == "Succeeded")

    final = status()
    assert final["servingVersion"] == "2"
    assert condition(final, "RolloutComplete")["status"] == "True"
    # The earlier revision is kept at 0 (revisionHistoryLimit 2): going back is a spec edit that starts its pods.
    assert {(r["name"], r["version"], r["replicas"]) for r in final["revisions"]} >= {(v2.removeprefix("mlp-"), "2", 4)}
    assert objects(SERVICES, NS, v1) and objects(CONFIGMAPS, NS, v1)
    assert posted(cluster, "RolloutStarted") and posted(cluster, "StepAdvanced")
    assert any("revision " + v2.removeprefix("mlp-") in message for message in posted(cluster, "RolloutComplete"))


async def test_a_canary_that_never_gets_ready_is_rolled_back_at_its_deadline(
    cluster, run_operator, eventually, replicas, status, condition, rolled_out, released
):
    rollout = {"steps": [{"weight": 50}], "progressDeadlineSeconds": 30}
    async with run_operator():
        v1 = await rolled_out(2, rollout)

        v2 = await released()
        await eventually(lambda: replicas() == {v1: 2, v2: 1})
        # Its pods never get ready: at the deadline, back to the stable revision at the full total.
        try:
            await eventually(lambda: status()["rollout"]["phase"] == "Failed", within=60)
        except TimeoutError:
            raise AssertionError(status()) from None
        await eventually(lambda: replicas() == {v1: 2, v2: 0})

    rolled_back = condition(status(), "RolloutComplete")
    assert (rolled_back["status"], rolled_back["reason"]) == ("False", "ProgressDeadlineExceeded")
    assert "0 of 1 pods ready after 30s" in rolled_back["message"]
    assert status()["servingVersion"] == "1"
    (warning,) = posted(cluster, "ProgressDeadlineExceeded")
    assert v1.removeprefix("mlp-") in warning  # says what it rolled back to


async def test_going_back_to_a_kept_version_is_immediate(
    api, run_operator, eventually, objects, replicas, status, controller, rolled_out, released
):
    rollout = {"steps": [{"weight": 50, "pauseSeconds": 600}]}
    async with run_operator():
        v1 = await rolled_out(2, rollout)
        v2 = await released()
        await serve(controller, objects, v2, 1)
        await eventually(lambda: replicas() == {v1: 1, v2: 1})

        # Mid-canary, the spec goes back to version 1: the canary is abandoned at once, no steps, no pause.
        await api.patch(f"{ISVC_PATH}/mlp", {"spec": {"model": {"version": "1"}}})
        await eventually(lambda: replicas() == {v1: 2, v2: 1}, within=1)
        await serve(controller, objects, v1, 2)
        await eventually(lambda: replicas() == {v1: 2, v2: 0}, within=1)
        await eventually(lambda: status()["rollout"]["revision"] == v1.removeprefix("mlp-"), within=1)
        assert status()["rollout"]["phase"] == "Succeeded"


async def test_revisions_beyond_the_history_limit_are_deleted_with_their_service_and_config(
    run_operator, eventually, objects, replicas, status, controller, rolled_out, released
):
    rollout = {"strategy": "Immediate", "revisionHistoryLimit": 0}
    async with run_operator():
        v1 = await rolled_out(1, rollout)
        v2 = await released()
        await serve(controller, objects, v2, 1)
        await eventually(lambda: replicas() == {v1: 0, v2: 1})
        await serve(controller, objects, v1, 0)  # its last pod is gone
        # The Deployment, then its Service and ConfigMap.
        await eventually(
            lambda: v1 not in replicas() and objects(SERVICES, NS, v1) is None and objects(CONFIGMAPS, NS, v1) is None
        )
        await eventually(lambda: {d["name"] for d in status()["revisions"]} == {v2.removeprefix("mlp-")})

    assert objects(SERVICES, NS, "mlp") is not None  # the InferenceService's own stays


async def test_a_deployment_from_before_revisions_is_adopted_without_a_restart(
    api, run_operator, eventually, objects, replicas, status, isvc_factory, controller, condition, released
):
    body = isvc_factory(replicas=2)
    isvc = assess(body).isvc
    assert isvc is not None
    plan = manifests.children(isvc, OperatorSettings(cpu_image="kubeserve-runtime:test"))
    (rendered,) = [m for m in plan.manifests if m["kind"] == "Deployment"]
    # As the operator before revisions made it: named like the InferenceService, its revision label the version.
    legacy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "mlp", "namespace": NS, "labels": rendered["metadata"]["labels"]},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"serving.kubeserve.io/inferenceservice": "mlp"}},
            "template": {
                "metadata": {
                    "labels": {
                        **rendered["metadata"]["labels"],
                        "serving.kubeserve.io/inferenceservice": "mlp",
                        "serving.kubeserve.io/revision": "1",
                    },
                    "annotations": {"serving.kubeserve.io/config-hash": plan.config_hash},
                },
                "spec": rendered["spec"]["template"]["spec"],
            },
        },
    }
    await api.create(DEPLOYMENT_PATH, legacy)
    await serve(controller, objects, "mlp", 2)

    async with run_operator():
        await api.create(ISVC_PATH, body)
        await eventually(lambda: (status().get("rollout") or {}).get("phase") == "Succeeded")
        # It already runs version 1 with this config: it is the revision, untouched (no apply, so no restart).
        assert replicas() == {"mlp": 2}
        assert status()["rollout"]["revision"] == "1"
        assert condition(status(), "Ready")["status"] == "True"
        template = objects(DEPLOYMENTS, NS, "mlp")["spec"]["template"]
        assert template == legacy["spec"]["template"]

        # Its replicas follow the InferenceService's, like any revision's.
        await api.scale(f"{ISVC_PATH}/mlp", 3)
        await eventually(lambda: replicas() == {"mlp": 3})
        await serve(controller, objects, "mlp", 3)

        # The next version rolls out from it like from any other revision.
        v2 = await released()
        assert v2.startswith("mlp-2-")
        assert objects(DEPLOYMENTS, NS, "mlp")["spec"]["template"] == legacy["spec"]["template"]


async def test_with_gateway_api_routing_an_httproute_carries_the_rollouts_weights(
    api, run_operator, eventually, objects, replicas, status, controller, crd_schemas, rolled_out, released
):
    gateway = {"parentRef": {"name": "public", "namespace": "gateways"}, "hostnames": ["mlp.example.com"]}
    rollout = {"steps": [{"weight": 25, "pauseSeconds": 600}], "trafficRouting": {"gatewayAPI": gateway}}
    routes = "gateway.networking.k8s.io/v1/httproutes"
    grpc_routes = "gateway.networking.k8s.io/v1/grpcroutes"

    def weights() -> dict[str, int] | None:
        """The route's weights by Service (None before there is one); each version of it valid as Gateway API's."""
        route = objects(routes, NS, "mlp")
        if route is None:
            return None
        assert crd_schemas["HTTPRoute"].errors(route) == []
        return {ref["name"]: ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]}

    def grpc_weights() -> dict[str, int] | None:
        """The GRPCRoute's (the pods serve gRPC by default): the HTTPRoute's weights, to the gRPC ports."""
        route = objects(grpc_routes, NS, "mlp")
        if route is None:
            return None
        assert crd_schemas["GRPCRoute"].errors(route) == []
        assert {ref["port"] for ref in route["spec"]["rules"][0]["backendRefs"]} == {8001}
        return {ref["name"]: ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]}

    async with run_operator():
        v1 = await rolled_out(4, rollout)
        await eventually(lambda: weights() == {v1: 100})
        await eventually(lambda: grpc_weights() == {v1: 100})
        assert status()["grpcAddress"] == f"mlp.{NS}.svc.cluster.local:8001"
        route = objects(routes, NS, "mlp")["spec"]
        assert route["parentRefs"] == [{"name": "public", "namespace": "gateways"}]
        assert route["hostnames"] == ["mlp.example.com"]

        v2 = await released()
        # Listed at 0 until its pod is ready: the Gateway never sends it what it cannot carry.
        await eventually(lambda: weights() == {v1: 100, v2: 0})
        await serve(controller, objects, v2, 1)
        await eventually(lambda: weights() == {v1: 75, v2: 25} and replicas() == {v1: 3, v2: 1})
        await eventually(lambda: grpc_weights() == {v1: 75, v2: 25})
        await eventually(
            lambda: (
                {r["name"]: r["weight"] for r in status()["revisions"]}
                == {
                    v1.removeprefix("mlp-"): 75,
                    v2.removeprefix("mlp-"): 25,
                }
            )
        )

        # Edited by hand (all to the canary): put back from its watch event.
        edited = [{"backendRefs": [{"name": v2, "port": 80, "weight": 100}]}]
        await api.patch(f"/apis/{routes.rsplit('/', 1)[0]}/namespaces/{NS}/httproutes/mlp", {"spec": {"rules": edited}})
        assert weights() == {v2: 100}
        await eventually(lambda: weights() == {v1: 75, v2: 25}, within=1)
        # The GRPCRoute too.
        edited = [{"backendRefs": [{"name": v2, "port": 8001, "weight": 100}]}]
        await api.patch(f"/apis/{routes.rsplit('/', 1)[0]}/namespaces/{NS}/grpcroutes/mlp", {"spec": {"rules": edited}})
        assert grpc_weights() == {v2: 100}
        await eventually(lambda: grpc_weights() == {v1: 75, v2: 25}, within=1)

        # No router any more: the route goes.
        await api.patch(f"{ISVC_PATH}/mlp", {"spec": {"rollout": {"trafficRouting": None}}})
        await eventually(lambda: objects(routes, NS, "mlp") is None)
        await eventually(lambda: objects(grpc_routes, NS, "mlp") is None)


async def test_a_restarted_operator_resumes_the_rollout_where_it_was(
    cluster, run_operator, eventually, objects, replicas, status, controller, rolled_out, released
):
    rollout = {"steps": [{"weight": 25, "pauseSeconds": 60}, {"weight": 50, "pauseSeconds": 60}]}
    async with run_operator():
        v1 = await rolled_out(4, rollout)
        v2 = await released()
        await serve(controller, objects, v2, 1)
        await eventually(lambda: replicas() == {v1: 3, v2: 1})
        await eventually(lambda: status()["rollout"]["step"] == 1, within=90)  # 50%
        before = status()["rollout"]

    # A new operator process knows only what the cluster holds: status.rollout and the revision Deployments.
    async with run_operator():
        await eventually(lambda: replicas()[v2] == 2)  # still step 2's split, not step 1's
        assert status()["rollout"]["step"] == 1
        assert status()["rollout"]["stepStartedAt"] == before["stepStartedAt"]  # its pause's clock kept
        await serve(controller, objects, v2, 2)
        await eventually(lambda: replicas() == {v1: 2, v2: 2})
        # The rest of the pause, then 100%. (The new operator anchors its clock to the wall clock, which the fake
        # loop clock of the first one did not move: here the pause restarts in effect; in a real restart the two
        # clocks advance together.)
        await eventually(lambda: replicas()[v2] == 4, within=300)
    assert posted(cluster, "RolloutStarted") and len(posted(cluster, "RolloutStarted")) == 1  # not started again
