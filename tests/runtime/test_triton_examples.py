"""What Triton's own example clients (``tritonclient``'s Python examples) do, against the real runtime
serving the models they expect: ``simple`` (INT32 sum and difference) and ``simple_string`` (the same on
BYTES holding numbers as text)."""

from __future__ import annotations

import gzip
import json
import time
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
import requests
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

ROWS = 16


@pytest.fixture
def client(simple_server) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(simple_server.address, concurrency=4)
    yield client
    client.close()


def simple_inputs(binary: tuple[bool, bool] = (True, True)) -> tuple[list[triton.InferInput], np.ndarray, np.ndarray]:
    """``INPUT0`` = 0..15, ``INPUT1`` = all ones, as in simple_http_infer_client.py."""
    input0 = np.arange(ROWS, dtype=np.int32).reshape(1, ROWS)
    input1 = np.ones((1, ROWS), dtype=np.int32)
    tensors = []
    for index, (data, as_binary) in enumerate(zip((input0, input1), binary, strict=True)):
        tensor = triton.InferInput(f"INPUT{index}", [1, ROWS], "INT32")
        tensor.set_data_from_numpy(data, binary_data=as_binary)
        tensors.append(tensor)
    return tensors, input0, input1


def check_simple(result: triton.InferResult, input0: np.ndarray, input1: np.ndarray) -> None:
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), input0 + input1)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), input0 - input1)


def test_mixed_binary_and_json_inputs_and_outputs_in_one_request(client):
    inputs, input0, input1 = simple_inputs(binary=(True, False))
    outputs = [
        triton.InferRequestedOutput("OUTPUT0", binary_data=True),
        triton.InferRequestedOutput("OUTPUT1", binary_data=False),
    ]
    result = client.infer("simple", inputs, outputs=outputs)
    check_simple(result, input0, input1)
    assert result.get_output("OUTPUT0")["parameters"]["binary_data_size"] == ROWS * 4
    assert "data" in result.get_output("OUTPUT1")


def test_query_parameters_and_request_parameters(client):
    # simple_http_infer_client.py sends URL query parameters; the server must accept and ignore them.
    inputs, input0, input1 = simple_inputs()
    result = client.infer(
        "simple",
        inputs,
        query_params={"test_1": 1, "test_2": 2},
        parameters={"note": "kept", "count": 3},
        request_id="q-1",
    )
    check_simple(result, input0, input1)
    response = result.get_response()
    assert response["id"] == "q-1"
    assert response["parameters"] == {"note": "kept", "count": 3}


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
@pytest.mark.parametrize("direction", ["request", "response", "both"])
def test_compression(client, algorithm, direction):
    inputs, input0, input1 = simple_inputs()
    result = client.infer(
        "simple",
        inputs,
        request_compression_algorithm=algorithm if direction != "response" else None,
        response_compression_algorithm=algorithm if direction != "request" else None,
    )
    check_simple(result, input0, input1)


@pytest.mark.parametrize(("algorithm", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_the_server_compresses_what_the_client_accepts(simple_server, algorithm, compress):
    # tritonclient reads either answer; only the headers show the server did compress (both ways).
    body = json.dumps(
        {
            "inputs": [
                {"name": f"INPUT{i}", "shape": [1, ROWS], "datatype": "INT32", "data": list(range(ROWS))}
                for i in range(2)
            ]
        }
    ).encode()
    response = requests.post(
        f"{simple_server.url}/v2/models/simple/infer",
        data=compress(body),
        headers={"Content-Encoding": algorithm, "Accept-Encoding": algorithm, "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Encoding"] == algorithm
    assert response.json()["outputs"][0]["data"] == [2 * i for i in range(ROWS)]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_a_body_that_does_not_inflate_is_a_400(simple_server, algorithm):
    response = requests.post(
        f"{simple_server.url}/v2/models/simple/infer",
        data=b"not compressed at all",
        headers={"Content-Encoding": algorithm},
    )
    assert response.status_code == 400
    assert response.json()["error"].startswith(f"cannot read the request body (Content-Encoding: {algorithm})")


def test_uncompressed_unless_asked(simple_server):
    inputs = [{"name": f"INPUT{i}", "shape": [1, ROWS], "datatype": "INT32", "data": [1] * ROWS} for i in range(2)]
    response = requests.post(
        f"{simple_server.url}/v2/models/simple/infer",
        json={"inputs": inputs},
        headers={"Accept-Encoding": "identity"},
    )
    assert response.status_code == 200
    assert "Content-Encoding" not in response.headers


def test_async_infer(client):
    pending = []
    for _ in range(8):
        inputs, input0, input1 = simple_inputs()
        pending.append((client.async_infer("simple", inputs, request_id="a"), input0, input1))
    for request, input0, input1 in pending:
        check_simple(request.get_result(), input0, input1)


async def test_aio_client(simple_server):
    client = triton_aio.InferenceServerClient(simple_server.address)
    try:
        assert await client.is_server_live()
        assert await client.is_model_ready("simple")
        for binary in ((True, True), (False, True), (False, False)):
            inputs, input0, input1 = simple_inputs(binary)
            outputs = [triton_aio.InferRequestedOutput(f"OUTPUT{i}", binary_data=binary[i]) for i in range(2)]
            check_simple(await client.infer("simple", inputs, outputs=outputs), input0, input1)
        inputs, input0, input1 = simple_inputs()
        compressed = await client.infer(
            "simple", inputs, request_compression_algorithm="gzip", response_compression_algorithm="deflate"
        )
        check_simple(compressed, input0, input1)
        statistics = await client.get_inference_statistics("simple")
        assert statistics["model_stats"][0]["name"] == "simple"
        with pytest.raises(InferenceServerException) as raised:
            await client.get_model_metadata("missing")
        assert raised.value.message().startswith("Request for unknown model")
    finally:
        await client.close()


def test_unknown_model_errors_start_as_tritons_do(client):
    inputs, _, _ = simple_inputs()
    for call in (
        lambda: client.infer("missing", inputs),
        lambda: client.get_model_metadata("missing"),
        lambda: client.get_model_config("missing"),
        lambda: client.get_inference_statistics("missing"),
        lambda: client.get_inference_statistics("simple", "9"),
    ):
        with pytest.raises(InferenceServerException) as raised:
            call()
        assert raised.value.message().startswith("Request for unknown model"), raised.value.message()
    assert not client.is_model_ready("missing")


# -- statistics ------------------------------------------------------------------------------------


def test_statistics_count_what_was_served(start_runtime):
    server = start_runtime("simple").wait_ready()
    client = triton.InferenceServerClient(server.address)
    try:
        empty = client.get_inference_statistics("simple")["model_stats"][0]
        assert empty["inference_count"] == empty["execution_count"] == empty["last_inference"] == 0
        assert empty["batch_stats"] == []

        before_ms = time.time_ns() // 1_000_000
        # One request at a time: each is a batch of its own, so the counts are exact.
        for _ in range(3):
            inputs, _, _ = simple_inputs()
            client.infer("simple", inputs)
        pair = [triton.InferInput(f"INPUT{i}", [2, ROWS], "INT32") for i in range(2)]
        for tensor in pair:
            tensor.set_data_from_numpy(np.ones((2, ROWS), np.int32))
        client.infer("simple", pair)
        wrong = [triton.InferInput(f"INPUT{i}", [1, 3], "INT32") for i in range(2)]
        for tensor in wrong:
            tensor.set_data_from_numpy(np.ones((1, 3), np.int32))
        with pytest.raises(InferenceServerException, match="does not fit"):
            client.infer("simple", wrong)
        after_ms = time.time_ns() // 1_000_000

        for version in ("", "1"):
            (stats,) = client.get_inference_statistics("simple", version)["model_stats"]
            assert (stats["name"], stats["version"]) == ("simple", "1")
            assert stats["inference_count"] == 5  # rows, as Triton counts them
            assert stats["execution_count"] == 4
            assert before_ms <= stats["last_inference"] <= after_ms
            inference = stats["inference_stats"]
            for stage in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
                assert inference[stage]["count"] == 4, stage
            assert inference["fail"]["count"] == 1
            assert inference["success"]["ns"] > 0 and inference["fail"]["ns"] > 0
            assert inference["compute_infer"]["ns"] > 0
            # Every stage is part of the request's whole time (1 ns of rounding per request at most).
            parts = sum(inference[s]["ns"] for s in ("queue", "compute_input", "compute_infer", "compute_output"))
            assert parts <= inference["success"]["ns"] + 4
            assert [(b["batch_size"], b["compute_infer"]["count"]) for b in stats["batch_stats"]] == [(1, 3), (2, 1)]
            for batch in stats["batch_stats"]:
                assert (
                    batch["compute_input"]["count"]
                    == batch["compute_output"]["count"]
                    == batch["compute_infer"]["count"]
                )

        everything = client.get_inference_statistics()
        assert [entry["name"] for entry in everything["model_stats"]] == ["simple"]
    finally:
        client.close()


def test_statistics_are_json_with_the_triton_shape(simple_server):
    response = requests.get(f"{simple_server.url}/v2/models/stats")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    (entry,) = response.json()["model_stats"]
    assert set(entry) >= {"name", "version", "last_inference", "inference_count", "execution_count"}
    assert set(entry["inference_stats"]) >= {
        "success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
    }  # fmt: skip
    assert isinstance(entry["batch_stats"], list)


# -- BYTES holding numbers: simple_string -----------------------------------------------------------


def string_inputs(binary: bool) -> tuple[list[triton.InferInput], np.ndarray, np.ndarray]:
    """As simple_http_string_infer_client.py: numbers as text in BYTES tensors."""
    input0 = np.arange(ROWS, dtype=np.int32).reshape(1, ROWS)
    input1 = np.ones((1, ROWS), dtype=np.int32)
    tensors = []
    for index, data in enumerate((input0, input1)):
        tensor = triton.InferInput(f"INPUT{index}", [1, ROWS], "BYTES")
        tensor.set_data_from_numpy(data.astype(np.bytes_).astype(np.object_), binary_data=binary)
        tensors.append(tensor)
    return tensors, input0, input1


def check_strings(result: triton.InferResult, input0: np.ndarray, input1: np.ndarray) -> None:
    for name, expected in (("OUTPUT0", input0 + input1), ("OUTPUT1", input0 - input1)):
        as_numbers = np.array([int(item) for item in result.as_numpy(name).ravel()]).reshape(expected.shape)
        np.testing.assert_array_equal(as_numbers, expected)


def test_a_failed_synthetic_warm_up_is_a_warning_and_the_model_serves(start_runtime):
    server = start_runtime("simple_string")
    warning = server.wait_for_event("warmup_failed")
    assert warning["level"] == "WARNING"
    assert warning["source"] == "synthetic"
    assert server.wait_for_event("model_ready")["warmup"] == "failed"
    client = triton.InferenceServerClient(server.address)
    try:
        for binary in (False, True):
            inputs, input0, input1 = string_inputs(binary)
            outputs = [triton.InferRequestedOutput(f"OUTPUT{i}", binary_data=binary) for i in range(2)]
            check_strings(client.infer("simple_string", inputs, outputs=outputs), input0, input1)
    finally:
        client.close()


def test_user_warm_up_inputs_warm_the_model_up(start_runtime, tmp_path):
    warmup = tmp_path / "warmup.json"
    warmup.write_text(
        json.dumps(
            {
                "inputs": [
                    {"name": f"INPUT{i}", "shape": [2, ROWS], "datatype": "BYTES", "data": ["7"] * (2 * ROWS)}
                    for i in range(2)
                ]
            }
        )
    )
    server = start_runtime("simple_string", "--warmup-inputs-path", str(warmup))
    ready = server.wait_for_event("model_ready")
    assert ready["warmup"] == "user"
    assert not [event for event in server.events if event.get("event") == "warmup_failed"]
    client = triton.InferenceServerClient(server.address)
    try:
        inputs, input0, input1 = string_inputs(binary=True)
        check_strings(client.infer("simple_string", inputs), input0, input1)
    finally:
        client.close()
