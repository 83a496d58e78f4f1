"""The plan (``plan.plan``): what the operator would do for an InferenceService in a world it observes, computed
purely: no API server, no clock, no event loop. The wiring tests (test_handlers, test_rollout_wiring) check that
``apply`` does it."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from kubeserve.operator import manifests, naming, status, summaries
from kubeserve.operator.merge_patch import merge_patch
from kubeserve.operator.object_ref import ObjectRef
from kubeserve.operator.plan import Observed, Plan, plan, render
from kubeserve.operator.settings import OperatorSettings
from kubeserve.operator.status import ApplyFailure

SETTINGS = OperatorSettings(cpu_image="runtime:1", cuda_image="runtime-cuda:1")
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def planned(
    owner: dict[str, Any],
    *,
    deployments: list[dict[str, Any]] = (),  # type: ignore[assignment]
    present: frozenset[tuple[str, str]] = frozenset(),
    now: datetime = NOW,
) -> Plan:
    observed = Observed(
        deployments=[summaries.deployment(d) for d in deployments],
        pods=[],
        autoscalers=[],
        status=owner.get("status") or {},
        present=present,
    )
    return plan(summaries.owner(owner), observed, None, now, renderer=lambda body: render(body, SETTINGS))


def running(owner: dict[str, Any], *, ready: int, created: datetime = NOW) -> dict[str, Any]:
    """The revision Deployment the owner's spec renders, as the API server shows it with ``ready`` pods."""
    rendering = render(owner, SETTINGS)
    assert rendering.children is not None
    deployment = copy.deepcopy(next(m for m in rendering.children.manifests if m["kind"] == "Deployment"))
    deployment["spec"]["replicas"] = ready
    deployment["metadata"].update(generation=1, creationTimestamp=created.strftime("%Y-%m-%dT%H:%M:%SZ"))
    deployment["status"] = {
        "observedGeneration": 1,
        "replicas": ready,
        "updatedReplicas": ready,
        "readyReplicas": ready,
        "availableReplicas": ready,
    }
    return deployment


def kinds(planned: Plan) -> list[str]:
    return [manifest["kind"] for manifest in planned.children]


def test_a_new_inference_service_gets_its_children_with_the_whole_replica_total(isvc_factory):
    owner = isvc_factory(replicas=3)
    done = planned(owner)
    assert kinds(done) == ["ConfigMap", "Service", "Service", "Deployment"]
    deployment = done.children[-1]
    assert deployment["spec"]["replicas"] == 3
    assert done.scales == [] and done.prune == [] and done.absent == []
    assert done.route is None and done.starting_replicas is None and done.analysis is None
    assert done.events == ()  # a new InferenceService: no Event
    fields = done.status(None, 1, NOW)
    assert fields["observedGeneration"] == 1
    assert fields["rollout"]["revision"] == deployment["spec"]["template"]["metadata"]["labels"][naming.LABEL_REVISION]
    assert {c["type"]: c["reason"] for c in fields["conditions"]}["RolloutComplete"] == "RolloutInProgress"


def test_every_status_field_written_is_one_the_index_keeps(isvc_factory):
    owner = isvc_factory(autoscaling={"maxReplicas": 3})
    fields = planned(owner, deployments=[running(owner, ready=1)]).status(None, 1, NOW)
    assert set(fields) == set(status.OWNED_FIELDS) - {"lastFailure"}


def test_an_invalid_spec_plans_nothing_and_says_why(isvc_factory):
    owner = isvc_factory(replicas=-1)
    done = planned(owner)
    assert done.decision is None and done.children == [] and done.scales == [] and done.prune == []
    fields = done.status(None, 1, NOW)
    ready = next(c for c in fields["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "InvalidSpec" and "spec.replicas" in ready["message"]
    assert "rollout" not in fields  # the last valid spec's rollout stays as it was


def test_autoscaling_without_replicas_starts_at_its_minimum(isvc_factory):
    done = planned(isvc_factory(autoscaling={"minReplicas": 2, "maxReplicas": 5}))
    assert done.starting_replicas == 2
    assert "HorizontalPodAutoscaler" in kinds(done)
    given = planned(isvc_factory(replicas=4, autoscaling={"minReplicas": 2, "maxReplicas": 5}))
    assert given.starting_replicas is None  # the HPA's (or the user's) replicas are kept


def test_only_children_that_exist_are_deleted(isvc_factory):
    owner = isvc_factory()  # no autoscaling: an HPA is not wanted
    hpa = ObjectRef("autoscaling/v2", "HorizontalPodAutoscaler", "ml", naming.hpa_name("mlp"))
    assert planned(owner).absent == []
    assert planned(owner, present=frozenset({(hpa.kind, hpa.name)})).absent == [hpa]


def test_a_new_version_starts_a_canary_next_to_the_serving_revision(isvc_factory):
    stable = isvc_factory(replicas=10)
    serving = running(stable, ready=10, created=NOW - timedelta(hours=1))
    owner = isvc_factory(replicas=10, generation=2, model={"version": "2", "uri": "file:///opt/m.onnx"})
    done = planned(owner, deployments=[serving])
    canary = done.children[-1]
    assert canary["spec"]["replicas"] == 1  # step one: 10% of 10
    assert done.scales == []  # the stable revision keeps its 10 until the canary pod is ready
    assert done.requeue_after == 60  # step one's pause (spec.rollout's default) is what is due first
    rollout_complete = next(c for c in done.status(None, 2, NOW)["conditions"] if c["type"] == "RolloutComplete")
    assert rollout_complete["reason"] == "RolloutInProgress" and "step 1 of 3" in rollout_complete["message"]


def test_a_failed_apply_shows_in_the_status_and_holds_back_observed_generation(isvc_factory):
    owner = isvc_factory()
    done = planned(owner)
    failure = ApplyFailure("apply Deployment ml/mlp: 403 forbidden", attempt=2, retry_in=60)
    fields = done.status(failure, 1, NOW)
    assert "observedGeneration" not in fields
    conditions = {c["type"]: (c["reason"], c["message"]) for c in fields["conditions"]}
    assert conditions["RolloutComplete"] == ("ApplyFailed", failure.message)
    assert conditions["Ready"][0] == "ApplyFailed"
    held = merge_patch({}, fields)  # as the API server holds it after the patch
    assert status.changes(held, done.status(failure, 1, NOW)) == {}  # the same world, the same status: no patch


def test_pruned_revisions_lose_their_objects_the_deployment_always(isvc_factory):
    older = [isvc_factory(replicas=1, model={"version": v, "uri": "file:///opt/m.onnx"}) for v in ("1", "2", "3")]
    deployments = [running(body, ready=0, created=NOW - timedelta(hours=3 - i)) for i, body in enumerate(older)]
    owner = isvc_factory(replicas=1, model={"version": "4", "uri": "file:///opt/m.onnx"})
    serving = running(owner, ready=1, created=NOW)
    oldest = manifests.children(render(older[0], SETTINGS).assessment.isvc, SETTINGS)  # type: ignore[arg-type]
    services = frozenset(("Service", d["metadata"]["name"]) for d in [*deployments, serving])
    done = planned(owner, deployments=[*deployments, serving], present=services)
    # revisionHistoryLimit 2 keeps the two newest older revisions; the oldest goes: its Deployment (always), and of
    # its Service and ConfigMap only what exists.
    gone = {(ref.kind, ref.name) for ref in done.prune}
    name = naming.revision_object_name("mlp", oldest.revision)
    assert gone == {("Deployment", name), ("Service", name)}
