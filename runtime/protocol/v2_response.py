"""Encoding an Open Inference Protocol (V2) inference response: JSON, or JSON followed by the binary
tensors that asked for it (Triton's extension: ``Inference-Header-Content-Length`` says where JSON ends)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
from kubeserve.runtime.datatypes import DATATYPES
from kubeserve.runtime.protocol import tensors
from kubeserve.runtime.protocol.v2_request import BINARY_DATA_SIZE, RequestedOutput
from kubeserve.runtime.signature import ModelSignature

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    requested: tuple[RequestedOutput, ...],
    results: Mapping[str, np.ndarray],
    signature: ModelSignature,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """The body, and the JSON header's length when binary tensors follow it (else None). Outputs answered with
    their top classes (classification) are BYTES."""
    datatypes = {spec.name: spec.datatype.name for spec in signature.outputs}
    outputs = []
    binary_parts: list[bytes | memoryview] = []
    for output in requested:
        array = results[output.name]
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": DATATYPES["BYTES"].name if output.classification else datatypes[output.name],
            "shape": list(array.shape),
        }
        if output.binary:
            raw = tensors.to_binary(array)
            entry["parameters"] = {BINARY_DATA_SIZE: len(raw) if isinstance(raw, bytes) else raw.nbytes}
            binary_parts.append(raw)
        else:
            entry["data"] = tensors.to_json_data(array)
        outputs.append(entry)
    document: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": outputs}
    if request_id is not None:
        document["id"] = request_id
    if parameters:
        document["parameters"] = parameters
    header = orjson.dumps(document, option=_NUMPY)
    if not binary_parts:
        return header, None
    return b"".join([header, *binary_parts]), len(header)
