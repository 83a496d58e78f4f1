"""The Open Inference Protocol's gRPC messages to and from what the pipeline takes: a ``ModelInferRequest`` decoded
into the same ``InferenceRequest`` REST decodes its JSON into, through the same checks in the same words
(``protocol.v2_request``), and the outputs encoded into a ``ModelInferResponse``.

Tensors come either as ``raw_input_contents`` (bytes per input, in the inputs' order, Triton's binary layout: what
``tritonclient`` and KServe's client send) or as typed ``contents``, one repeated field per datatype; a request uses
one way for all of its inputs, as the protocol says. Raw bytes become arrays with ``numpy.frombuffer`` (no copy);
typed contents are checked as JSON data is (element count, integer range). The answer comes the way the question did:
raw for raw requests, typed contents for typed ones (raw where an output has no typed field: FP16).

Parameters (request, input and output) are ``InferParameter`` values, read as the JSON values REST reads: the same
names mean the same (``priority``, ``timeout``, ``classification``), and the caller's own come back in the answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from kubeserve.runtime.datatypes import DATATYPES, Datatype
from kubeserve.runtime.grpc import grpc_service_pb2 as pb
from kubeserve.runtime.protocol import tensors
from kubeserve.runtime.protocol.errors import BadRequest
from kubeserve.runtime.protocol.v2_request import (
    InferenceRequest,
    RequestedOutput,
    check_complete,
    checked_input,
    decode_outputs,
    priority,
    timeout_microseconds,
)
from kubeserve.runtime.signature import ModelSignature

# Where each datatype's values go in ``InferTensorContents`` (FP16 has no field: raw only).
CONTENTS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_FIELDS = frozenset(CONTENTS.values())


def parameters_of(message: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """A ``map<string, InferParameter>`` as the plain values a JSON request's ``parameters`` hold."""
    values = {}
    for name, parameter in message.items():
        kind = parameter.WhichOneof("parameter_choice")
        values[name] = getattr(parameter, kind) if kind is not None else None
    return values


def set_parameters(message: Any, values: Mapping[str, Any]) -> None:
    """Plain values into a ``map<string, InferParameter>``; anything but a bool, an int, a float or a string is
    carried as its text."""
    for name, value in values.items():
        parameter = message[name]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            parameter.int64_param = value
        elif isinstance(value, float):
            parameter.double_param = value
        else:
            parameter.string_param = value if isinstance(value, str) else str(value)


def decode_request(request: pb.ModelInferRequest, signature: ModelSignature) -> tuple[InferenceRequest, bool]:
    """The request as the pipeline takes it, and whether its tensors came raw (and so its answer goes raw)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: give one per input, in order"
        )
    inputs: dict[str, np.ndarray] = {}
    for index, entry in enumerate(request.inputs):
        spec, shape = checked_input(entry.name, entry.datatype, list(entry.shape), signature, inputs)
        if raw:
            if entry.HasField("contents"):
                raise BadRequest(f"input '{entry.name}' has contents, and the request has raw_input_contents")
            inputs[spec.name] = _from_raw(spec.name, raw[index], spec.datatype, shape)
        else:
            inputs[spec.name] = _from_contents(spec.name, entry.contents, spec.datatype, shape)
    if not inputs:
        raise BadRequest("inputs must be a non-empty list")
    check_complete(inputs, signature)
    parameters = parameters_of(request.parameters)
    outputs = [{"name": output.name, "parameters": parameters_of(output.parameters)} for output in request.outputs]
    decoded = InferenceRequest(
        inputs=inputs,
        outputs=decode_outputs(outputs or None, signature, binary_default=bool(raw)),
        id=request.id or None,
        parameters=parameters,
        priority=priority(parameters),
        timeout_microseconds=timeout_microseconds(parameters),
    )
    return decoded, bool(raw)


def _from_raw(name: str, raw: bytes, datatype: Datatype, shape: tuple[int, ...]) -> np.ndarray:
    if not datatype.is_bytes:
        expected = tensors.element_count(shape) * datatype.numpy.itemsize
        if len(raw) != expected:
            raise BadRequest(
                f"input '{name}': raw_input_contents has {len(raw)} bytes, but {datatype.name} {list(shape)} takes "
                f"{expected}"
            )
    return tensors.from_binary(name, memoryview(raw), 0, len(raw), datatype, shape)


def _from_contents(name: str, contents: pb.InferTensorContents, datatype: Datatype, shape: tuple[int, ...]) -> Any:
    field = CONTENTS.get(datatype.name)
    if field is None:
        raise BadRequest(f"input '{name}': {datatype.name} has no typed contents; send it in raw_input_contents")
    others = [other for other in _FIELDS - {field} if len(getattr(contents, other))]
    if others:
        raise BadRequest(f"input '{name}': {datatype.name} values go in contents.{field}, not {', '.join(others)}")
    values = getattr(contents, field)
    if datatype.is_bytes:
        if len(values) != tensors.element_count(shape):
            raise BadRequest(
                f"input '{name}': shape {list(shape)} needs {tensors.element_count(shape)} elements, data has "
                f"{len(values)}"
            )
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    return tensors.from_json(name, list(values), datatype, shape)


def encode_response(
    model_name: str,
    model_version: str,
    decoded: InferenceRequest,
    results: Mapping[str, np.ndarray],
    signature: ModelSignature,
    raw: bool,
) -> pb.ModelInferResponse:
    """The answer: the outputs asked for (those answered with their top classes are BYTES), raw when ``raw`` or
    when an output has no typed field, with the request's id and its caller's own parameters."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=decoded.id or "")
    bytes_type = DATATYPES["BYTES"]
    chosen = [
        (output, bytes_type if output.classification else _output_datatype(signature, output))
        for output in decoded.outputs
    ]
    raw = raw or any(datatype.name not in CONTENTS for _, datatype in chosen)
    for output, datatype in chosen:
        array = results[output.name]
        tensor = response.outputs.add(name=output.name, datatype=datatype.name, shape=array.shape)
        if raw:
            response.raw_output_contents.append(bytes(tensors.to_binary(array)))
        elif datatype.is_bytes:
            tensor.contents.bytes_contents.extend(_as_bytes(item) for item in array.ravel())
        else:
            getattr(tensor.contents, CONTENTS[datatype.name]).extend(array.ravel().tolist())
    if custom := decoded.custom_parameters:
        set_parameters(response.parameters, custom)
    return response


def _output_datatype(signature: ModelSignature, output: RequestedOutput) -> Datatype:
    spec = signature.output(output.name)
    assert spec is not None  # decode_outputs checked the name
    return spec.datatype


def _as_bytes(item: object) -> bytes:
    return item if isinstance(item, bytes) else str(item).encode()
