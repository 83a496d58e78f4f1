"""End to end on kind: install the chart, apply the CPU sample, get answers through its Service (bursts with gaps,
through the sample's batching window), delete it. Then the same model quantized and precompiled by the init
container, served by two workers per pod: INT8 in status and in the model's metadata, and one pod's metrics summed
over its workers. Then the processing samples: raw rows into the composed tabular model, a JPEG into the image
sample with its labels out.

Runs with `make e2e` where Docker works (it builds both images and creates a throwaway kind cluster). Anywhere
else, `make test` included, it is collected and skipped with one line that says why.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from kind_cluster import REPO, SAMPLE, apply_ready, cpu_sample, docker_problem  # bench/, put on sys.path above

pytestmark = pytest.mark.e2e

CHILD_KINDS = "configmaps,deployments,services,horizontalpodautoscalers"


_problem = docker_problem()
if _problem is not None:
    pytest.skip(f"kind end-to-end test needs Docker, which is not usable here ({_problem})", allow_module_level=True)
if os.environ.get("KUBESERVE_E2E") != "1":
    pytest.skip("kind end-to-end test: Docker works here; run it with `make e2e`", allow_module_level=True)


def owned_children(cluster, namespace: str, owner_uid: str) -> list[str]:
    """The objects whose owner reference points at the InferenceService, as kind/name."""
    listed = json.loads(cluster.kubectl("get", CHILD_KINDS, "-n", namespace, "-o", "json"))
    return sorted(
        f"{item['kind'].lower()}/{item['metadata']['name']}"
        for item in listed["items"]
        if any(owner["uid"] == owner_uid for owner in item["metadata"].get("ownerReferences", []))
    )


def expected_probabilities(features: np.ndarray) -> np.ndarray:
    """What the bundled MLP computes, run here with onnxruntime: the served model must agree."""
    import onnxruntime
    from kubeserve.runtime.samples import build_mlp

    session = onnxruntime.InferenceSession(build_mlp().SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"features": features})[0]


def infer(port: int, model: str, features: np.ndarray, timeout: float = 60) -> dict:
    body = {"inputs": [{"name": "features", "shape": list(features.shape), "datatype": "FP32",
                        "data": features.ravel().tolist()}]}  # fmt: skip
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/{model}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def get_json(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as response:
        return json.load(response)


def test_a_cpu_inference_service_answers_v2_requests_and_leaves_nothing_behind(cluster, images):
    sample = cpu_sample()
    name, namespace, model = sample.name, sample.namespace, sample.model

    cluster.install_chart(images)
    try:
        status = apply_ready(cluster, SAMPLE)
        assert status["status"]["url"] == f"http://{name}.{namespace}.svc.cluster.local"
        children = owned_children(cluster, namespace, status["metadata"]["uid"])
        assert {child.split("/")[0] for child in children} >= {"configmap", "deployment", "service"}
        # The Service NAME spans every revision (each also has its own, NAME-REVISION): clients use NAME.
        service = f"service/{name}"
        assert service in children

        features = np.linspace(-1.0, 1.0, 3 * 32, dtype=np.float32).reshape(3, 32)
        with cluster.port_forward(namespace, service) as port:
            answer = infer(port, model, features)
            # The sample's batching window, the way traffic comes: bursts, then idle gaps. A request that
            # arrives when nothing follows must still leave the queue after its window.
            rng = np.random.default_rng(6)
            with ThreadPoolExecutor(16) as pool:
                for _ in range(10):
                    burst = int(rng.integers(1, 17))
                    answers = list(pool.map(lambda _: infer(port, model, features[:1], timeout=5), range(burst)))
                    assert all(reply["outputs"][0]["shape"] == [1, 10] for reply in answers)
                    time.sleep(rng.uniform(0.005, 0.05))  # load shape: the batcher goes idle in between
        (output,) = [output for output in answer["outputs"] if output["name"] == "probabilities"]
        assert output["shape"] == [3, 10]
        served = np.asarray(output["data"], dtype=np.float32).reshape(3, 10)
        np.testing.assert_allclose(served, expected_probabilities(features), rtol=1e-4, atol=1e-5)
    except AssertionError as error:
        raise AssertionError(f"{error}\n\n{cluster.diagnostics(namespace)}") from error

    cluster.kubectl("delete", "-n", namespace, f"inferenceservice/{name}", "--timeout=180s", timeout=200)
    # Garbage collection follows the owner references; every child must go.
    cluster.kubectl("wait", "-n", namespace, "--for=delete", *children, "--timeout=180s", timeout=200)
    assert owned_children(cluster, namespace, status["metadata"]["uid"]) == []


# Within this of FP32 (tests/runtime/test_optimize.py measures the bundled MLP's INT8 answers at about 0.003).
INT8_TOLERANCE = 0.05


def test_a_quantized_model_served_by_two_workers_says_int8_and_reports_one_pod(cluster, images, tmp_path):
    sample = yaml.safe_load(SAMPLE.read_text())
    namespace = sample["metadata"].get("namespace", "default")
    name = "mlp-int8"
    sample["metadata"]["name"] = name
    sample["spec"]["model"].update(
        name="mlp", size="87Ki", optimization={"quantization": "dynamicInt8", "precompile": True}
    )
    sample["spec"]["runtime"] = {
        "workers": 2,
        "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "768Mi"}},
    }
    sample["spec"].pop("autoscaling")  # one pod: the metrics below are that pod's
    sample["spec"]["replicas"] = 1

    cluster.install_chart(images)
    try:
        manifest = tmp_path / f"{name}.yaml"
        manifest.write_text(yaml.safe_dump(sample))
        status = apply_ready(cluster, manifest)
        assert status["status"]["precision"] == "INT8"
        memory = [c for c in status["status"]["conditions"] if c["type"] == "MemoryLimitSufficient"]
        assert [c["reason"] for c in memory] == ["MemoryLimitSufficient"]
        children = owned_children(cluster, namespace, status["metadata"]["uid"])
        service = f"service/{name}"
        assert service in children

        features = np.linspace(-1.0, 1.0, 3 * 32, dtype=np.float32).reshape(3, 32)
        sent = 20
        with cluster.port_forward(namespace, service) as port:
            parameters = get_json(port, "/v2/models/mlp")["parameters"]
            assert parameters == {"precision": "INT8", "quantization": "dynamicInt8", "precompiled": True}
            answers = [infer(port, "mlp", features) for _ in range(sent)]  # a connection each: both workers serve
            statistics = get_json(port, "/v2/models/mlp/stats")["model_stats"][0]
            assert statistics["inference_count"] == 3 * sent  # rows, summed over the workers
        for answer in answers:
            (output,) = [output for output in answer["outputs"] if output["name"] == "probabilities"]
            served = np.asarray(output["data"], dtype=np.float32).reshape(3, 10)
            np.testing.assert_allclose(served, expected_probabilities(features), atol=INT8_TOLERANCE)
    except AssertionError as error:
        raise AssertionError(f"{error}\n\n{cluster.diagnostics(namespace)}") from error

    cluster.kubectl("delete", "-n", namespace, f"inferenceservice/{name}", "--timeout=180s", timeout=200)


def post(port: int, path: str, body: bytes, content_type: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, headers={"Content-Type": content_type}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def name_and_namespace(applied: dict) -> tuple[str, str]:
    """An object's name and namespace."""
    return applied["metadata"]["name"], applied["metadata"]["namespace"]


def test_the_processing_samples_take_raw_rows_and_images_and_answer_as_their_pipelines(cluster, images):
    """samples/isvc-tabular.yaml (scikit-learn preprocessing composed into the model by the init container) and
    samples/isvc-image.yaml (JPEG in, decoded in the pod; labels out): their settings as users copy them."""
    from image_path import photo
    from kubeserve.runtime.samples import (
        CNN_LABELS,
        tabular_pipeline,
        tabular_rows,
    )
    from payloads import tabular_inputs

    cluster.install_chart(images)
    namespace = "default"
    try:
        name, namespace = name_and_namespace(apply_ready(cluster, REPO / "samples" / "isvc-tabular.yaml"))
        rows, _fraud = tabular_rows(16, seed=5)
        with cluster.port_forward(namespace, f"service/{name}") as port:
            answer = post(
                port,
                f"/v2/models/{name}/infer",
                json.dumps({"inputs": tabular_inputs(rows)}).encode(),
                "application/json",
            )
        (served,) = [output for output in answer["outputs"] if output["name"] == "probabilities"]
        probabilities = np.asarray(served["data"]).reshape(served["shape"])
        np.testing.assert_allclose(probabilities, tabular_pipeline().predict_proba(rows), atol=1e-5)

        name, namespace = name_and_namespace(apply_ready(cluster, REPO / "samples" / "isvc-image.yaml"))
        jpeg = photo()
        body = json.dumps(
            {
                "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                            "parameters": {"binary_data_size": len(jpeg) + 4}}],
                "outputs": [{"name": "logits", "parameters": {"classification": 3, "binary_data": False}}],
            }
        ).encode()  # fmt: skip
        with cluster.port_forward(namespace, f"service/{name}") as port:
            answer = post_binary(port, f"/v2/models/{name}/infer", body, len(jpeg).to_bytes(4, "little") + jpeg)
        (top,) = answer["outputs"]
        assert top["datatype"] == "BYTES" and top["shape"] == [1, 3]
        labels = [entry.split(":")[2] for entry in top["data"]]
        assert len(set(labels)) == 3 and set(labels) <= set(CNN_LABELS)
    except AssertionError as error:
        raise AssertionError(f"{error}\n\n{cluster.diagnostics(namespace)}") from error
    for sample in ("isvc-tabular.yaml", "isvc-image.yaml"):
        cluster.kubectl("delete", "-n", namespace, "-f", REPO / "samples" / sample, "--timeout=180s", timeout=200)


def post_binary(port: int, path: str, header: bytes, tensors: bytes) -> dict:
    """A V2 request with binary tensors after its JSON header (Triton's binary extension)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=header + tensors,
        headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)
