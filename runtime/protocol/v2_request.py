"""Decoding and validating an Open Inference Protocol (V2) inference request, JSON or with Triton's
binary tensor extension, against the signature the model is served with: every mistake is a 400 raised here, before
the request can join a batch, so one caller's error never fails another's request.

BYTES inputs in JSON are strings, UTF-8 (the protocol's), or base64 when the input's parameters say
``"content_type": "base64"`` (MLServer's convention), for binary data such as images. A body that is one image
(``Content-Type: image/...``) is a request of its own kind: ``image_body_request``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from kubeserve.runtime.classification import classifiable
from kubeserve.runtime.datatypes import DATATYPES
from kubeserve.runtime.protocol import tensors
from kubeserve.runtime.protocol.errors import BadRequest
from kubeserve.runtime.signature import ModelSignature, TensorSpec

# Request parameters with a meaning of their own (Triton's reserved names and the binary extension's).
PRIORITY = "priority"
TIMEOUT = "timeout"
BINARY_DATA_OUTPUT = "binary_data_output"
BINARY_DATA_SIZE = "binary_data_size"
BINARY_DATA = "binary_data"
CLASSIFICATION = "classification"
CONTENT_TYPE = "content_type"
BASE64 = "base64"
RESERVED_PARAMETERS = frozenset({PRIORITY, TIMEOUT, BINARY_DATA_OUTPUT})


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool
    classification: int = 0  # the top classes asked for (Triton's classification extension); 0: the tensor itself


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

    @property
    def classifications(self) -> dict[str, int]:
        """The outputs asked for as their top classes, with how many: the postprocess stage's work."""
        return {output.name: output.classification for output in self.outputs if output.classification}


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
        outputs=decode_outputs(document.get("outputs"), signature, binary_default),
        id=request_id,
        parameters=parameters,
        priority=priority(parameters),
        timeout_microseconds=timeout_microseconds(parameters),
    )


def timeout_microseconds(parameters: dict[str, Any]) -> int | None:
    """The request's own queue timeout (Triton's ``timeout`` parameter), if it gives one."""
    return _non_negative_int(parameters, TIMEOUT) if TIMEOUT in parameters else None


def priority(parameters: dict[str, Any]) -> int:
    """The request's priority (Triton's ``priority`` parameter; 0: none given)."""
    return _non_negative_int(parameters, PRIORITY)


def image_body_request(
    body: bytes | memoryview, signature: ModelSignature, image_inputs: Collection[str]
) -> InferenceRequest:
    """A body that is one encoded image, for a model whose one input is an image: every output, in JSON."""
    names = [spec.name for spec in signature.inputs]
    if len(names) != 1 or names[0] not in image_inputs:
        raise BadRequest(
            f"a body that is an image needs a model whose one input is an image (image_inputs); this model's inputs "
            f"are: {', '.join(names)}"
        )
    image = np.empty(1, dtype=object)
    image[0] = body  # as it came, not copied: the preprocess stage reads it
    return InferenceRequest(
        inputs={names[0]: image}, outputs=tuple(RequestedOutput(name, binary=False) for name in signature.output_names)
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
        spec, shape = checked_input(name, entry.get("datatype"), entry.get("shape"), signature, decoded)
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
            base64 = input_parameters.get(CONTENT_TYPE) == BASE64
            if base64 and not spec.datatype.is_bytes:
                raise BadRequest(f"input '{name}': content_type base64 is for BYTES data, not {spec.datatype.name}")
            decoded[name] = tensors.from_json(name, entry["data"], spec.datatype, shape, base64=base64)
        else:
            raise BadRequest(f"input '{name}' has neither data nor binary_data_size")
    if offset != len(binary):
        raise BadRequest(f"the body has {len(binary) - offset} bytes of binary data that no input claims")
    check_complete(decoded, signature)
    return decoded


def checked_input(
    name: object, datatype: object, shape: object, signature: ModelSignature, decoded: Collection[str]
) -> tuple[TensorSpec, tuple[int, ...]]:
    """An input's spec and shape, once its name, datatype and shape fit the model (and ``decoded``, the inputs
    already read, does not hold it): every wire's first checks of an input, in the same words."""
    spec = signature.input(name) if isinstance(name, str) else None
    if spec is None:
        known = ", ".join(s.name for s in signature.inputs)
        raise BadRequest(f"unknown input {name!r}; the model's inputs are: {known}")
    if name in decoded:
        raise BadRequest(f"input '{name}' is given twice")
    if datatype != spec.datatype.name:
        if datatype is None or datatype == "":  # absent from JSON; protobuf's default for an unset string
            raise BadRequest(f"input '{name}': datatype is missing (this input takes {spec.datatype.name})")
        if datatype not in DATATYPES:
            raise BadRequest(f"input '{name}': unknown datatype {datatype!r}")
        raise BadRequest(f"input '{name}': datatype {datatype} does not match the model's {spec.datatype.name}")
    checked = _shape(shape, spec.name)
    if not spec.matches(checked):
        raise BadRequest(f"input '{name}': shape {list(checked)} does not fit the model's {list(spec.shape)}")
    return spec, checked


def check_complete(decoded: Collection[str], signature: ModelSignature) -> None:
    """400 unless every input of the model was given."""
    missing = [spec.name for spec in signature.inputs if spec.name not in decoded]
    if missing:
        raise BadRequest(f"missing inputs: {', '.join(missing)}")


def _shape(value: object, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or any(
        isinstance(dim, bool) or not isinstance(dim, int) or dim < 0 for dim in value
    ):
        raise BadRequest(f"input '{name}': shape must be a list of non-negative integers")
    return tuple(value)


def decode_outputs(value: object, signature: ModelSignature, binary_default: bool) -> tuple[RequestedOutput, ...]:
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
        binary = parameters.get(BINARY_DATA, binary_default)
        if not isinstance(binary, bool):
            raise BadRequest(f"output '{name}': binary_data must be true or false")
        requested.append(RequestedOutput(name, binary, _classification(parameters, name, signature)))
    return tuple(requested)


def _classification(parameters: dict[str, Any], name: str, signature: ModelSignature) -> int:
    """How many top classes the output's ``classification`` parameter asks for (0: none), checked against the output's
    datatype. More than its classes is no error: the answer has them all (Triton clamps K to the classes)."""
    count = parameters.get(CLASSIFICATION)
    if count is None:
        return 0
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise BadRequest(f"output '{name}': classification must be a whole number of classes, at least 1")
    spec = signature.output(name)
    assert spec is not None  # the caller checked the name
    if not classifiable(spec.datatype):
        raise BadRequest(f"output '{name}': classification needs numbers, and this output is {spec.datatype.name}")
    return count
