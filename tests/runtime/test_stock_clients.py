"""Stock clients, unmodified: Triton's ``tritonclient.http`` and the KServe SDK's REST client."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as triton
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from tritonclient.utils import InferenceServerException


@pytest.fixture
def triton_client(mlp_server):
    client = triton.InferenceServerClient(mlp_server.address, concurrency=8)
    yield client
    client.close()


def test_tritonclient_reads_health_metadata_and_config(triton_client):
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready("mlp")
    assert triton_client.is_model_ready("mlp", "1")
    assert triton_client.get_server_metadata()["name"] == "kubeserve"
    assert triton_client.get_model_metadata("mlp")["inputs"][0]["name"] == "features"
    assert triton_client.get_model_config("mlp")["max_batch_size"] == 32


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infers(triton_client, reference, binary):
    features = np.random.default_rng(6).random((5, 32), dtype=np.float32)
    tensor = triton.InferInput("features", list(features.shape), "FP32")
    tensor.set_data_from_numpy(features, binary_data=binary)
    requested = triton.InferRequestedOutput("probabilities", binary_data=binary)
    result = triton_client.infer("mlp", [tensor], outputs=[requested], request_id="t-1")
    assert result.get_response()["id"] == "t-1"
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference("mlp", {"features": features})[0], rtol=1e-6)


def test_tritonclient_default_request_gets_binary_outputs(triton_client, reference):
    # With no outputs named, tritonclient asks for every output in binary (binary_data_output).
    features = np.ones((1, 32), np.float32)
    tensor = triton.InferInput("features", [1, 32], "FP32")
    tensor.set_data_from_numpy(features)
    result = triton_client.infer("mlp", [tensor])
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference("mlp", {"features": features})[0], rtol=1e-6)


def test_tritonclient_asks_for_the_top_classes(triton_client, reference):
    # Triton's classification extension: class_count=3 answers "value:index" strings, highest first.
    features = np.random.default_rng(9).random((2, 32), dtype=np.float32)
    tensor = triton.InferInput("features", list(features.shape), "FP32")
    tensor.set_data_from_numpy(features)
    requested = triton.InferRequestedOutput("probabilities", class_count=3)
    top = triton_client.infer("mlp", [tensor], outputs=[requested]).as_numpy("probabilities")
    assert top.shape == (2, 3)
    for strings, probabilities in zip(top, reference("mlp", {"features": features})[0], strict=True):
        values, indices = zip(*(item.decode().split(":") for item in strings), strict=True)
        assert [int(index) for index in indices] == np.argsort(-probabilities)[:3].tolist()
        np.testing.assert_allclose([float(value) for value in values], np.sort(probabilities)[::-1][:3], atol=1e-6)


def test_tritonclient_concurrent_async_infer(triton_client, reference):
    rng = np.random.default_rng(7)
    batches = [rng.random((int(rows), 32), dtype=np.float32) for rows in rng.integers(1, 5, size=24)]
    pending = []
    for features in batches:
        tensor = triton.InferInput("features", list(features.shape), "FP32")
        tensor.set_data_from_numpy(features)
        pending.append(triton_client.async_infer("mlp", [tensor]))
    for features, request in zip(batches, pending, strict=True):
        np.testing.assert_allclose(
            request.get_result().as_numpy("probabilities"),
            reference("mlp", {"features": features})[0],
            rtol=1e-5,
        )


def test_tritonclient_sees_server_errors(triton_client):
    tensor = triton.InferInput("features", [1, 31], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 31), np.float32))
    with pytest.raises(InferenceServerException, match="does not fit"):
        triton_client.infer("mlp", [tensor])
    with pytest.raises(InferenceServerException, match="unknown model"):
        triton_client.get_model_metadata("resnet")


async def test_kserve_rest_client_v2(mlp_server, reference):
    features = np.random.default_rng(8).random((3, 32), dtype=np.float32)
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
    try:
        assert await client.is_server_live(mlp_server.url)
        assert await client.is_server_ready(mlp_server.url)
        assert await client.is_model_ready(mlp_server.url, "mlp")
        for binary in (False, True):
            tensor = InferInput("features", list(features.shape), "FP32")
            tensor.set_data_from_numpy(features, binary_data=binary)
            response = await client.infer(mlp_server.url, InferRequest("mlp", [tensor], request_id="k-1"), "mlp")
            assert response.id == "k-1"
            np.testing.assert_allclose(
                response.outputs[0].as_numpy(), reference("mlp", {"features": features})[0], rtol=1e-6
            )
    finally:
        await client.close()


async def test_kserve_rest_client_v1(mlp_server, reference):
    features = np.random.default_rng(9).random((2, 32), dtype=np.float32)
    client = InferenceRESTClient(RESTConfig(protocol="v1", retries=0))
    try:
        assert await client.is_server_live(mlp_server.url)
        assert await client.is_model_ready(mlp_server.url, "mlp")
        answer = await client.infer(mlp_server.url, {"instances": features.tolist()}, "mlp")
        np.testing.assert_allclose(
            np.array(answer["predictions"], np.float32), reference("mlp", {"features": features})[0], rtol=1e-6
        )
    finally:
        await client.close()
