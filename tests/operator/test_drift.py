"""Drift, the indexes' summaries and the work queue: the pure parts of the event-driven operator."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime

import pytest
from kubeserve.operator import drift, manifests, status, summaries
from kubeserve.operator import plan as planning
from kubeserve.operator.plan import Observed, assess, render
from kubeserve.operator.settings import OperatorSettings
from kubeserve.operator.workqueue import WorkQueue

SETTINGS = OperatorSettings(cpu_image="runtime:1", cuda_image="runtime-cuda:1")
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def status_of(owner: dict, **observed: list[dict]) -> dict:
    """The status the operator would write for ``owner`` in the cluster ``observed``, its apply having gone well."""
    seen = Observed(**observed, status=owner.get("status") or {}, present=frozenset())
    done = planning.plan(owner, seen, None, NOW, renderer=lambda body: render(body, SETTINGS))
    return done.status(None, None, NOW)


@pytest.fixture
def plan(isvc_factory) -> manifests.Children:
    isvc = assess(isvc_factory()).isvc
    assert isvc is not None
    return manifests.children(isvc, SETTINGS)


def live(plan: manifests.Children, kind: str) -> dict:
    """The child as the API server returns it: what was applied, plus what the server adds."""
    manifest = next(m for m in plan.manifests if m["kind"] == kind)  # the InferenceService's Service first
    obj = copy.deepcopy(manifest)
    obj["metadata"].update(uid="u1", resourceVersion="7", creationTimestamp="2026-01-01T00:00:00Z", managedFields=[])
    if kind == "Service":
        obj["spec"].update(clusterIP="10.96.0.7", clusterIPs=["10.96.0.7"], type="ClusterIP", sessionAffinity="None")
    if kind == "Deployment":
        obj["spec"]["template"]["spec"].update(
            restartPolicy="Always", dnsPolicy="ClusterFirst", schedulerName="default"
        )
        container = obj["spec"]["template"]["spec"]["containers"][0]
        container.update(terminationMessagePath="/dev/termination-log")
        obj["status"] = {"replicas": 1, "readyReplicas": 1}
    return obj


@pytest.mark.parametrize("kind", ["ConfigMap", "Service", "Deployment"])
def test_what_the_api_server_adds_is_not_drift(plan, kind):
    assert not drift.needs_repair("MODIFIED", kind, live(plan, kind), plan)
    assert not drift.needs_repair(None, kind, live(plan, kind), plan)  # listed at start


def test_a_changed_field_is_drift(plan):
    deployment = live(plan, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] = "someone/else:latest"
    assert drift.needs_repair("MODIFIED", "Deployment", deployment, plan)

    service = live(plan, "Service")
    del service["spec"]["ports"][0]["targetPort"]
    assert drift.needs_repair("MODIFIED", "Service", service, plan)

    config_map = live(plan, "ConfigMap")
    config_map["data"]["runtime.yaml"] += "extra: 1\n"
    assert drift.needs_repair("MODIFIED", "ConfigMap", config_map, plan)


def test_a_revisions_replicas_are_the_rollouts_not_drift(plan):
    # The rollout splits the total between revisions and sets them itself (from the Deployment's status events).
    deployment = live(plan, "Deployment")
    deployment["spec"]["replicas"] = 7
    assert not drift.needs_repair("MODIFIED", "Deployment", deployment, plan)


def test_a_deleted_child_is_drift_unless_it_is_one_not_wanted(plan):
    assert drift.needs_repair("DELETED", "Service", live(plan, "Service"), plan)
    # No autoscaling: the operator itself deletes the HPA, and its deletion is no reason to act.
    hpa = {"kind": "HorizontalPodAutoscaler", "metadata": {"name": "mlp"}}
    assert not drift.needs_repair("DELETED", "HorizontalPodAutoscaler", hpa, plan)
    assert drift.needs_repair("ADDED", "HorizontalPodAutoscaler", hpa, plan)


def test_a_child_of_another_name_is_none_of_its_business(plan):
    stranger = live(plan, "Service")
    stranger["metadata"]["name"] = "mlp-extra"
    stranger["spec"]["ports"] = []
    assert not drift.needs_repair("MODIFIED", "Service", stranger, plan)
    assert not drift.needs_repair("DELETED", "Service", stranger, plan)


def test_quantities_in_the_api_servers_canonical_form_are_not_drift(isvc_factory):
    body = isvc_factory(
        runtime={"resources": {"limits": {"nvidia.com/gpu": 1, "cpu": "0.5", "memory": "1024Mi"}}},
        autoscaling={"maxReplicas": 3, "targetQueueDelaySeconds": 0.05},
    )
    isvc = assess(body).isvc
    assert isvc is not None
    plan = manifests.children(isvc, SETTINGS)
    deployment = copy.deepcopy(next(m for m in plan.manifests if m["kind"] == "Deployment"))
    hpa = copy.deepcopy(next(m for m in plan.manifests if m["kind"] == "HorizontalPodAutoscaler"))
    # As the API server stores them.
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["resources"]["limits"] = {"nvidia.com/gpu": "1", "cpu": "500m", "memory": "1Gi"}
    hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"] = "50k"  # 50000 µs
    hpa["status"] = {"currentReplicas": 1, "desiredReplicas": 1}

    assert not drift.needs_repair("MODIFIED", "Deployment", deployment, plan)
    assert not drift.needs_repair("MODIFIED", "HorizontalPodAutoscaler", hpa, plan)
    container["resources"]["limits"]["cpu"] = "2"
    hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"] = "100k"
    assert drift.needs_repair("MODIFIED", "Deployment", deployment, plan)
    assert drift.needs_repair("MODIFIED", "HorizontalPodAutoscaler", hpa, plan)


def test_contains_compares_lists_item_by_item():
    assert drift.contains({"a": [{"x": 1, "y": 2}], "b": 3}, {"a": [{"x": 1}]})
    assert not drift.contains({"a": [{"x": 1}, {"x": 2}]}, {"a": [{"x": 1}]})
    assert not drift.contains({"a": [{"x": 2}]}, {"a": [{"x": 1}]})
    assert not drift.contains({}, {"a": 1})
    assert not drift.contains({"env": [{"value": "1.0"}]}, {"env": [{"value": "1"}]})  # not a quantity: as is


def test_the_summaries_keep_what_the_status_reads(pod_statuses, isvc_factory):
    """The status from the indexes' summaries is the status from the whole objects, for every failure mode."""
    body = isvc_factory(autoscaling={"maxReplicas": 4})
    isvc = assess(body).isvc
    assert isvc is not None
    hpa = {
        **next(m for m in manifests.children(isvc, SETTINGS).manifests if m["kind"] == "HorizontalPodAutoscaler"),
        "status": {
            "currentReplicas": 2,
            "desiredReplicas": 3,
            "lastScaleTime": "2026-01-01T00:00:00Z",
            "currentMetrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": "kubeserve_queue_delay_microseconds"},
                        "current": {"averageValue": "120000"},
                    },
                }
            ],
            "conditions": [
                {"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale", "message": "ok"},
                {"type": "ScalingActive", "status": "False", "reason": "FailedGetPodsMetric", "message": "no adapter"},
                {"type": "ScalingLimited", "status": "False", "reason": "DesiredWithinRange", "message": "ok"},
            ],
        },
    }
    template = next(m for m in manifests.children(isvc, SETTINGS).manifests if m["kind"] == "Deployment")
    deployment = {
        **copy.deepcopy(template),
        "metadata": {**template["metadata"], "generation": 2, "managedFields": [{"manager": "kubeserve"}]},
        "status": {
            "observedGeneration": 2,
            "replicas": 2,
            "updatedReplicas": 2,
            "readyReplicas": 1,
            "availableReplicas": 1,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "slow"},
            ],
        },
    }
    for name, pod_status in pod_statuses.items():
        pod = {
            "metadata": {
                "name": f"mlp-{name}",
                "labels": template["spec"]["template"]["metadata"]["labels"],
                "annotations": template["spec"]["template"]["metadata"]["annotations"],
            },
            "spec": template["spec"]["template"]["spec"],
            "status": pod_status,
        }
        whole = status_of(body, deployments=[deployment], pods=[pod], autoscalers=[hpa])
        summarised = status_of(
            summaries.owner(body),
            deployments=[summaries.deployment(deployment)],
            pods=[summaries.pod(pod)],
            autoscalers=[summaries.autoscaler(hpa)],
        )
        assert summarised == whole, name
        assert whole["autoscaler"] == {
            "currentReplicas": 2,
            "desiredReplicas": 3,
            "currentQueueDelay": "0.12",
            "message": f"{status.METRIC_NOT_AVAILABLE} The HPA says: FailedGetPodsMetric: no adapter",
        }


@pytest.mark.looptime
async def test_the_work_queue_collapses_bursts_and_never_runs_a_key_twice_at_once():
    runs: list[str] = []
    running: set[str] = set()
    release, third = asyncio.Event(), asyncio.Event()

    async def process(key: str) -> None:
        assert key not in running
        running.add(key)
        runs.append(key)
        await release.wait()
        running.discard(key)
        if len(runs) == 3:
            third.set()

    queue: WorkQueue[str] = WorkQueue(process, workers=4)
    for _ in range(10):
        queue.add("a")
    queue.add("b")
    await asyncio.sleep(0)  # the workers take "a" and "b"
    assert sorted(running) == ["a", "b"]
    for _ in range(10):  # while "a" runs: once more afterwards, not ten times
        queue.add("a")
    release.set()
    await third.wait()
    left = len(queue)
    await queue.stop()

    assert sorted(runs) == ["a", "a", "b"]
    assert left == 0


@pytest.mark.looptime
async def test_the_work_queue_runs_a_key_again_when_asked_to_later():
    runs: list[float] = []
    third = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def process(key: str) -> float | None:
        runs.append(loop.time())
        if len(runs) == 3:
            third.set()
            return None
        return 5.0

    queue: WorkQueue[str] = WorkQueue(process, workers=1)
    start = loop.time()
    queue.add("a")
    await third.wait()
    await queue.stop()

    assert [round(t - start) for t in runs] == [0, 5, 10]
