"""Bad input gets the right status and a JSON error, and never costs another caller their answer."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import numpy as np
import pytest
import requests

GOOD_INPUT = {"name": "features", "shape": [1, 32], "datatype": "FP32", "data": [0.5] * 32}


def _with_input(**changes) -> dict:
    return {"inputs": [{**GOOD_INPUT, **changes}]}


def _binary(document: dict, payload: bytes, declared: int | str | None = None) -> tuple[bytes, dict]:
    header = json.dumps(document).encode()
    length = len(header) if declared is None else declared
    return header + payload, {"Inference-Header-Content-Length": str(length)}


BINARY_INPUT = {"name": "features", "shape": [1, 32], "datatype": "FP32", "parameters": {"binary_data_size": 128}}

# (case, body or (body, headers), status, what the error says)
CASES = [
    ("malformed JSON", b'{"inputs": [', 400, "not valid JSON"),
    ("not an object", b"[1, 2]", 400, "must be a JSON object"),
    ("no inputs", {"outputs": []}, 400, "inputs must be a non-empty list"),
    ("unknown input", _with_input(name="pixels"), 400, "unknown input 'pixels'"),
    ("wrong datatype", _with_input(datatype="FP64"), 400, "datatype FP64 does not match the model's FP32"),
    ("unknown datatype", _with_input(datatype="FLOAT"), 400, "unknown datatype 'FLOAT'"),
    ("shape against model", _with_input(shape=[1, 31], data=[0.5] * 31), 400, "does not fit the model's [-1, 32]"),
    ("data length", _with_input(data=[0.5] * 31), 400, "needs 32 elements, data has 31"),
    ("ragged data", _with_input(shape=[2, 32], data=[[0.5] * 32, [0.5] * 31]), 400, "not a regular"),
    ("strings as numbers", _with_input(data=["x"] * 32), 400, "strings, not FP32"),
    ("negative dimension", _with_input(shape=[-1, 32]), 400, "non-negative integers"),
    ("no data", {"inputs": [{k: v for k, v in GOOD_INPUT.items() if k != "data"}]}, 400,
     "neither data nor binary_data_size"),
    ("input twice", {"inputs": [GOOD_INPUT, GOOD_INPUT]}, 400, "given twice"),
    ("too many rows", _with_input(shape=[40, 32], data=[0.5] * 40 * 32), 400, "exceed the model's max_batch_size"),
    ("unknown output", {"inputs": [GOOD_INPUT], "outputs": [{"name": "logits"}]}, 400, "unknown output 'logits'"),
    ("classification of none", {"inputs": [GOOD_INPUT], "outputs": [{"name": "probabilities",
     "parameters": {"classification": 0}}]}, 400, "classification must be a whole number of classes, at least 1"),
    ("base64 for numbers", _with_input(parameters={"content_type": "base64"}), 400,
     "content_type base64 is for BYTES data, not FP32"),
    ("an image for a model without images", (b"\xff\xd8\xff", {"Content-Type": "image/jpeg"}), 400,
     "a body that is an image needs a model whose one input is an image"),
    ("bad priority", {"inputs": [GOOD_INPUT], "parameters": {"priority": -1}}, 400, "'priority' must be"),
    ("bad timeout", {"inputs": [GOOD_INPUT], "parameters": {"timeout": "soon"}}, 400, "'timeout' must be"),
    ("id not a string", {"inputs": [GOOD_INPUT], "id": 7}, 400, "id must be a string"),
    ("header length beyond body", _binary({"inputs": [BINARY_INPUT]}, b"\0" * 128, declared=10_000), 400,
     "Inference-Header-Content-Length is 10000"),
    ("header length not a number", _binary({"inputs": [BINARY_INPUT]}, b"\0" * 128, declared="lots"), 400,
     "must be an integer"),
    ("binary shorter than declared", _binary({"inputs": [BINARY_INPUT]}, b"\0" * 100), 400,
     "runs past the end of the body"),
    ("binary size against shape", _binary({"inputs": [{**BINARY_INPUT, "parameters": {"binary_data_size": 64}}]},
     b"\0" * 64), 400, "binary_data_size is 64 bytes, but FP32 [1, 32] takes 128"),
    ("binary bytes nobody claims", _binary({"inputs": [BINARY_INPUT]}, b"\0" * 130), 400,
     "2 bytes of binary data that no input claims"),
    ("data and binary both", _binary({"inputs": [{**BINARY_INPUT, "data": [1]}]}, b"\0" * 128), 400,
     "both data and binary_data_size"),
]  # fmt: skip


def _send(url: str, body) -> requests.Response:
    if isinstance(body, tuple):
        payload, headers = body
        return requests.post(url, data=payload, headers=headers)
    if isinstance(body, bytes):
        return requests.post(url, data=body)
    return requests.post(url, json=body)


@pytest.mark.parametrize(("case", "body", "status", "message"), CASES, ids=[case[0] for case in CASES])
def test_bad_request_is_answered_clearly(mlp_server, case, body, status, message):
    response = _send(f"{mlp_server.url}/v2/models/mlp/infer", body)
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("application/json")
    assert message in response.json()["error"]
    # ...and the server goes on serving.
    assert _send(f"{mlp_server.url}/v2/models/mlp/infer", {"inputs": [GOOD_INPUT]}).status_code == 200


def test_missing_input_of_several(start_runtime):
    server = start_runtime("pair").wait_ready()
    body = {"inputs": [{"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    response = requests.post(f"{server.url}/v2/models/pair/infer", json=body)
    assert response.status_code == 400
    assert response.json()["error"] == "missing inputs: b"


def test_inputs_disagreeing_on_rows(start_runtime):
    server = start_runtime("pair").wait_ready()
    body = {"inputs": [{"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},
                       {"name": "b", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3] * 2}]}  # fmt: skip
    response = requests.post(f"{server.url}/v2/models/pair/infer", json=body)
    assert response.status_code == 400
    assert "disagree on the batch" in response.json()["error"]


def test_oversized_body_is_413(start_runtime):
    server = start_runtime("mlp", "--max-request-bytes", "4096").wait_ready()
    body = {"inputs": [{**GOOD_INPUT, "shape": [30, 32], "data": [0.123456789] * 30 * 32}]}
    response = requests.post(f"{server.url}/v2/models/mlp/infer", json=body)
    assert response.status_code == 413
    assert "max_request_bytes (4096 bytes)" in response.json()["error"]
    assert requests.post(f"{server.url}/v2/models/mlp/infer", json={"inputs": [GOOD_INPUT]}).status_code == 200


def test_bad_v1_requests(mlp_server):
    url = f"{mlp_server.url}/v1/models/mlp:predict"
    assert 'non-empty "instances"' in requests.post(url, json={"inputs": []}).json()["error"]
    wrong = requests.post(url, json={"instances": [[0.5] * 31]})
    assert wrong.status_code == 400
    assert "does not fit the model's [-1, 32]" in wrong.json()["error"]


async def test_bad_requests_are_refused_before_joining_a_batch(serve_in_process, reference):
    """With the model held busy, bad requests are still answered at once; good ones queued beside them
    all get their own correct answers once the model is free."""
    server = await serve_in_process("mlp")
    url = f"{server.url}/v2/models/mlp/infer"
    rng = np.random.default_rng(11)
    async with aiohttp.ClientSession() as session:
        server.gate.close()
        first = asyncio.create_task(session.post(url, json={"inputs": [GOOD_INPUT]}))
        await server.gate.wait_entered()

        good = [rng.random((int(rows), 32), dtype=np.float32) for rows in rng.integers(1, 4, size=8)]
        good_calls = [
            asyncio.create_task(session.post(url, json={"inputs": [{**GOOD_INPUT, "shape": list(x.shape),
                                                                    "data": x.ravel().tolist()}]}))
            for x in good
        ]  # fmt: skip
        await server.until_queued(len(good))
        for _case, body, status, message in CASES[:10]:
            response = await session.post(url, data=body if isinstance(body, bytes) else json.dumps(body))
            assert response.status == status
            assert message in (await response.json())["error"]
        assert server.batcher.queued == len(good)

        server.gate.open()
        assert (await first).status == 200
        for x, call in zip(good, good_calls, strict=True):
            response = await call
            assert response.status == 200
            values = (await response.json())["outputs"][0]["data"]
            np.testing.assert_allclose(
                np.array(values, np.float32).reshape(-1, 10), reference("mlp", {"features": x})[0], rtol=1e-5
            )
