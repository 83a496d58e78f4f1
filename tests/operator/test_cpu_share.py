"""spec.runtime.workers and the ONNX Runtime threads of each: set, or derived from the pod's CPU request; refused on a
GPU by the API server and the operator alike; in the runtime's config only when there is more than one worker."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubeserve.operator import manifests, naming
from kubeserve.operator import spec as spec_module
from kubeserve.operator.cpu_share import intra_op_threads
from kubeserve.operator.memory_estimate import MIB, estimate_bytes, memory_inputs, planned_workers
from kubeserve.operator.plan import assess
from kubeserve.operator.settings import OperatorSettings
from kubeserve.operator.spec import parse
from kubeserve.runtime.config import RuntimeSettings

SETTINGS = OperatorSettings(cpu_image="registry.example/runtime:1", cuda_image="registry.example/runtime-cuda:1")


def runtime(**fields: Any) -> dict[str, Any]:
    return {"runtime": fields}


@pytest.mark.parametrize(
    ("runtime_spec", "workers", "threads"),
    [
        ({}, 1, 0),  # no CPU request: one process, ONNX Runtime's own threads
        ({"resources": {"requests": {"cpu": "250m"}}}, 1, 0),  # the bundled samples
        ({"resources": {"requests": {"cpu": "1500m"}}}, 1, 0),
        ({"resources": {"requests": {"cpu": "4"}}}, 4, 1),
        ({"resources": {"requests": {"cpu": "4"}, "limits": {"cpu": "8"}}}, 4, 1),  # the request, not the limit
        ({"resources": {"limits": {"cpu": 2}}}, 2, 1),  # a limit alone is also the request
        ({"resources": {"requests": {"cpu": "8"}}, "workers": 2}, 2, 4),  # the cores shared between the workers
        ({"resources": {"requests": {"cpu": "8"}}, "workers": 2, "intraOpNumThreads": 3}, 2, 3),
        ({"resources": {"requests": {"cpu": "200"}}}, 64, 3),  # at most 64
        ({"resources": {"requests": {"cpu": "4"}, "limits": {"nvidia.com/gpu": 1}}}, 1, 0),  # one session per GPU
    ],
)
def test_workers_and_threads_come_from_the_spec_or_the_cpu_request(isvc_factory, runtime_spec, workers, threads):
    isvc = parse(isvc_factory(runtime=runtime_spec))
    assert (planned_workers(isvc), intra_op_threads(isvc, planned_workers(isvc))) == (workers, threads)


def _planned(isvc_factory, size: str | None, memory_limit: str, **runtime_spec: Any) -> int:
    model = {**MODEL, "size": size} if size else {k: v for k, v in MODEL.items() if k != "size"}
    resources = {"requests": {"cpu": "4"}, "limits": {"memory": memory_limit}}
    return planned_workers(parse(isvc_factory(model=model, runtime={"resources": resources, **runtime_spec})))


def test_workers_from_the_cpu_request_are_as_many_as_the_memory_limit_holds(isvc_factory):
    one = estimate_bytes(memory_inputs(parse(isvc_factory(model=MODEL)), workers=1))
    two = estimate_bytes(memory_inputs(parse(isvc_factory(model=MODEL)), workers=2))
    assert _planned(isvc_factory, "50Mi", "8Gi") == 4
    assert _planned(isvc_factory, "50Mi", f"{two // MIB + 1}Mi") == 2
    assert _planned(isvc_factory, "50Mi", f"{one // MIB}Mi") == 1  # not even one fits: one, and a warning
    # A limit sized for one process, and no model size to plan more against: one, as before the upgrade.
    assert _planned(isvc_factory, None, "512Mi") == 1
    # What the user asks for, they get (the memory condition warns if it does not fit).
    assert _planned(isvc_factory, "50Mi", f"{one // MIB}Mi", workers=4) == 4


def _config(made: dict[str, Any]) -> dict[str, Any]:
    children = manifests.children(parse(made), SETTINGS)
    for manifest in children.manifests:
        kubernetes_validate.validate(manifest, "1.37", strict=True)
    (config_map,) = [m for m in children.manifests if m["kind"] == "ConfigMap"]
    return yaml.safe_load(config_map["data"][naming.CONFIG_FILE])


def test_a_pod_asking_for_four_cores_runs_four_workers_of_one_thread(isvc_factory):
    config = _config(isvc_factory(runtime={"resources": {"requests": {"cpu": "4", "memory": "2Gi"}}}))  # no limit
    assert (config["workers"], config["intra_op_num_threads"]) == (4, 1)
    RuntimeSettings.model_validate(config)  # the runtime takes it


def test_a_pod_of_one_worker_keeps_the_config_and_so_the_revision_it_had(isvc_factory):
    config = _config(isvc_factory(runtime={"resources": {"requests": {"cpu": "250m"}}}))
    assert "workers" not in config
    assert config["intra_op_num_threads"] == 0
    assert _config(isvc_factory(runtime={"workers": 1})) == _config(isvc_factory())


def test_more_workers_on_a_gpu_are_refused_by_the_api_server_and_the_operator(crd_validator, isvc_factory):
    made = isvc_factory(runtime={"workers": 2, "resources": {"limits": {"nvidia.com/gpu": 1}}})
    expected = f"spec.runtime.workers: {spec_module.MSG_WORKERS_ON_GPU}"
    assert expected in crd_validator.errors(made)
    assessment = assess(made)
    assert assessment.isvc is None
    assert expected in assessment.problems
    one = isvc_factory(runtime={"workers": 1, "resources": {"limits": {"nvidia.com/gpu": 1}}})
    assert crd_validator.errors(one) == []
    assert assess(one).problems == []


def test_each_worker_counts_in_the_memory_estimate(isvc_factory):
    def estimate(**runtime_spec: Any) -> int:
        inputs = memory_inputs(parse(isvc_factory(model=MODEL, runtime=runtime_spec)))
        assert inputs is not None
        return estimate_bytes(inputs)

    one, four = estimate(workers=1), estimate(workers=4)
    assert four > 4 * one  # four sessions, and the supervisor
    assert estimate(resources={"requests": {"cpu": "4"}}) == four


MODEL = {"version": "1", "uri": "file:///opt/kubeserve/samples/mlp.onnx", "size": "50Mi"}
