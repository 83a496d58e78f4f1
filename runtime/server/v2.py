"""Open Inference Protocol (V2) model endpoints: metadata, readiness, Triton's model configuration and
statistics, and inference (JSON, or Triton's binary tensor extension, or one image as the body).

What clients see of the model is what it is served as (``Processing.signature``): an image input is BYTES, and a
Python handler's declared inputs and outputs stand for the model's."""

from __future__ import annotations

from typing import Any

from kubeserve.runtime.model import GPU_PROVIDERS
from kubeserve.runtime.protocol.v2_request import decode_request, image_body_request
from kubeserve.runtime.protocol.v2_response import encode_response
from kubeserve.runtime.server.exchange import Exchange
from kubeserve.runtime.server.messages import Request, Response
from kubeserve.runtime.server.peers import pod_statistics
from kubeserve.runtime.server.responses import BINARY, JSON, json_response
from kubeserve.runtime.server.state import LoadedModel, ServerState
from kubeserve.runtime.signature import TensorSpec

HEADER_LENGTH = "Inference-Header-Content-Length"
HEADER_LENGTH_KEY = HEADER_LENGTH.lower()  # as requests' headers are named


def _tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype.name, "shape": list(spec.shape)}


def metadata(state: ServerState, loaded: LoadedModel) -> dict[str, Any]:
    """The model's metadata, as REST answers it (gRPC's ``ModelMetadataResponse`` has all but ``parameters``)."""
    model = loaded.model
    served = model.processing.signature
    return {
        "name": state.settings.model_name,
        "versions": [state.settings.model_version],
        "platform": "onnxruntime_onnx",
        "inputs": [_tensor_metadata(spec) for spec in served.inputs],
        "outputs": [_tensor_metadata(spec) for spec in served.outputs],
        # What is served: precision, quantization, precompiled (kubeserve-runtime optimize). Stock clients
        # ignore a field the protocol does not name.
        "parameters": model.optimization.as_parameters(),
    }


async def model_metadata(state: ServerState, request: Request) -> Response:
    return json_response(metadata(state, state.model_for(request)))


async def model_ready(state: ServerState, request: Request) -> Response:
    state.check_model(request.match_info["name"], request.match_info.get("version"))
    body: dict[str, Any] = {"name": state.settings.model_name, "ready": state.ready}
    if not state.ready:
        body["reason"] = state.not_ready_reason
    return json_response(body, status=200 if state.ready else 503)


def triton_config(state: ServerState, loaded: LoadedModel) -> dict[str, Any]:
    """The model as Triton's model configuration describes it, so Triton's own tools can drive us."""
    settings = state.settings
    policy = loaded.batcher.policy
    batching = policy.batching

    def tensor(spec: TensorSpec) -> dict[str, Any]:
        dims = spec.shape[1:] if batching else spec.shape
        return {"name": spec.name, "data_type": spec.datatype.triton, "dims": list(dims)}

    on_gpu = loaded.model.providers[0] in GPU_PROVIDERS
    served = loaded.model.processing.signature
    config: dict[str, Any] = {
        "name": settings.model_name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": {"specific": {"versions": [settings.model_version]}},
        "max_batch_size": policy.max_batch_size,
        "input": [tensor(spec) for spec in served.inputs],
        "output": [tensor(spec) for spec in served.outputs],
        "instance_group": [
            {
                "name": settings.model_name,
                "kind": "KIND_GPU" if on_gpu else "KIND_CPU",
                # Batches computing at once in the pod: each worker's instances.
                "count": policy.instance_count * settings.workers,
                **({"gpus": [settings.cuda_device_id]} if on_gpu else {}),
            }
        ],
    }
    if batching:
        config["dynamic_batching"] = {
            "preferred_batch_size": list(policy.preferred_batch_size),
            "max_queue_delay_microseconds": policy.max_queue_delay_microseconds,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": policy.default_timeout_microseconds,
                "allow_timeout_override": True,
                "max_queue_size": policy.max_queue_size,
            },
        }
    return config


async def model_config(state: ServerState, request: Request) -> Response:
    return json_response(triton_config(state, state.model_for(request)))


async def model_statistics(state: ServerState, request: Request) -> Response:
    """Triton's statistics extension; without a model name, every model (this server has one)."""
    name = request.match_info.get("name")
    if name is not None:
        state.check_model(name, request.match_info.get("version"))
    return json_response({"model_stats": [await pod_statistics(state)]})


async def infer(state: ServerState, request: Request) -> Response:
    async with Exchange(state, request) as exchange:
        loaded = state.model_for(request)
        body = await exchange.read_body()
        processing = loaded.model.processing
        signature = processing.signature
        if request.headers.get("content-type", "").lower().startswith("image/"):
            decoded = image_body_request(body, signature, processing.images)
        else:
            decoded = decode_request(body, request.headers.get(HEADER_LENGTH_KEY), signature)
        exchange.deserialized()
        feeds = decoded.inputs
        if processing.preprocesses:
            feeds = await exchange.preprocess(loaded, feeds)
        outputs = await exchange.compute(
            loaded.batcher,
            feeds,
            # A handler's postprocess gets every output of the model; the answer has those the client asked for.
            output_names=None if processing.every_output else [output.name for output in decoded.outputs],
            priority=decoded.priority,
            timeout_microseconds=decoded.timeout_microseconds,
        )
        classifications = decoded.classifications
        if classifications or processing.postprocesses:
            outputs = await exchange.postprocess(loaded, outputs, classifications)
        body, header_length = encode_response(
            state.settings.model_name,
            state.settings.model_version,
            decoded.id,
            decoded.outputs,
            outputs,
            signature,
            decoded.custom_parameters,
        )
        if header_length is None:
            return exchange.respond(body, JSON)
        return exchange.respond(body, BINARY, {HEADER_LENGTH: str(header_length)})
