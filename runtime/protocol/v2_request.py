"""Decoding and validating an Open Inference Protocol (V2) inference request, JSON or with Triton's
binary tensor extension, against the model's signature: every mistake is a 400 raised here, before the
request can join a batch, so one caller's error never fails another's request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from kubeserve.runtime.datatypes import DATATYPES
from kubeserve.runtime.protocol import tensors
from kubeserve.runtime.protocol.errors import BadRequest
from kubeserve.runtime.signature import ModelSignature

# Request parameters with a meaning of their own (Triton's reserved names and the binary extension's).
PRIORITY = "priority"
TIMEOUT = "timeout"
BINARY_DATA_OUTPUT = "binary_data_output"
BINARY_DATA_SIZE = "binary_data_size"
BINARY_DATA = "binary_data"
RESERVED_PARAMETERS = frozenset({PRIORITY, TIMEOUT, BINARY_DATA_OUTPUT})


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(slots=True)
class InferenceRequest:
    inputs: dict[str, np.ndarray]
    outputs: tuple[RequestedOutput, ...]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    priority: int = 0  # 0: none given; 1 is the highest
    timeout_microseconds: int | None = None

    @property
    def custom_parameters(self) -> dict[str, Any]:
        """The caller's own parameters, kept and returned in the response."""
        return {k: v for k, v in self.parameters.items() if k not in RESERVED_PARAMETERS}


def split_body(body: bytes | memoryview, header_length: str | None) -> tuple[memoryview, memoryview]:
    """The JSON header and the binary tensors that follow it (``Inference-Header-Content-Length``)."""
    view = memoryview(body)
    if header_length is None:
        return view, view[len(view) :]
    try:
        length = int(header_length)
    except ValueError:
        raise BadRequest(f"Inference-Header-Content-Length must be an integer, not {header_length!r}") from None
    if not 0 < length <= len(body):
        raise BadRequest(f"Inference-Header-Content-Length is {length}, but the body has {len(body)} bytes")
    return view[:length], view[length:]


def parse_json(header: memoryview | bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(header)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"request body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise BadRequest("request body must be a JSON object")
    return document


def decode_request(body: bytes | memoryview, header_length: str | None, signature: ModelSignature) -> InferenceRequest:
    header, binary = split_body(body, header_length)
    document = parse_json(header)
    parameters = _parameters(document.get("parameters"), "request")
    inputs = _decode_inputs(document.get("inputs"), binary, signature)
    binary_default = _flag(parameters, BINARY_DATA_OUTPUT, "request")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("id must be a string")
    return InferenceRequest(
        inputs=inputs,
        outputs=_decode_outputs(document.get("outputs"), signature, binary_default),
        id=request_id,
        parameters=parameters,
        priority=_non_negative_int(parameters, PRIORITY),
        timeout_microseconds=_non_negative_int(parameters, TIMEOUT) if TIMEOUT in parameters else None,
    )


def _parameters(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{where} parameters must be a JSON object")
    return value


def _flag(parameters: dict[str, Any], name: str, where: str) -> bool:
    value = parameters.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{where} parameter '{name}' must be true or false")
    return value


def _non_negative_int(parameters: dict[str, Any], name: str) -> int:
    value = parameters.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"parameter '{name}' must be a non-negative integer")
    return value


def _decode_inputs(value: object, binary: memoryview, signature: ModelSignature) -> dict[str, np.ndarray]:
    if not isinstance(value, list) or not value:
        raise BadRequest("inputs must be a non-empty list")
    decoded: dict[str, np.ndarray] = {}
    offset = 0
    for entry in value:
        if not isinstance(entry, dict):
            raise BadRequest("each input must be a JSON object")
        name = entry.get("name")
        spec = signature.input(name) if isinstance(name, str) else None
        if spec is None:
            known = ", ".join(s.name for s in signature.inputs)
            raise BadRequest(f"unknown input {name!r}; the model's inputs are: {known}")
        if name in decoded:
            raise BadRequest(f"input '{name}' is given twice")
        datatype = entry.get("datatype")
        if datatype != spec.datatype.name:
            if datatype not in DATATYPES:
                raise BadRequest(f"input '{name}': unknown datatype {datatype!r}")
            raise BadRequest(f"input '{name}': datatype {datatype} does not match the model's {spec.datatype.name}")
        shape = _shape(entry.get("shape"), name)
        if not spec.matches(shape):
            raise BadRequest(f"input '{name}': shape {list(shape)} does not fit the model's {list(spec.shape)}")
        input_parameters = _parameters(entry.get("parameters"), f"input '{name}'")
        size = input_parameters.get(BINARY_DATA_SIZE)
        if size is not None:
            if "data" in entry:
                raise BadRequest(f"input '{name}' has both data and binary_data_size")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise BadRequest(f"input '{name}': binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise BadRequest(
                    f"input '{name}': binary_data_size {size} runs past the end of the body "
                    f"({len(binary) - offset} bytes left)"
                )
            decoded[name] = tensors.from_binary(name, binary, offset, size, spec.datatype, shape)
            offset += size
        elif "data" in entry:
            decoded[name] = tensors.from_json(name, entry["data"], spec.datatype, shape)
        else:
            raise BadRequest(f"input '{name}' has neither data nor binary_data_size")
    if offset != len(binary):
        raise BadRequest(f"the body has {len(binary) - offset} bytes of binary data that no input claims")
    missing = [spec.name for spec in signature.inputs if spec.name not in decoded]
    if missing:
        raise BadRequest(f"missing inputs: {', '.join(missing)}")
    return decoded


def _shape(value: object, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or any(
        isinstance(dim, bool) or not isinstance(dim, int) or dim < 0 for dim in value
    ):
        raise BadRequest(f"input '{name}': shape must be a list of non-negative integers")
    return tuple(value)


def _decode_outputs(value: object, signature: ModelSignature, binary_default: bool) -> tuple[RequestedOutput, ...]:
    if value is None:
        return tuple(RequestedOutput(name, binary_default) for name in signature.output_names)
    if not isinstance(value, list):
        raise BadRequest("outputs must be a list")
    requested = []
    for entry in value:
        if not isinstance(entry, dict):
            raise BadRequest("each requested output must be a JSON object")
        name = entry.get("name")
        if name not in signature.output_names:
            raise BadRequest(f"unknown output {name!r}; the model's outputs are: {', '.join(signature.output_names)}")
        parameters = _parameters(entry.get("parameters"), f"output '{name}'")
        if parameters.get("classification"):
            raise BadRequest(f"output '{name}': the classification extension is not supported")
        binary = parameters.get(BINARY_DATA, binary_default)
        if not isinstance(binary, bool):
            raise BadRequest(f"output '{name}': binary_data must be true or false")
        requested.append(RequestedOutput(name, binary))
    return tuple(requested)
