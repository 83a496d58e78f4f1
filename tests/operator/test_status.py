"""Cluster state (Deployment and pod dicts, as the API server returns them) into status conditions."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kubeserve.operator import pod_diagnosis, status

DESIRED = status.Desired(revision="2", config_hash="h2", model_name="mlp", url="http://mlp.ml.svc.cluster.local")
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def pod(name: str, pod_status: dict, *, revision: str = "2", config_hash: str = "h2", deleting: bool = False) -> dict:
    metadata = {
        "name": name,
        "labels": {"serving.kubeserve.io/revision": revision},
        "annotations": {"serving.kubeserve.io/config-hash": config_hash},
    }
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-02T03:00:00Z"
    return {"metadata": metadata, "status": copy.deepcopy(pod_status)}


def deployment(*, replicas: int = 2, ready: int = 0, updated: int | None = None, revision: str = "2", **extra) -> dict:
    status_fields = {
        "observedGeneration": 4,
        "replicas": replicas,
        "updatedReplicas": replicas if updated is None else updated,
        "readyReplicas": ready,
        "availableReplicas": ready,
        **extra,
    }
    return {
        "metadata": {"name": "mlp", "generation": 4},
        "spec": {
            "replicas": replicas,
            "template": {
                "metadata": {
                    "labels": {"serving.kubeserve.io/revision": revision},
                    "annotations": {"serving.kubeserve.io/config-hash": "h2" if revision == "2" else "h1"},
                }
            },
        },
        "status": status_fields,
    }


def conditions(observation: status.Observation) -> dict[str, tuple[bool, str]]:
    return {c.type: (c.status, c.reason) for c in observation.conditions}


def message(observation: status.Observation, kind: str) -> str:
    return next(c.message for c in observation.conditions if c.type == kind)


@pytest.mark.parametrize(
    ("name", "reason", "words"),
    [
        ("unschedulable", "Unschedulable", "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."),
        (
            "fetch_failed",
            "ModelFetchFailed",
            "fetch https://models.example.com/m.onnx: HTTP 404 Not Found (exit code 1)",
        ),
        ("image_pull", "ImagePullBackOff", 'Back-off pulling image "kubeserve-runtime:nope"'),
        ("load_failed", "ModelLoadFailed", "Protobuf parsing failed (exit code 3)"),
        # Killed at its memory limit: the kubelet's reason, not the log lines FallbackToLogsOnError adds.
        (
            "crash_loop",
            "OOMKilled",
            "container runtime was killed for using more memory than its limit (exit code 137, OOMKilled)",
        ),
        ("settings_rejected", "RuntimeConfigRejected", "max_request_bytes: not an integer (exit code 2)"),
        ("config_error", "CreateContainerConfigError", 'secret "s3-creds" not found'),
    ],
)
def test_each_pod_failure_gets_its_reason_and_the_pods_own_message(pod_statuses, name, reason, words):
    problem = pod_diagnosis.diagnose(pod("mlp-abc", pod_statuses[name]))
    assert problem is not None
    assert problem.reason == reason
    assert problem.message.startswith("pod mlp-abc: ")
    assert words in problem.message


@pytest.mark.parametrize("name", ["serving", "loading"])
def test_running_pods_have_no_problem(pod_statuses, name):
    assert pod_diagnosis.diagnose(pod("mlp-abc", pod_statuses[name])) is None


def test_a_pod_that_recovered_after_a_crash_is_fine(pod_statuses):
    recovered = copy.deepcopy(pod_statuses["serving"])
    recovered["containerStatuses"][0]["lastState"] = {"terminated": {"exitCode": 3, "message": "load failed"}}
    assert pod_diagnosis.diagnose(pod("mlp-abc", recovered)) is None


def test_when_pods_disagree_the_furthest_from_serving_is_reported(pod_statuses):
    pods = [pod("a", pod_statuses["crash_loop"]), pod("b", pod_statuses["unschedulable"])]
    assert pod_diagnosis.worst(pods).reason == "Unschedulable"


def test_no_deployment_yet_is_pending():
    observed = status.observe(desired=DESIRED, spec_problems=[], deployment=None, pods=[])
    assert conditions(observed) == {
        "Ready": (False, "Pending"),
        "ModelLoaded": (False, "Pending"),
        "RolloutComplete": (False, "Pending"),
    }


def test_pods_loading_the_model(pod_statuses):
    observed = status.observe(
        desired=DESIRED,
        spec_problems=[],
        deployment=deployment(ready=0),
        pods=[pod("a", pod_statuses["loading"]), pod("b", pod_statuses["loading"])],
    )
    assert conditions(observed) == {
        "Ready": (False, "ModelLoading"),
        "ModelLoaded": (False, "ModelLoading"),
        "RolloutComplete": (False, "RolloutInProgress"),
    }
    assert message(observed, "ModelLoaded") == "2 pods are fetching or loading model mlp version 2"


def test_serving_and_rolled_out(pod_statuses):
    observed = status.observe(
        desired=DESIRED,
        spec_problems=[],
        deployment=deployment(ready=2),
        pods=[pod("a", pod_statuses["serving"]), pod("b", pod_statuses["serving"])],
    )
    assert all(state for state, _ in conditions(observed).values())
    assert message(observed, "Ready") == (
        "2 pods ready; V2 inference at http://mlp.ml.svc.cluster.local/v2/models/mlp/infer"
    )
    assert message(observed, "RolloutComplete") == "all 2 pods run version 2"
    assert (observed.replicas, observed.ready_replicas, observed.failure) == (2, 2, None)


def test_a_failing_new_version_leaves_the_old_one_serving(pod_statuses):
    observed = status.observe(
        desired=DESIRED,
        spec_problems=[],
        deployment=deployment(replicas=3, ready=2, updated=1),
        pods=[
            pod("old-a", pod_statuses["serving"], revision="1", config_hash="h1"),
            pod("old-b", pod_statuses["serving"], revision="1", config_hash="h1"),
            pod("new-a", pod_statuses["fetch_failed"]),
        ],
    )
    assert conditions(observed) == {
        "Ready": (True, "Serving"),
        "ModelLoaded": (False, "ModelFetchFailed"),
        "RolloutComplete": (False, "ModelFetchFailed"),
    }
    assert observed.failure.reason == "ModelFetchFailed"
    assert "new-a" in message(observed, "RolloutComplete")


def test_nothing_ready_reports_the_problem_of_any_pod(pod_statuses):
    observed = status.observe(
        desired=DESIRED,
        spec_problems=[],
        deployment=deployment(replicas=1, ready=0),
        pods=[pod("a", pod_statuses["image_pull"])],
    )
    assert conditions(observed)["Ready"] == (False, "ImagePullBackOff")


def test_the_deployment_not_yet_running_the_wanted_version_is_a_pending_rollout(pod_statuses):
    observed = status.observe(
        desired=DESIRED,
        spec_problems=[],
        deployment=deployment(ready=2, revision="1"),
        pods=[pod("a", pod_statuses["serving"], revision="1", config_hash="h1")],
    )
    assert conditions(observed)["RolloutComplete"] == (False, "RolloutPending")
    assert conditions(observed)["Ready"] == (True, "Serving")
    assert conditions(observed)["ModelLoaded"] == (False, "Pending")


def test_a_rollout_past_its_deadline():
    stuck = deployment(
        ready=0,
        updated=1,
        conditions=[
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": 'ReplicaSet "mlp-7d4" has timed out progressing.',
            }
        ],
    )
    observed = status.observe(desired=DESIRED, spec_problems=[], deployment=stuck, pods=[])
    assert conditions(observed)["RolloutComplete"] == (False, "ProgressDeadlineExceeded")
    assert message(observed, "RolloutComplete") == 'ReplicaSet "mlp-7d4" has timed out progressing.'


def test_terminating_pods_are_not_counted(pod_statuses):
    observed = status.observe(
        desired=DESIRED,
        spec_problems=[],
        deployment=deployment(replicas=1, ready=0),
        pods=[pod("old", pod_statuses["crash_loop"], deleting=True), pod("new", pod_statuses["loading"])],
    )
    assert conditions(observed)["Ready"] == (False, "ModelLoading")


def test_scaled_to_zero():
    observed = status.observe(desired=DESIRED, spec_problems=[], deployment=deployment(replicas=0), pods=[])
    assert conditions(observed)["Ready"] == (False, "ScaledToZero")
    assert conditions(observed)["RolloutComplete"] == (True, "RolloutComplete")


def test_an_invalid_spec_says_why_and_that_the_pods_keep_the_last_valid_one():
    observed = status.observe(
        desired=None,
        spec_problems=["spec.runtime.device: cuda needs a GPU", "spec.model.uri: bad"],
        deployment=deployment(ready=2),
        pods=[],
    )
    assert {reason for _, reason in conditions(observed).values()} == {"InvalidSpec"}
    assert message(observed, "Ready") == "spec.runtime.device: cuda needs a GPU; spec.model.uri: bad"
    assert message(observed, "RolloutComplete") == "the runtime pods keep their last valid spec"


def test_a_failed_apply_is_reported_unless_pods_still_serve(pod_statuses):
    refused = status.ApplyFailure("apply Deployment ml/mlp: 403 forbidden", attempt=2, retry_in=60)
    nothing = status.observe(desired=DESIRED, spec_problems=[], deployment=None, pods=[], apply_failure=refused)
    assert conditions(nothing)["Ready"] == (False, "ApplyFailed")
    assert message(nothing, "Ready") == "apply Deployment ml/mlp: 403 forbidden (attempt 2 failed; retrying in 60s)"

    serving = status.observe(
        desired=DESIRED,
        spec_problems=[],
        deployment=deployment(ready=2),
        pods=[pod("a", pod_statuses["serving"])],
        apply_failure=refused,
    )
    assert conditions(serving)["Ready"] == (True, "Serving")
    assert conditions(serving)["RolloutComplete"] == (False, "ApplyFailed")


def test_transition_times_move_only_when_a_condition_flips(pod_statuses):
    loading = status.observe(
        desired=DESIRED, spec_problems=[], deployment=deployment(ready=0), pods=[pod("a", pod_statuses["loading"])]
    )
    first = status.owned_status({}, loading, generation=4, url=DESIRED.url, now=NOW)
    again = status.owned_status(first, loading, generation=4, url=DESIRED.url, now=NOW + timedelta(minutes=5))
    assert status.changes(first, again) == {}

    serving = status.observe(
        desired=DESIRED, spec_problems=[], deployment=deployment(ready=2), pods=[pod("a", pod_statuses["serving"])]
    )
    later = status.owned_status(again, serving, generation=4, url=DESIRED.url, now=NOW + timedelta(minutes=9))
    times = {c["type"]: c["lastTransitionTime"] for c in later["conditions"]}
    assert times["Ready"] == "2026-01-02T03:13:05Z"
    assert {c["observedGeneration"] for c in later["conditions"]} == {4}
    assert set(status.changes(again, later)) == {"conditions", "readyReplicas"}


def test_the_last_failure_keeps_its_first_sighting_and_outlives_the_recovery(pod_statuses):
    failing = status.observe(
        desired=DESIRED,
        spec_problems=[],
        deployment=deployment(ready=0),
        pods=[pod("a", pod_statuses["load_failed"])],
    )
    first = status.owned_status({}, failing, generation=4, url=DESIRED.url, now=NOW)
    assert first["lastFailure"]["reason"] == "ModelLoadFailed"
    assert first["lastFailure"]["time"] == "2026-01-02T03:04:05Z"

    still = status.owned_status(first, failing, generation=4, url=DESIRED.url, now=NOW + timedelta(minutes=1))
    assert still["lastFailure"] == first["lastFailure"]

    recovered = status.observe(
        desired=DESIRED, spec_problems=[], deployment=deployment(ready=1), pods=[pod("b", pod_statuses["serving"])]
    )
    after = status.owned_status(still, recovered, generation=4, url=DESIRED.url, now=NOW + timedelta(minutes=2))
    assert after["lastFailure"] == first["lastFailure"]


def test_the_troubleshooting_page_explains_every_reason_the_status_can_show():
    page = (Path(__file__).resolve().parents[2] / "docs" / "operations" / "troubleshooting.md").read_text()
    table = page[page.index("| Reason | Means | What to do |") :].split("\n\n", 1)[0]
    documented = {name for row in table.splitlines()[2:] for name in re.findall(r"`(\w+)`", row.split("|")[1])}

    assert documented == set(status.Reason) | set(pod_diagnosis.SEVERITY)


def _hpa(condition: dict) -> dict:
    return {"status": {"currentReplicas": 1, "desiredReplicas": 1, "conditions": [condition]}}


def test_without_the_queue_delay_metric_the_autoscaler_status_says_what_to_install():
    failing = {
        "type": "ScalingActive",
        "status": "False",
        "reason": "FailedGetPodsMetric",
        "message": "the HPA was unable to compute the replica count: unable to get metric "
        "kubeserve_queue_delay_microseconds: unable to fetch metrics from custom metrics API: the server could not "
        "find the metric kubeserve_queue_delay_microseconds for pods",
    }
    view = status.autoscaler_view(_hpa(failing))

    assert view is not None
    message = view["message"]
    assert message.startswith("the queue-delay metric kubeserve_queue_delay_microseconds is not available")
    assert "prometheus-adapter" in message and "monitoring.adapterRule.enabled=true" in message
    assert message.endswith(f"The HPA says: FailedGetPodsMetric: {failing['message']}")


def test_other_reasons_the_hpa_cannot_scale_are_passed_on_as_it_says_them():
    failing = {"type": "AbleToScale", "status": "False", "reason": "FailedGetScale", "message": "not found"}

    assert status.autoscaler_view(_hpa(failing)) == {
        "currentReplicas": 1,
        "desiredReplicas": 1,
        "message": "FailedGetScale: not found",
    }
