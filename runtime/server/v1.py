"""KServe V1 endpoints: model status and ``:predict``."""

from __future__ import annotations

from kubeserve.runtime.protocol.v1 import decode_instances, encode_predictions
from kubeserve.runtime.server.exchange import Exchange
from kubeserve.runtime.server.messages import Request, Response
from kubeserve.runtime.server.responses import JSON, json_response
from kubeserve.runtime.server.state import ServerState


async def model_status(state: ServerState, request: Request) -> Response:
    state.check_model(request.match_info["name"], None)
    return json_response({"name": state.settings.model_name, "ready": state.ready}, 200 if state.ready else 503)


async def predict(state: ServerState, request: Request) -> Response:
    async with Exchange(state, request) as exchange:
        loaded = state.model_for(request)
        body = await exchange.read_body()
        processing = loaded.model.processing
        feeds = decode_instances(body, processing.signature)
        exchange.deserialized()
        if processing.preprocesses:
            feeds = await exchange.preprocess(loaded, feeds)
        outputs = await exchange.compute(loaded.batcher, feeds)
        if processing.postprocesses:
            outputs = await exchange.postprocess(loaded, outputs, {})
        return exchange.respond(encode_predictions(outputs, processing.signature), JSON)
