"""The Open Inference Protocol over gRPC, as stock clients see it: ``tritonclient.grpc`` (sync, asyncio, streaming)
and KServe's ``InferenceGRPCClient``, unmodified, against real servers on 127.0.0.1; answers compared with in-process
ONNX Runtime; errors, overload and deadlines as the client sees them; health; metrics.

Run in a pytest process of its own (``test_grpc.py`` starts it): ``tritonclient.grpc`` and KServe's client define the
same ``inference.*`` messages in protobuf's default descriptor pool, and the second to be imported in a process fails;
the other test modules import KServe. (The server's own modules use a pool of their own: ``runtime/grpc/generate.py``.)
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kubeserve.runtime.grpc.server import GrpcServer, start_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

RNG = np.random.default_rng(7)


def _features(rows: int = 2) -> np.ndarray:
    return RNG.random((rows, 32), dtype=np.float32)


def _input(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _rest(url: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def mlp(start_module_runtime):
    return start_module_runtime("mlp").wait_ready()


@pytest.fixture(scope="module")
def types(start_module_runtime):
    return start_module_runtime("types").wait_ready()


@pytest.fixture
async def grpc_in_process(serve_in_process) -> AsyncIterator[Callable[..., Any]]:
    """``serve_in_process`` (compute behind a gate) with gRPC on a free port in the same loop, and a channel."""
    started: list[tuple[GrpcServer, grpc.aio.Channel]] = []

    async def start(
        model: str = "mlp", **settings: Any
    ) -> tuple[Any, GrpcServer, service_pb2_grpc.GRPCInferenceServiceStub]:
        server = await serve_in_process(model, grpc_port=0, **settings)
        grpc_server = await start_grpc(server.state)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_server.port}")
        started.append((grpc_server, channel))
        return server, grpc_server, service_pb2_grpc.GRPCInferenceServiceStub(channel)

    yield start
    for grpc_server, channel in started:
        await channel.close()
        await grpc_server.stop(None)


def _raw_request(model: str, name: str, array: np.ndarray, datatype: str, **parameters: int) -> Any:
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype=datatype, shape=array.shape)
    request.raw_input_contents.append(array.tobytes())
    for key, value in parameters.items():
        request.parameters[key].int64_param = value
    return request


# -- tritonclient, sync ---------------------------------------------------------------------------------------------


def test_health_metadata_config_and_statistics_answer_as_rest_does(mlp):
    client = triton.InferenceServerClient(mlp.grpc_address)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("mlp")
    assert client.is_model_ready("mlp", "1")
    server = client.get_server_metadata(as_json=True)
    _, rest_server = _rest(mlp.url, "/v2")
    assert server["name"] == rest_server["name"] and server["extensions"] == rest_server["extensions"]
    metadata = client.get_model_metadata("mlp", as_json=True)
    _, rest_metadata = _rest(mlp.url, "/v2/models/mlp")
    for field in ("name", "versions", "platform"):
        assert metadata[field] == rest_metadata[field]
    for side in ("inputs", "outputs"):
        assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in metadata[side]] == [
            (t["name"], t["datatype"], t["shape"]) for t in rest_metadata[side]
        ]
    config = client.get_model_config("mlp", as_json=True)["config"]
    _, rest_config = _rest(mlp.url, "/v2/models/mlp/config")
    assert config["name"] == rest_config["name"]
    assert int(config["max_batch_size"]) == rest_config["max_batch_size"]
    assert [(t["name"], t["data_type"]) for t in config["input"]] == [
        (t["name"], t["data_type"]) for t in rest_config["input"]
    ]
    client.infer("mlp", [_input("features", _features(), "FP32")])
    statistics = client.get_inference_statistics("mlp", as_json=True)["model_stats"][0]
    _, rest_statistics = _rest(mlp.url, "/v2/models/mlp/stats")
    assert statistics["name"] == "mlp"
    assert int(statistics["inference_stats"]["success"]["count"]) >= 1
    assert (
        int(statistics["inference_stats"]["success"]["count"])
        <= (rest_statistics["model_stats"][0]["inference_stats"]["success"]["count"])
    )


def test_raw_tensors_answer_what_onnx_runtime_answers(mlp, reference):
    client = triton.InferenceServerClient(mlp.grpc_address)
    features = _features(3)
    result = client.infer("mlp", [_input("features", features, "FP32")], request_id="r-1")
    (expected,) = reference("mlp", {"features": features})
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-6)
    assert result.get_response().id == "r-1"
    assert result.get_response().raw_output_contents  # answered raw, as asked


def _every_datatype(element_types: dict[str, int]) -> dict[str, np.ndarray]:
    arrays = {}
    for datatype in element_types:
        if datatype == "BYTES":
            arrays[datatype] = np.array([[b"a", "\x00é-binary".encode()], [b"", b"text"]], dtype=object)
        elif datatype == "BOOL":
            arrays[datatype] = np.array([[True, False], [False, True]])
        else:
            arrays[datatype] = np.array([[1, 2], [3, 4]], dtype=triton.triton_to_np_dtype(datatype))
    return arrays


def test_every_datatype_round_trips_raw(types, element_types):
    """The ``types`` model is an identity per datatype: what goes in comes back."""
    inputs = _every_datatype(element_types)
    client = triton.InferenceServerClient(types.grpc_address)
    result = client.infer("types", [_input(f"in_{d}", a, d) for d, a in inputs.items()])
    for datatype, array in inputs.items():
        np.testing.assert_array_equal(result.as_numpy(f"out_{datatype}"), array)


async def test_every_datatype_with_typed_contents(grpc_in_process, element_types):
    """Typed contents, decoded and encoded, for each datatype that has a field (FP16 has none: raw only)."""
    from kubeserve.runtime.grpc import grpc_service_pb2 as pb
    from kubeserve.runtime.grpc.codec import CONTENTS, decode_request, encode_response

    server, _, _ = await grpc_in_process("types")
    signature = server.state.loaded.model.processing.signature
    inputs = _every_datatype(element_types)
    request = pb.ModelInferRequest(model_name="types")
    for datatype, array in inputs.items():
        tensor = request.inputs.add(name=f"in_{datatype}", datatype=datatype, shape=array.shape)
        if datatype != "FP16":
            getattr(tensor.contents, CONTENTS[datatype]).extend(array.ravel().tolist())
    with pytest.raises(Exception, match="input 'in_FP16': FP16 has no typed contents; send it in raw_input_contents"):
        decode_request(request, signature)
    request.inputs[list(inputs).index("FP16")].contents.fp32_contents.append(1.0)
    with pytest.raises(Exception, match="input 'in_FP16': FP16 has no typed contents"):
        decode_request(request, signature)
    typed = {d: a for d, a in inputs.items() if d != "FP16"}
    for datatype, array in typed.items():
        one = pb.ModelInferRequest(model_name="types")
        tensor = one.inputs.add(name=f"in_{datatype}", datatype=datatype, shape=array.shape)
        getattr(tensor.contents, CONTENTS[datatype]).extend(array.ravel().tolist())
        # Decoded alone (the model wants every input: the missing ones are the only complaint).
        with pytest.raises(Exception, match="missing inputs"):
            decode_request(one, signature)
    # Encoded typed: every output but FP16 in its field; with FP16 among them, the answer goes raw.
    decoded, raw = decode_request(_all_raw(inputs), signature)
    assert raw
    outputs = {f"out_{d}": a for d, a in inputs.items()}
    answer = encode_response("types", "1", decoded, outputs, signature, raw=False)
    assert len(answer.raw_output_contents) == len(inputs)  # FP16 has no field: all raw
    decoded.outputs = tuple(o for o in decoded.outputs if o.name != "out_FP16")
    answer = encode_response("types", "1", decoded, outputs, signature, raw=False)
    assert not answer.raw_output_contents
    for tensor in answer.outputs:
        datatype = tensor.datatype
        values = list(getattr(tensor.contents, CONTENTS[datatype]))
        expected = inputs[datatype]
        if datatype == "BYTES":
            assert values == list(expected.ravel())
        else:
            np.testing.assert_array_equal(np.array(values, dtype=expected.dtype).reshape(expected.shape), expected)


def _all_raw(inputs: dict[str, np.ndarray]) -> Any:
    from kubeserve.runtime.grpc import grpc_service_pb2 as pb
    from kubeserve.runtime.protocol import tensors

    request = pb.ModelInferRequest(model_name="types")
    for datatype, array in inputs.items():
        request.inputs.add(name=f"in_{datatype}", datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(bytes(tensors.to_binary(array)))
    return request


def test_typed_contents_in_and_out(mlp, reference):
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(mlp.grpc_address))
    features = _features(2)
    request = service_pb2.ModelInferRequest(model_name="mlp", id="typed")
    tensor = request.inputs.add(name="features", datatype="FP32", shape=features.shape)
    tensor.contents.fp32_contents.extend(features.ravel().tolist())
    response = stub.ModelInfer(request)
    assert not response.raw_output_contents  # answered the way it was asked
    (output,) = response.outputs
    answered = np.array(output.contents.fp32_contents, dtype=np.float32).reshape(list(output.shape))
    (expected,) = reference("mlp", {"features": features})
    np.testing.assert_allclose(answered, expected, rtol=1e-6)
    assert response.id == "typed"


def test_bytes_tensors_raw_and_typed(start_module_runtime, models):
    server = start_module_runtime("simple_string").wait_ready()
    client = triton.InferenceServerClient(server.grpc_address)
    left = np.array([[str(i).encode() for i in range(16)]], dtype=object)
    right = np.array([[b"1"] * 16], dtype=object)
    result = client.infer("simple_string", [_input("INPUT0", left, "BYTES"), _input("INPUT1", right, "BYTES")])
    assert [int(x) for x in result.as_numpy("OUTPUT0").ravel()] == [i + 1 for i in range(16)]
    assert [int(x) for x in result.as_numpy("OUTPUT1").ravel()] == [i - 1 for i in range(16)]
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc_address))
    request = service_pb2.ModelInferRequest(model_name="simple_string")
    for name, array in (("INPUT0", left), ("INPUT1", right)):
        request.inputs.add(name=name, datatype="BYTES", shape=array.shape).contents.bytes_contents.extend(
            array.ravel().tolist()
        )
    response = stub.ModelInfer(request)
    assert [int(x) for x in response.outputs[0].contents.bytes_contents] == [i + 1 for i in range(16)]


def test_parameters_and_classification_as_in_rest(mlp):
    client = triton.InferenceServerClient(mlp.grpc_address)
    features = _features(1)
    result = client.infer(
        "mlp",
        [_input("features", features, "FP32")],
        outputs=[triton.InferRequestedOutput("probabilities", class_count=3)],
        parameters={"tenant": "a", "attempt": 2},
    )
    top = result.as_numpy("probabilities")
    assert top.shape == (1, 3) and all(b":" in item for item in top.ravel())
    body = {
        "inputs": [{"name": "features", "shape": [1, 32], "datatype": "FP32", "data": features.ravel().tolist()}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}],
    }
    _, rest = _rest(mlp.url, "/v2/models/mlp/infer", body)
    assert [item.encode() for item in rest["outputs"][0]["data"]] == list(top.ravel())
    parameters = result.get_response().parameters
    assert parameters["tenant"].string_param == "a" and parameters["attempt"].int64_param == 2


# -- errors: the same messages as REST ------------------------------------------------------------------------------

BAD_REQUESTS = [
    ("shape", {"name": "features", "shape": [2, 31], "datatype": "FP32"}),
    ("datatype", {"name": "features", "shape": [2, 32], "datatype": "FP64"}),
    ("name", {"name": "pixels", "shape": [2, 32], "datatype": "FP32"}),
]


@pytest.mark.parametrize(("case", "tensor"), BAD_REQUESTS, ids=[case for case, _ in BAD_REQUESTS])
def test_bad_input_is_invalid_argument_with_rests_message(mlp, case, tensor):
    count = int(np.prod(tensor["shape"]))
    dtype = np.float64 if tensor["datatype"] == "FP64" else np.float32
    array = np.zeros(tensor["shape"], dtype=dtype)
    status, rest = _rest(mlp.url, "/v2/models/mlp/infer", {"inputs": [{**tensor, "data": [0.0] * count}]})
    assert status == 400
    client = triton.InferenceServerClient(mlp.grpc_address)
    with pytest.raises(InferenceServerException) as refused:
        client.infer("mlp", [_input(tensor["name"], array, tensor["datatype"])])
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert refused.value.message() == rest["error"]


def test_unknown_model_is_not_found_with_rests_message(mlp):
    status, rest = _rest(mlp.url, "/v2/models/nope/infer", {"inputs": []})
    assert status == 404
    client = triton.InferenceServerClient(mlp.grpc_address)
    for call in (
        lambda: client.infer("nope", [_input("features", _features(), "FP32")]),
        lambda: client.get_model_metadata("nope"),
        lambda: client.is_model_ready("mlp", "7"),
    ):
        with pytest.raises(InferenceServerException) as refused:
            call()
        assert refused.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as refused:
        client.infer("nope", [_input("features", _features(), "FP32")])
    assert refused.value.message() == rest["error"]


def test_raw_contents_that_do_not_fit_their_shape_are_invalid_argument(mlp):
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(mlp.grpc_address))
    request = _raw_request("mlp", "features", _features(2), "FP32")
    request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "input 'features': raw_input_contents has 252 bytes, but FP32 [2, 32] takes 256"


async def test_a_message_past_max_request_bytes_is_resource_exhausted(grpc_in_process):
    _, _, stub = await grpc_in_process("mlp", max_request_bytes=4096, max_buffered_request_bytes=4096)
    await stub.ModelInfer(_raw_request("mlp", "features", _features(8), "FP32"))  # 1 KiB: served
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ModelInfer(_raw_request("mlp", "features", _features(64), "FP32"))  # 8 KiB
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# -- overload and deadlines, as the client sees them ----------------------------------------------------------------


async def test_a_full_queue_is_unavailable_with_a_retry_hint(grpc_in_process):
    server, _, stub = await grpc_in_process("mlp", max_queue_size=1)
    server.gate.close()
    computing = asyncio.ensure_future(stub.ModelInfer(_raw_request("mlp", "features", _features(1), "FP32")))
    await server.gate.wait_entered()
    queued = asyncio.ensure_future(stub.ModelInfer(_raw_request("mlp", "features", _features(1), "FP32")))
    await server.until_queued(1)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ModelInfer(_raw_request("mlp", "features", _features(1), "FP32"))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    body = {"inputs": [{"name": "features", "shape": [1, 32], "datatype": "FP32", "data": [0.5] * 32}]}
    status, rest = await asyncio.to_thread(_rest, server.url, "/v2/models/mlp/infer", body)
    assert status == 503
    assert refused.value.details() == rest["error"] == "the queue is full (1 requests waiting); retry later"
    trailing = dict(refused.value.trailing_metadata())
    assert trailing["retry-after"] == "1" and trailing["grpc-retry-pushback-ms"] == "1000"
    server.gate.open()
    await asyncio.gather(computing, queued)
    labels = {"model": "mlp", "version": "1", "reason": "queue_full"}
    assert server.state.metrics.registry.get_sample_value("kubeserve_rejected_requests_total", labels) == 2


async def test_the_timeout_parameter_expiring_in_the_queue_is_deadline_exceeded(grpc_in_process):
    server, _, stub = await grpc_in_process("mlp")
    server.gate.close()
    computing = asyncio.ensure_future(stub.ModelInfer(_raw_request("mlp", "features", _features(1), "FP32")))
    await server.gate.wait_entered()
    with pytest.raises(grpc.aio.AioRpcError) as expired:
        await stub.ModelInfer(_raw_request("mlp", "features", _features(1), "FP32", timeout=20_000))
    assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert expired.value.details() == "request timeout expired before compute started (Triton's 'timeout', in µs)"
    server.gate.open()
    await computing
    assert len(server.gate.batches) == 1  # the expired request never computed


async def test_the_clients_deadline_is_the_queues(grpc_in_process):
    """A request whose caller's gRPC deadline passes while it waits leaves the queue then, never computed."""
    server, _, stub = await grpc_in_process("mlp")
    server.gate.close()
    computing = asyncio.ensure_future(stub.ModelInfer(_raw_request("mlp", "features", _features(1), "FP32")))
    await server.gate.wait_entered()
    with pytest.raises(grpc.aio.AioRpcError) as expired:
        await stub.ModelInfer(_raw_request("mlp", "features", _features(1), "FP32"), timeout=0.3)
    assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 30
    while server.batcher.queued:  # the server's side of the same deadline
        assert loop.time() < give_up
        await asyncio.sleep(0.01)
    server.gate.open()
    await computing
    assert len(server.gate.batches) == 1


async def test_grpc_and_rest_requests_share_a_batch(grpc_in_process):
    server, _, stub = await grpc_in_process("mlp")
    server.gate.close()
    first = asyncio.ensure_future(stub.ModelInfer(_raw_request("mlp", "features", _features(1), "FP32")))
    await server.gate.wait_entered()
    over_grpc = asyncio.ensure_future(stub.ModelInfer(_raw_request("mlp", "features", _features(1), "FP32")))
    body = {"inputs": [{"name": "features", "shape": [2, 32], "datatype": "FP32", "data": [0.5] * 64}]}
    over_rest = asyncio.ensure_future(asyncio.to_thread(_rest, server.url, "/v2/models/mlp/infer", body))
    await server.until_queued(2)
    server.gate.open()
    await asyncio.gather(first, over_grpc, over_rest)
    assert server.gate.batch_rows == [1, 3]
    assert (await over_rest)[0] == 200


# -- health ---------------------------------------------------------------------------------------------------------


async def test_grpc_health_follows_readiness(grpc_in_process):
    server, grpc_server, _ = await grpc_in_process("mlp")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_server.port}")
    health = health_pb2_grpc.HealthStub(channel)
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING

    async def status(service: str) -> int:
        return (await health.Check(health_pb2.HealthCheckRequest(service=service))).status

    assert await status("") == serving
    assert await status("inference.GRPCInferenceService") == serving
    assert await status("liveness") == serving
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await status("no.such.Service")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    loaded, server.state.loaded = server.state.loaded, None  # as while the model loads
    assert await status("") == not_serving
    server.state.loaded = loaded
    server.state.draining = True
    assert await status("") == not_serving
    assert await status("inference.GRPCInferenceService") == not_serving
    assert await status("liveness") == serving  # a liveness probe never restarts a drain
    server.state.draining = False
    await channel.close()


# -- asyncio and streaming clients ----------------------------------------------------------------------------------


async def test_tritonclients_asyncio_client_answers_concurrent_requests(mlp, reference):
    async with triton_aio.InferenceServerClient(mlp.grpc_address) as client:
        batches = [_features(1) for _ in range(16)]
        results = await asyncio.gather(
            *(client.infer("mlp", [_input("features", features, "FP32")]) for features in batches)
        )
        assert await client.is_server_ready()
    for features, result in zip(batches, results, strict=True):
        (expected,) = reference("mlp", {"features": features})
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-6)


def test_tritonclients_stream_answers_every_request_and_errors_in_the_stream(mlp, reference):
    client = triton.InferenceServerClient(mlp.grpc_address)
    answers: dict[str, np.ndarray] = {}
    errors: list[str] = []
    arrived = threading.Semaphore(0)

    def callback(result: triton.InferResult | None, error: InferenceServerException | None) -> None:
        if error is not None:
            errors.append(error.message())
        else:
            answers[result.get_response().id] = result.as_numpy("probabilities")
        arrived.release()

    client.start_stream(callback)
    sent = {f"s-{i}": _features(1) for i in range(20)}
    for request_id, features in sent.items():
        client.async_stream_infer("mlp", [_input("features", features, "FP32")], request_id=request_id)
    client.async_stream_infer("mlp", [_input("features", np.zeros((1, 31), np.float32), "FP32")], request_id="bad")
    for _ in range(len(sent) + 1):
        assert arrived.acquire(timeout=30)
    client.stop_stream()
    assert errors == ["input 'features': shape [1, 31] does not fit the model's [-1, 32]"]
    assert set(answers) == set(sent)
    for request_id, features in sent.items():
        (expected,) = reference("mlp", {"features": features})
        np.testing.assert_allclose(answers[request_id], expected, rtol=1e-6)


async def test_tritonclients_asyncio_stream(mlp, reference):
    sent = {f"a-{i}": _features(1) for i in range(12)}

    async def requests() -> AsyncIterator[dict[str, Any]]:
        for request_id, features in sent.items():
            yield {"model_name": "mlp", "inputs": [_input("features", features, "FP32")], "request_id": request_id}

    answers = {}
    async with triton_aio.InferenceServerClient(mlp.grpc_address) as client:
        async for result, error in client.stream_infer(requests()):
            assert error is None
            answers[result.get_response().id] = result.as_numpy("probabilities")
            if len(answers) == len(sent):
                break
    for request_id, features in sent.items():
        (expected,) = reference("mlp", {"features": features})
        np.testing.assert_allclose(answers[request_id], expected, rtol=1e-6)


# -- KServe's client (its messages and tritonclient's cannot share a process: protobuf's default pool) ---------------

KSERVE_CLIENT = textwrap.dedent(
    """
    import asyncio, json, sys
    import numpy as np
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    async def main(address):
        client = InferenceGRPCClient(address, retries=0)
        features = np.asarray(json.loads(sys.stdin.read()), dtype=np.float32)
        answers = {}
        for binary in (True, False):
            tensor = InferInput("features", list(features.shape), "FP32")
            tensor.set_data_from_numpy(features, binary_data=binary)
            response = await client.infer(InferRequest(model_name="mlp", infer_inputs=[tensor], request_id="k"))
            answers[str(binary)] = response.outputs[0].as_numpy().tolist()
        answers["ready"] = await client.is_server_ready() and await client.is_model_ready("mlp")
        await client.close()
        print(json.dumps(answers))

    asyncio.run(main(sys.argv[1]))
    """
)


def test_kserves_grpc_client_answers_what_onnx_runtime_answers(mlp, reference):
    features = _features(2)
    done = subprocess.run(
        [sys.executable, "-c", KSERVE_CLIENT, mlp.grpc_address],
        input=json.dumps(features.tolist()),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    answers = json.loads(done.stdout)
    (expected,) = reference("mlp", {"features": features})
    assert answers["ready"] is True
    for binary in ("True", "False"):
        np.testing.assert_allclose(np.array(answers[binary], dtype=np.float32), expected, rtol=1e-6)


# -- metrics, settings, the generated modules -----------------------------------------------------------------------


def _sample(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_stage_metrics_and_status_counts_carry_the_protocol(start_runtime):
    server = start_runtime("mlp").wait_ready()
    client = triton.InferenceServerClient(server.grpc_address)
    for _ in range(3):
        client.infer("mlp", [_input("features", _features(), "FP32")])
    with pytest.raises(InferenceServerException):
        client.infer("mlp", [_input("features", np.zeros((1, 31), np.float32), "FP32")])
    body = {"inputs": [{"name": "features", "shape": [1, 32], "datatype": "FP32", "data": [0.5] * 32}]}
    _rest(server.url, "/v2/models/mlp/infer", body)
    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    count = "kubeserve_request_duration_seconds_count"
    assert _sample(text, count, protocol="grpc", stage="total") == 3
    assert _sample(text, count, protocol="http", stage="total") == 1
    assert _sample(text, "kubeserve_requests_total", protocol="grpc", code="200") == 3
    assert _sample(text, "kubeserve_requests_total", protocol="grpc", code="400") == 1


def test_protocols_setting_turns_either_off(start_runtime):
    grpc_only = start_runtime("mlp", "--protocols", "grpc").wait_ready()
    assert triton.InferenceServerClient(grpc_only.grpc_address).is_server_ready()
    assert not any(event.get("event") == "listening" for event in grpc_only.events)
    http_only = start_runtime("mlp", "--protocols", "http").wait_ready()
    assert _rest(http_only.url, "/v2/health/ready")[0] == 200
    assert not any(event.get("event") == "grpc_listening" for event in http_only.events)
    refused = start_runtime("mlp", "--protocols", "")
    assert refused.wait() == 2
    assert "at least one protocol must be served: http, grpc" in "".join(refused.lines)
