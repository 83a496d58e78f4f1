"""Batching and overload as HTTP callers see them (a real server on 127.0.0.1, real ONNX Runtime, its
compute held at a gate so that the queue's state is known)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import numpy as np
import pytest
from kubeserve.runtime.admission import Rejected, Rejection
from kubeserve.runtime.config import RuntimeSettings
from kubeserve.runtime.metrics import ServerMetrics
from kubeserve.runtime.server.inference_app import create_app
from kubeserve.runtime.server.state import ServerState
from kubeserve.runtime.server.unavailable import unavailable
from prometheus_client.parser import text_string_to_metric_families


def _json_body(features: np.ndarray, **extra) -> bytes:
    return json.dumps({"inputs": [{"name": "features", "shape": list(features.shape), "datatype": "FP32",
                                   "data": features.ravel().tolist()}], **extra}).encode()  # fmt: skip


def _binary_body(features: np.ndarray) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({
        "inputs": [{"name": "features", "shape": list(features.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": features.nbytes}}],
        "parameters": {"binary_data_output": True},
    }).encode()  # fmt: skip
    return header + features.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


async def _values(response: aiohttp.ClientResponse) -> np.ndarray:
    body = await response.read()
    length = response.headers.get("Inference-Header-Content-Length")
    if length is None:
        return np.array(json.loads(body)["outputs"][0]["data"], np.float32).reshape(-1, 10)
    return np.frombuffer(body[int(length) :], "<f4").reshape(-1, 10)


async def test_batched_answers_equal_unbatched_ones(serve_in_process, reference):
    server = await serve_in_process("mlp", max_batch_size=32)
    url = f"{server.url}/v2/models/mlp/infer"
    rng = np.random.default_rng(21)
    requests = [rng.random((int(n), 32), dtype=np.float32) for n in rng.integers(1, 5, size=16)]
    async with aiohttp.ClientSession() as session:
        server.gate.close()
        first = asyncio.create_task(session.post(url, data=_json_body(requests[0])))
        await server.gate.wait_entered()
        calls = []
        for index, features in enumerate(requests[1:]):
            if index % 2:
                body, headers = _binary_body(features)
                calls.append(asyncio.create_task(session.post(url, data=body, headers=headers)))
            else:
                calls.append(asyncio.create_task(session.post(url, data=_json_body(features))))
        await server.until_queued(len(calls))
        server.gate.open()
        responses = [await first, *[await call for call in calls]]
        for features, response in zip(requests, responses, strict=True):
            assert response.status == 200
            np.testing.assert_allclose(
                await _values(response), reference("mlp", {"features": features})[0], rtol=1e-5, atol=1e-7
            )
    # The first request computed alone; everything that queued behind it shared batches.
    assert server.gate.batch_rows[0] == len(requests[0])
    assert len(server.gate.batch_rows) < len(requests)
    assert sum(server.gate.batch_rows) == sum(len(f) for f in requests)


async def test_a_full_queue_answers_503_with_retry_after(serve_in_process):
    server = await serve_in_process("mlp", max_batch_size=1, max_queue_size=2)
    url = f"{server.url}/v2/models/mlp/infer"
    body = _json_body(np.ones((1, 32), np.float32))
    async with aiohttp.ClientSession() as session:
        server.gate.close()
        first = asyncio.create_task(session.post(url, data=body))
        await server.gate.wait_entered()
        queued = [asyncio.create_task(session.post(url, data=body)) for _ in range(2)]
        await server.until_queued(2)
        refused = await session.post(url, data=body)
        assert refused.status == 503
        assert refused.headers["Retry-After"] == "1"
        assert "queue is full" in (await refused.json())["error"]
        server.gate.open()
        assert [r.status for r in [await first, *[await q for q in queued]]] == [200, 200, 200]
    assert server.state.metrics.rejected["queue_full"]._value.get() == 1


async def test_a_request_whose_timeout_passes_in_the_queue_gets_503(serve_in_process):
    server = await serve_in_process("mlp", max_batch_size=1)
    url = f"{server.url}/v2/models/mlp/infer"
    async with aiohttp.ClientSession() as session:
        server.gate.close()
        first = asyncio.create_task(session.post(url, data=_json_body(np.ones((1, 32), np.float32))))
        await server.gate.wait_entered()
        late = await session.post(url, data=_json_body(np.ones((1, 32), np.float32), parameters={"timeout": 50_000}))
        assert late.status == 503
        assert late.headers["Retry-After"] == "1"
        assert "timeout expired" in (await late.json())["error"]
        server.gate.open()
        assert (await first).status == 200
    assert len(server.gate.batches) == 1  # the expired request cost no compute


async def test_a_server_without_its_model_is_not_ready(models):
    settings = RuntimeSettings(model_path=models["mlp"], model_name="mlp")
    state = ServerState(settings, ServerMetrics("mlp", "1"))
    listener = await create_app(state).listen("127.0.0.1", 0)
    host, port = listener.sockets[0].getsockname()[:2]
    async with aiohttp.ClientSession(f"http://{host}:{port}") as client:
        ready = await client.get("/v2/health/ready")
        assert ready.status == 503
        assert (await ready.json()) == {"ready": False, "reason": "loading model"}
        assert (await client.get("/v2/health/live")).status == 200
        infer = await client.post("/v2/models/mlp/infer", data=_json_body(np.ones((1, 32), np.float32)))
        assert infer.status == 503
        assert infer.headers["Retry-After"] == "1"
        assert "not ready: loading model" in (await infer.json())["error"]
        state.load_error = "model file /m.onnx does not exist"
        model_ready = await client.get("/v2/models/mlp/ready")
        assert model_ready.status == 503
        assert (await model_ready.json())["reason"] == "model failed to load: model file /m.onnx does not exist"
    listener.close()
    state.connections.close_all()


@pytest.mark.parametrize("reason", list(Rejection))
async def test_every_rejection_is_a_503_with_retry_after_counted_under_its_reason(serve_in_process, reason):
    server = await serve_in_process("mlp")

    async def refuse(*args, **kwargs):
        raise Rejected(reason, "a detail")

    server.state.loaded.batcher.infer = refuse  # the batcher's own decision, whatever provokes it
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            f"{server.url}/v2/models/mlp/infer", data=_json_body(np.ones((1, 32), np.float32))
        )
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        assert (await response.json())["error"] == unavailable(Rejected(reason, "a detail")).message
        exposition = await (await session.get(f"{server.url}/metrics")).text()
    counted = {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(exposition)
        if family.name == "kubeserve_rejected_requests"
        for sample in family.samples
    }
    assert counted == {str(other): float(other is reason) for other in Rejection}
