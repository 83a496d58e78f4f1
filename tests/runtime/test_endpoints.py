"""Every HTTP endpoint of the real server (a subprocess on 127.0.0.1), as a client sees it."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import requests


def test_health_answers_live_and_ready(mlp_server):
    assert requests.get(f"{mlp_server.url}/v2/health/live").json() == {"live": True}
    ready = requests.get(f"{mlp_server.url}/v2/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True}
    assert requests.get(f"{mlp_server.url}/").json() == {"status": "alive"}


def test_server_metadata_names_the_extensions(mlp_server):
    metadata = requests.get(f"{mlp_server.url}/v2").json()
    assert metadata["name"] == "kubeserve"
    assert metadata["version"]
    assert {"binary_tensor_data", "classification", "model_configuration", "parameters", "statistics"} <= set(
        metadata["extensions"]
    )


@pytest.mark.parametrize("path", ["/v2/models/mlp", "/v2/models/mlp/versions/1"])
def test_model_metadata_describes_tensors(mlp_server, path):
    metadata = requests.get(mlp_server.url + path).json()
    assert metadata == {
        "name": "mlp",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 32]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
        "parameters": {"precision": "FP32", "quantization": "none", "precompiled": False},
    }


@pytest.mark.parametrize("path", ["/v2/models/mlp/ready", "/v2/models/mlp/versions/1/ready"])
def test_model_ready(mlp_server, path):
    response = requests.get(mlp_server.url + path)
    assert response.status_code == 200
    assert response.json()["ready"] is True


@pytest.mark.parametrize(
    ("method", "path", "message"),
    [
        ("GET", "/v2/models/other", "Request for unknown model: 'other'"),
        ("GET", "/v2/models/other/ready", "Request for unknown model: 'other'"),
        ("GET", "/v2/models/other/config", "Request for unknown model: 'other'"),
        ("POST", "/v2/models/other/infer", "Request for unknown model: 'other'"),
        ("GET", "/v2/models/other/stats", "Request for unknown model: 'other'"),
        ("GET", "/v2/models/mlp/versions/7/stats", "Request for unknown model: 'mlp' version '7'"),
        ("GET", "/v2/models/mlp/versions/7", "Request for unknown model: 'mlp' version '7'"),
        ("GET", "/v2/models/mlp/versions/7/ready", "Request for unknown model: 'mlp' version '7'"),
        ("POST", "/v2/models/mlp/versions/7/infer", "Request for unknown model: 'mlp' version '7'"),
        ("GET", "/v1/models/other", "Request for unknown model: 'other'"),
        ("POST", "/v1/models/other:predict", "Request for unknown model: 'other'"),
        ("GET", "/v3/anything", "no such endpoint"),
    ],
)
def test_unknown_things_are_404_with_a_json_error(mlp_server, method, path, message):
    response = requests.request(method, mlp_server.url + path, json={"inputs": []})
    assert response.status_code == 404
    # Triton's clients look for the message at the start.
    assert response.json()["error"].startswith(message)


def test_wrong_method_is_405_with_a_json_error(mlp_server):
    response = requests.get(f"{mlp_server.url}/v2/models/mlp/infer")
    assert response.status_code == 405
    assert "not allowed" in response.json()["error"]
    assert "POST" in response.headers["Allow"]


def test_model_config_reports_the_batching_in_force(start_runtime):
    server = start_runtime(
        "mlp",
        "--max-batch-size", "16",
        "--max-queue-delay-microseconds", "200",
        "--preferred-batch-size", "4,8",
        "--max-queue-size", "64",
        "--default-timeout-microseconds", "5000000",
        "--instance-count", "2",
    ).wait_ready()  # fmt: skip
    config = requests.get(f"{server.url}/v2/models/mlp/config").json()
    assert config["name"] == "mlp"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 16
    assert config["input"] == [{"name": "features", "data_type": "TYPE_FP32", "dims": [32]}]
    assert config["output"] == [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]}]
    assert config["instance_group"][0]["count"] == 2
    assert config["dynamic_batching"] == {
        "preferred_batch_size": [4, 8],
        "max_queue_delay_microseconds": 200,
        "default_queue_policy": {
            "timeout_action": "REJECT",
            "default_timeout_microseconds": 5000000,
            "allow_timeout_override": True,
            "max_queue_size": 64,
        },
    }


def test_infer_accepts_flat_and_nested_data(mlp_server, reference):
    features = np.random.default_rng(3).random((3, 32), dtype=np.float32)
    expected = reference("mlp", {"features": features})[0]
    for data in (features.ravel().tolist(), features.tolist()):
        body = {"inputs": [{"name": "features", "shape": [3, 32], "datatype": "FP32", "data": data}]}
        response = requests.post(f"{mlp_server.url}/v2/models/mlp/infer", json=body)
        assert response.status_code == 200, response.text
        (output,) = response.json()["outputs"]
        assert output["name"] == "probabilities"
        assert output["datatype"] == "FP32"
        assert output["shape"] == [3, 10]
        np.testing.assert_allclose(np.array(output["data"], dtype=np.float32).reshape(3, 10), expected, rtol=1e-6)


def test_infer_echoes_id_and_keeps_parameters(mlp_server, v2_body):
    body = v2_body("features", np.ones((1, 32), np.float32), id="req-42", parameters={"tenant": "blue", "n": 3})
    answer = requests.post(f"{mlp_server.url}/v2/models/mlp/versions/1/infer", json=body).json()
    assert answer["id"] == "req-42"
    assert answer["model_name"] == "mlp"
    assert answer["model_version"] == "1"
    assert answer["parameters"] == {"tenant": "blue", "n": 3}


def test_server_timing_reports_each_stage(mlp_server, v2_body):
    response = requests.post(f"{mlp_server.url}/v2/models/mlp/infer", json=v2_body("features", np.ones((2, 32))))
    timings = {}
    for part in response.headers["Server-Timing"].split(","):
        name, duration = part.strip().split(";dur=")
        timings[name] = float(duration)
    assert set(timings) == {"deserialize", "queue", "compute", "serialize", "total"}
    assert all(value >= 0 for value in timings.values())
    assert timings["total"] >= timings["compute"]


def test_outputs_selection_returns_only_what_was_asked(start_runtime):
    server = start_runtime("pair").wait_ready()
    a = np.array([[1, 5, 3]], np.float32)
    b = np.array([[2, 2, 3]], np.float32)
    body = {
        "inputs": [
            {"name": "a", "shape": [1, 3], "datatype": "FP32", "data": a.ravel().tolist()},
            {"name": "b", "shape": [1, 3], "datatype": "FP32", "data": b.ravel().tolist()},
        ],
        "outputs": [{"name": "greater"}],
    }
    outputs = requests.post(f"{server.url}/v2/models/pair/infer", json=body).json()["outputs"]
    assert outputs == [{"name": "greater", "datatype": "BOOL", "shape": [1, 3], "data": [False, True, False]}]


def _binary_body(document: dict, *tensors: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(document).encode()
    return header + b"".join(tensors), {"Inference-Header-Content-Length": str(len(header))}


def test_binary_tensors_both_ways(mlp_server, reference):
    features = np.random.default_rng(4).random((2, 32), dtype=np.float32)
    document = {
        "inputs": [{"name": "features", "shape": [2, 32], "datatype": "FP32", "parameters": {"binary_data_size": 256}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
    body, headers = _binary_body(document, features.tobytes())
    response = requests.post(f"{mlp_server.url}/v2/models/mlp/infer", data=body, headers=headers)
    assert response.status_code == 200, response.text
    header_length = int(response.headers["Inference-Header-Content-Length"])
    answer = json.loads(response.content[:header_length])
    (output,) = answer["outputs"]
    assert output["parameters"] == {"binary_data_size": 80}
    assert "data" not in output
    values = np.frombuffer(response.content[header_length:], dtype="<f4").reshape(2, 10)
    np.testing.assert_allclose(values, reference("mlp", {"features": features})[0], rtol=1e-6)


def test_binary_data_output_applies_to_every_output(mlp_server):
    body = {
        "inputs": [{"name": "features", "shape": [1, 32], "datatype": "FP32", "data": [0.5] * 32}],
        "parameters": {"binary_data_output": True},
    }
    response = requests.post(f"{mlp_server.url}/v2/models/mlp/infer", json=body)
    header_length = int(response.headers["Inference-Header-Content-Length"])
    assert len(response.content) == header_length + 40
    assert struct.unpack("<10f", response.content[header_length:])


def test_v1_predict_and_status(mlp_server, reference):
    features = np.random.default_rng(5).random((4, 32), dtype=np.float32)
    response = requests.post(f"{mlp_server.url}/v1/models/mlp:predict", json={"instances": features.tolist()})
    assert response.status_code == 200, response.text
    predictions = np.array(response.json()["predictions"], dtype=np.float32)
    np.testing.assert_allclose(predictions, reference("mlp", {"features": features})[0], rtol=1e-6)
    assert requests.get(f"{mlp_server.url}/v1/models/mlp").json() == {"name": "mlp", "ready": True}


def test_v1_with_several_inputs_and_outputs(start_runtime):
    server = start_runtime("pair").wait_ready()
    instances = [{"a": [1, 2, 3], "b": [3, 2, 1]}, {"a": [0, 0, 9], "b": [1, 1, 1]}]
    response = requests.post(f"{server.url}/v1/models/pair:predict", json={"instances": instances})
    assert response.json() == {
        "predictions": [
            {"sum": [4.0, 4.0, 4.0], "greater": [False, False, True]},
            {"sum": [1.0, 1.0, 10.0], "greater": [False, False, True]},
        ]
    }
    missing = requests.post(f"{server.url}/v1/models/pair:predict", json={"instances": [{"a": [1, 2, 3]}]})
    assert missing.status_code == 400
    assert "needs input 'b'" in missing.json()["error"]


def test_a_model_without_a_batch_dimension_runs_unbatched(start_runtime):
    server = start_runtime("fixed", "--max-batch-size", "8").wait_ready()
    assert requests.get(f"{server.url}/v2/models/fixed/config").json()["max_batch_size"] == 0
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    body = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": x.ravel().tolist()}]}
    output = requests.post(f"{server.url}/v2/models/fixed/infer", json=body).json()["outputs"][0]
    assert output["data"] == (x * 2).ravel().tolist()
    body["inputs"][0].update(shape=[1, 3], data=[1, 2, 3])
    wrong = requests.post(f"{server.url}/v2/models/fixed/infer", json=body)
    assert wrong.status_code == 400
    assert "does not fit the model's [2, 3]" in wrong.json()["error"]
