"""Memory planned before scheduling: the estimate, the default request, MemoryLimitTooLow in status, and a pod
killed for memory explained in status in the kubelet's words."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import kubernetes_validate
import pytest
from kubeserve.operator import manifests, naming, pod_diagnosis, status
from kubeserve.operator.memory_estimate import (
    BASE_BYTES,
    BUFFERED_BYTES,
    IMAGE_BYTES_PER_PIXEL,
    MAX_IMAGE_PIXELS,
    MIB,
    OPTIMIZE_BASE_BYTES,
    OPTIMIZING,
    PER_ROW_BYTES,
    SUPERVISOR_BYTES,
    WEIGHTS,
    MemoryCheck,
    MemoryInputs,
    as_quantity,
    estimate,
    estimate_bytes,
    memory_check,
    planned_workers,
)
from kubeserve.operator.runtime_config import runtime_settings
from kubeserve.operator.settings import OperatorSettings
from kubeserve.operator.spec import parse

SETTINGS = OperatorSettings(cpu_image="registry.example/runtime:1", cuda_image="registry.example/runtime-cuda:1")
NS = "ml"
ISVCS = "serving.kubeserve.io/v1alpha1/inferenceservices"
ISVC_PATH = f"/apis/serving.kubeserve.io/v1alpha1/namespaces/{NS}/inferenceservices"


def sized(isvc_factory, size: str | None = "96Mi", optimization: dict | None = None, **spec: Any) -> dict[str, Any]:
    made = isvc_factory(**copy.deepcopy(spec))
    if size is not None:
        made["spec"]["model"]["size"] = size
    if optimization is not None:
        made["spec"]["model"]["optimization"] = optimization
    return made


def pod_spec(made: dict[str, Any]) -> dict[str, Any]:
    children = manifests.children(parse(made), SETTINGS)
    (deployment,) = [m for m in children.manifests if m["kind"] == "Deployment"]
    kubernetes_validate.validate(deployment, "1.37", strict=True)
    return deployment["spec"]["template"]["spec"]


# --- the formula ---------------------------------------------------------------------------------------------


def test_the_estimate_is_the_documented_formula():
    inputs = MemoryInputs(model_bytes=100 * MIB, quantization="none", max_batch_size=8, instance_count=2)
    assert estimate_bytes(inputs) == (BASE_BYTES + 100 * MIB * WEIGHTS["none"] + 2 * 8 * PER_ROW_BYTES + BUFFERED_BYTES)
    # maxBatchSize 0 runs each request alone: one row at a time.
    assert estimate_bytes(MemoryInputs(model_bytes=0, max_batch_size=0)) == BASE_BYTES + PER_ROW_BYTES + BUFFERED_BYTES


def test_the_estimate_holds_the_runtimes_bound_on_buffered_request_bodies():
    from kubeserve.runtime.config import RuntimeSettings

    assert RuntimeSettings.model_fields["max_buffered_request_bytes"].default == BUFFERED_BYTES
    one = MemoryInputs(model_bytes=MIB, max_batch_size=1)
    two = MemoryInputs(model_bytes=MIB, max_batch_size=1, workers=2)
    unbuffered = MemoryInputs(model_bytes=MIB, max_batch_size=1, buffered_bytes=0)
    assert estimate_bytes(one) - estimate_bytes(unbuffered) == BUFFERED_BYTES
    # Each worker holds its own: the bound is per process.
    assert estimate_bytes(two) - estimate_bytes(replace(two, buffered_bytes=0)) == 2 * BUFFERED_BYTES


def test_quantized_weights_need_a_quarter_of_the_memory():
    fp32 = MemoryInputs(model_bytes=400 * MIB, max_batch_size=1)
    int8 = MemoryInputs(model_bytes=400 * MIB, quantization="dynamicInt8", max_batch_size=1)
    assert estimate_bytes(fp32) - estimate_bytes(int8) == 400 * MIB * (WEIGHTS["none"] - WEIGHTS["dynamicInt8"])
    assert WEIGHTS["dynamicInt8"] == WEIGHTS["none"] / 4


def test_the_optimize_init_container_needs_more_than_serving_and_the_estimate_covers_it():
    serving = MemoryInputs(model_bytes=1024 * MIB, quantization="dynamicInt8", max_batch_size=1)
    optimizing = MemoryInputs(model_bytes=1024 * MIB, quantization="dynamicInt8", max_batch_size=1, optimizes=True)
    assert estimate_bytes(optimizing) == OPTIMIZE_BASE_BYTES + 1024 * MIB * OPTIMIZING["dynamicInt8"]
    assert estimate_bytes(optimizing) > estimate_bytes(serving)
    # A small model with a large batch: serving needs more than optimizing, and the estimate is that.
    batches = MemoryInputs(model_bytes=MIB, quantization="dynamicInt8", max_batch_size=64, optimizes=True)
    assert estimate_bytes(batches) == estimate_bytes(
        MemoryInputs(model_bytes=MIB, quantization="dynamicInt8", max_batch_size=64)
    )


def test_more_rows_in_flight_need_more_memory():
    one = estimate_bytes(MemoryInputs(model_bytes=MIB, max_batch_size=32))
    assert estimate_bytes(MemoryInputs(model_bytes=MIB, max_batch_size=64)) == one + 32 * PER_ROW_BYTES
    assert (
        estimate_bytes(MemoryInputs(model_bytes=MIB, max_batch_size=32, instance_count=3)) == one + 64 * PER_ROW_BYTES
    )


def test_there_is_no_estimate_without_the_model_size_or_on_a_gpu(isvc_factory):
    assert estimate(parse(sized(isvc_factory, None))) is None
    gpu = sized(isvc_factory, runtime={"resources": {"limits": {"nvidia.com/gpu": 1}}})
    assert estimate(parse(gpu)) is None
    assert estimate(parse(sized(isvc_factory, "96Mi"))) == estimate_bytes(MemoryInputs(model_bytes=96 * MIB))


def test_the_estimate_follows_the_spec(isvc_factory):
    made = sized(
        isvc_factory,
        "1Gi",
        {"quantization": "dynamicInt8"},
        batching={"maxBatchSize": 4},
        runtime={"instanceCount": 2},
    )
    expected = MemoryInputs(
        model_bytes=1024 * MIB, quantization="dynamicInt8", max_batch_size=4, instance_count=2, optimizes=True
    )
    assert estimate(parse(made)) == estimate_bytes(expected)


def _image_model(isvc_factory, resize: list[int] | None, **model: Any) -> dict[str, Any]:
    made = sized(isvc_factory, "96Mi", runtime={"resources": {"requests": {"cpu": "3"}}, "workers": 1})
    image = {} if resize is None else {"resize": resize}
    made["spec"]["model"].update(inputs=[{"name": "image", "image": image}], **model)
    return made


def test_images_being_decoded_count_once_per_processing_thread(isvc_factory):
    # Three cores for one worker: three processing threads, each decoding one request's images at a time.
    plain = parse(sized(isvc_factory, "96Mi", runtime={"resources": {"requests": {"cpu": "3"}}, "workers": 1}))
    resized = parse(_image_model(isvc_factory, [224, 224], maxImagePixels=1_000_000))
    assert runtime_settings(resized)["processing_threads"] == 3
    assert runtime_settings(resized)["max_image_pixels"] == 1_000_000
    assert estimate(resized) - estimate(plain) == 3 * 1_000_000 * IMAGE_BYTES_PER_PIXEL[True]
    # As sent (no resize) the tensor is as large as the image: more per pixel. Unset, the runtime's bound.
    as_sent = parse(_image_model(isvc_factory, None))
    assert estimate(as_sent) - estimate(plain) == 3 * MAX_IMAGE_PIXELS * IMAGE_BYTES_PER_PIXEL[False]
    assert "max_image_pixels" not in runtime_settings(as_sent)


def test_without_a_cpu_request_one_processing_thread_decodes(isvc_factory):
    made = sized(isvc_factory, "96Mi")
    made["spec"]["model"]["inputs"] = [{"name": "image", "image": {"resize": [8, 8]}}]
    assert runtime_settings(parse(made))["processing_threads"] == 1
    # A model without images keeps its config file: the runtime's choice, unless the spec says.
    assert "processing_threads" not in runtime_settings(parse(sized(isvc_factory, "96Mi")))
    handler = sized(isvc_factory, "96Mi")
    handler["spec"]["model"]["handler"] = {"class": "fraud.handlers:Explain"}
    assert "processing_threads" not in runtime_settings(parse(handler))
    handler["spec"]["runtime"] = {"processingThreads": 6}
    assert runtime_settings(parse(handler))["processing_threads"] == 6


def test_the_workers_a_memory_limit_holds_share_the_processing_threads(isvc_factory):
    # Four cores: one worker decodes four requests' images at once, two workers two each: the same in all.
    made = _image_model(isvc_factory, [224, 224], maxImagePixels=10_000_000)
    made["spec"]["runtime"] = {"resources": {"requests": {"cpu": "4"}}}

    def with_workers(workers: int) -> int:
        fixed = copy.deepcopy(made)
        fixed["spec"]["runtime"]["workers"] = workers
        return estimate(parse(fixed))

    one_worker, two_workers = with_workers(1), with_workers(2)
    made["spec"]["runtime"]["resources"]["limits"] = {"memory": f"{two_workers // MIB + 1}Mi"}
    assert planned_workers(parse(made)) == 2
    images = 4 * 10_000_000 * IMAGE_BYTES_PER_PIXEL[True]
    assert one_worker - images == (two_workers - images - SUPERVISOR_BYTES) // 2


# --- the default request -------------------------------------------------------------------------------------


def test_without_memory_request_or_limit_the_estimate_is_the_request_of_every_container(isvc_factory):
    made = sized(
        isvc_factory, optimization={"quantization": "dynamicInt8"}, runtime={"resources": {"limits": {"cpu": 1}}}
    )
    pod = pod_spec(made)
    wanted = as_quantity(estimate(parse(made)))
    (runtime,) = pod["containers"]
    assert runtime["resources"] == {"limits": {"cpu": 1}, "requests": {"memory": wanted}}
    # The optimize init container runs with the same, as the download does: the estimate covers it too.
    (optimize,) = pod["initContainers"]
    assert optimize["resources"] == runtime["resources"]


@pytest.mark.parametrize(
    "resources",
    [
        {"requests": {"memory": "64Mi"}},
        # Kubernetes requests the limit when only a limit is given (Guaranteed QoS stays Guaranteed).
        {"limits": {"memory": "4Gi"}},
        {"limits": {"memory": "128Mi"}},
    ],
)
def test_a_users_memory_request_or_limit_is_left_as_it_is(isvc_factory, resources):
    (runtime,) = pod_spec(sized(isvc_factory, runtime={"resources": copy.deepcopy(resources)}))["containers"]
    assert runtime["resources"] == resources


def test_without_a_size_nothing_is_added(isvc_factory):
    (runtime,) = pod_spec(sized(isvc_factory, None))["containers"]
    assert "resources" not in runtime


# --- the status ----------------------------------------------------------------------------------------------

DESIRED = dict(revision="2", config_hash="h2", model_name="mlp", url="http://mlp.ml.svc.cluster.local")


def observe(memory: MemoryCheck | None) -> status.Observation:
    return status.observe(desired=status.Desired(**DESIRED, memory=memory), spec_problems=[], deployment=None, pods=[])


def test_a_memory_limit_below_the_estimate_warns_with_both_numbers():
    observed = observe(MemoryCheck(estimate=372 * MIB, limit=256 * MIB))
    memory = next(c for c in observed.conditions if c.type == status.MEMORY_CONDITION)
    assert (memory.status, memory.reason) == (False, "MemoryLimitTooLow")
    assert "256Mi" in memory.message and "372Mi" in memory.message
    # A warning: the other conditions are what they would be without it.
    assert [c for c in observed.conditions if c.type != status.MEMORY_CONDITION] == list(observe(None).conditions)


@pytest.mark.parametrize(
    ("limit", "reason"),
    [(512 * MIB, "MemoryLimitSufficient"), (372 * MIB, "MemoryLimitSufficient"), (None, "NoMemoryLimit")],
)
def test_a_limit_that_covers_the_estimate_or_none_is_fine(limit, reason):
    observed = observe(MemoryCheck(estimate=372 * MIB, limit=limit))
    memory = next(c for c in observed.conditions if c.type == status.MEMORY_CONDITION)
    assert (memory.status, memory.reason) == (True, reason)
    assert "372Mi" in memory.message


def test_without_an_estimate_there_is_no_memory_condition():
    assert status.MEMORY_CONDITION not in {c.type for c in observe(None).conditions}


def test_the_check_compares_the_spec_limit(isvc_factory):
    check = memory_check(parse(sized(isvc_factory, runtime={"resources": {"limits": {"memory": "1G"}}})))
    assert check is not None and check.limit == 10**9 and not check.too_low
    check = memory_check(parse(sized(isvc_factory, runtime={"resources": {"limits": {"memory": "100Mi"}}})))
    assert check is not None and check.too_low


# A runtime container the kernel killed at its memory limit, as a kubelet reports it: waiting in CrashLoopBackOff,
# the last run terminated with reason OOMKilled and 137 (SIGKILL); with FallbackToLogsOnError the message is the
# log's tail, which says nothing of memory.
OOM_KILLED_POD = {
    "phase": "Running",
    "conditions": [
        {"type": "PodScheduled", "status": "True"},
        {"type": "Initialized", "status": "True"},
        {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady"},
        {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
    ],
    "containerStatuses": [
        {
            "name": "runtime",
            "ready": False,
            "started": False,
            "restartCount": 4,
            "image": "kubeserve-runtime:test",
            "imageID": "docker.io/library/kubeserve-runtime@sha256:0f1e",
            "containerID": "containerd://9a1b",
            "state": {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": "back-off 1m20s restarting failed container=runtime pod=mlp-1-abc-7d4-x2x_ml(0d6a)",
                }
            },
            "lastState": {
                "terminated": {
                    "exitCode": 137,
                    "reason": "OOMKilled",
                    "message": '{"level": "INFO", "logger": "kubeserve.runtime", "message": "loading model"}\n',
                    "startedAt": "2026-01-02T03:04:05Z",
                    "finishedAt": "2026-01-02T03:04:09Z",
                    "containerID": "containerd://9a1b",
                }
            },
        }
    ],
}


def test_a_pod_killed_for_memory_is_oom_killed_in_the_kubelets_words():
    problem = pod_diagnosis.diagnose({"metadata": {"name": "mlp-1-abc-7d4-x2x"}, "status": OOM_KILLED_POD})
    assert problem is not None
    assert problem.reason == "OOMKilled"
    assert problem.message == (
        "pod mlp-1-abc-7d4-x2x: container runtime was killed for using more memory than its limit "
        "(exit code 137, OOMKilled)"
    )


def test_an_optimize_container_killed_for_memory_is_oom_killed_too_and_its_other_failures_are_its_own():
    def init(terminated: dict[str, Any]) -> dict[str, Any]:
        return {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}],
            "initContainerStatuses": [
                {"name": naming.FETCH_CONTAINER, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                {
                    "name": naming.OPTIMIZE_CONTAINER,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": terminated},
                },
            ],
        }

    killed = pod_diagnosis.diagnose(
        {"metadata": {"name": "p"}, "status": init({"exitCode": 137, "reason": "OOMKilled"})}
    )
    assert killed == pod_diagnosis.PodProblem(
        "OOMKilled",
        "pod p: container optimize-model was killed for using more memory than its limit (exit code 137, OOMKilled)",
    )
    failed = pod_diagnosis.diagnose(
        {"metadata": {"name": "p"}, "status": init({"exitCode": 1, "reason": "Error", "message": "not an ONNX model"})}
    )
    assert failed == pod_diagnosis.PodProblem("ModelOptimizationFailed", "pod p: not an ONNX model (exit code 1)")


def test_an_init_container_that_failed_once_and_then_succeeded_does_not_hide_the_runtimes_failure():
    status = {
        "phase": "Running",
        "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}],
        "initContainerStatuses": [
            {
                "name": naming.OPTIMIZE_CONTAINER,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
                "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
            }
        ],
        "containerStatuses": [
            {
                "name": naming.RUNTIME_CONTAINER,
                "ready": False,
                "restartCount": 2,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {
                    "terminated": {"exitCode": 3, "reason": "Error", "message": "model failed to load: broken"}
                },
            }
        ],
    }
    problem = pod_diagnosis.diagnose({"metadata": {"name": "p"}, "status": status})
    assert problem is not None
    assert problem.reason == "ModelLoadFailed"


def test_a_runtime_that_crashes_otherwise_is_still_a_crash_loop():
    crashed = copy.deepcopy(OOM_KILLED_POD)
    crashed["containerStatuses"][0]["lastState"]["terminated"].update(exitCode=1, reason="Error", message="")
    problem = pod_diagnosis.diagnose({"metadata": {"name": "p"}, "status": crashed})
    assert problem is not None and problem.reason == "CrashLoopBackOff"


# --- the real operator ---------------------------------------------------------------------------------------


@pytest.mark.looptime
async def test_the_operator_warns_of_a_low_memory_limit_and_still_rolls_out(
    api, cluster, run_operator, eventually, objects, deployment_of, isvc_factory, condition
):
    made = sized(
        isvc_factory,
        "96Mi",
        {"quantization": "dynamicInt8"},
        runtime={"resources": {"limits": {"memory": "128Mi"}}},
    )
    async with run_operator():
        await api.create(ISVC_PATH, made)
        await eventually(
            lambda: (
                condition(objects(ISVCS, NS, "mlp")["status"], "MemoryLimitSufficient").get("reason")
                == "MemoryLimitTooLow"
            )
        )
        assert deployment_of(NS, "mlp") is not None  # a warning: the pods are created all the same

    current = objects(ISVCS, NS, "mlp")["status"]
    memory = condition(current, "MemoryLimitSufficient")
    assert memory["status"] == "False"
    assert memory["observedGeneration"] == 1
    assert "128Mi" in memory["message"]
    assert as_quantity(estimate(parse(made))) in memory["message"]
    assert current["precision"] == "INT8"
    assert condition(current, "Ready")["reason"] != "MemoryLimitTooLow"
    # And a Warning event says so once, as `kubectl describe` shows it.
    posted = cluster.requests(method="POST", resource="v1/events")
    (event,) = [request.body for request in posted if request.body.get("reason") == "MemoryLimitTooLow"]
    assert (event["type"], event["message"]) == ("Warning", memory["message"])


@pytest.mark.looptime
async def test_a_pod_killed_for_memory_shows_oom_killed_in_status(
    api, run_operator, eventually, objects, deployment_of, isvc_factory, controller, condition
):
    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory())
        await eventually(lambda: deployment_of(NS, "mlp"))
        await controller.run_pod(NS, "mlp", OOM_KILLED_POD)
        await controller.report(NS, "mlp", replicas=1, ready=0)
        await eventually(lambda: condition(objects(ISVCS, NS, "mlp")["status"], "Ready")["reason"] == "OOMKilled")

    current = objects(ISVCS, NS, "mlp")["status"]
    for kind in ("Ready", "ModelLoaded", "RolloutComplete"):
        assert condition(current, kind)["reason"] == "OOMKilled"
        assert "(exit code 137, OOMKilled)" in condition(current, kind)["message"]
    assert current["lastFailure"]["reason"] == "OOMKilled"
    assert current["precision"] == "FP32"


def _revision(made: dict[str, Any]) -> str:
    children = manifests.children(parse(made), SETTINGS)
    (deployment,) = [m for m in children.manifests if m["kind"] == "Deployment"]
    return deployment["metadata"]["name"]


def test_the_model_size_makes_a_new_revision_only_where_it_changes_the_pods(isvc_factory):
    # With the user's own memory request and limit the size only feeds the status's check: no rollout.
    own = {"resources": {"requests": {"memory": "1Gi"}, "limits": {"memory": "1Gi"}}}
    assert _revision(sized(isvc_factory, "10Mi", runtime=own)) == _revision(sized(isvc_factory, "20Mi", runtime=own))
    # Without, the estimate is the pods' memory request: a different request is a new revision.
    assert _revision(sized(isvc_factory, "10Mi")) != _revision(sized(isvc_factory, "200Mi"))
    # A fetched model's size bounds the files fetched (the pods' volume): a new revision too.
    fetched = [sized(isvc_factory, size, runtime=own) for size in ("10Mi", "20Mi")]
    for made in fetched:
        made["spec"]["model"]["uri"] = "https://models.example.com/mlp.onnx"
    assert _revision(fetched[0]) != _revision(fetched[1])


# --- the fetched files' volume -------------------------------------------------------------------------------


def test_with_a_size_the_fetched_files_volume_and_each_file_are_bounded(isvc_factory):
    made = sized(isvc_factory, "96Mi")
    made["spec"]["model"]["uri"] = "https://models.example.com/mlp.onnx"
    spec = pod_spec(made)
    (models,) = [volume for volume in spec["volumes"] if volume["name"] == "models"]
    # Each file at most the model and 1 GiB; the volume that, and as much again for what is beside the model.
    assert models["emptyDir"] == {"sizeLimit": "2144Mi"}
    (fetch,) = spec["initContainers"][:1]
    assert fetch["args"][:3] == ["fetch", "--max-bytes", str((96 + 1024) * MIB)]


def test_without_a_size_nothing_bounds_the_fetched_files(isvc_factory):
    made = sized(isvc_factory, None)
    made["spec"]["model"]["uri"] = "https://models.example.com/mlp.onnx"
    spec = pod_spec(made)
    (models,) = [volume for volume in spec["volumes"] if volume["name"] == "models"]
    assert models["emptyDir"] == {}
    assert "--max-bytes" not in spec["initContainers"][0]["args"]


def test_an_evicted_pod_says_why_in_the_kubelets_words():
    message = 'Usage of EmptyDir volume "models" exceeds the limit "2144Mi". '
    evicted = {
        "metadata": {"name": "mlp-1-abc-7d4-x2x"},
        "status": {"phase": "Failed", "reason": "Evicted", "message": message},
    }
    problem = pod_diagnosis.diagnose(evicted)
    assert problem == pod_diagnosis.PodProblem("Evicted", f"pod mlp-1-abc-7d4-x2x: {message}")
    assert pod_diagnosis.worst([evicted]) == problem
    # Its replacement serves: the evicted pod, which stays until it is collected, is no problem any more.
    ready = {"metadata": {"name": "mlp-1-abc-7d4-y3y"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    assert pod_diagnosis.worst([evicted, ready]) is None
