"""KServe's V1 protocol: ``{"instances": [...]}`` in, ``{"predictions": [...]}`` out, one entry per row.

A model with one input takes each instance as that input's row; a model with several takes each instance
as an object mapping input names to rows. Likewise a model with one output returns each prediction as
that output's row, and one with several returns objects mapping output names to rows.

Binary data (an image, for an image input) comes as TF Serving's ``{"b64": "..."}``, one per instance.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
from kubeserve.runtime.protocol import tensors
from kubeserve.runtime.protocol.errors import BadRequest
from kubeserve.runtime.protocol.v2_request import parse_json
from kubeserve.runtime.signature import ModelSignature, TensorSpec


def decode_instances(body: bytes | memoryview, signature: ModelSignature) -> dict[str, np.ndarray]:
    instances = parse_json(body).get("instances")
    if not isinstance(instances, list) or not instances:
        raise BadRequest('V1 requests need a non-empty "instances" list')
    if len(signature.inputs) == 1:
        spec = signature.inputs[0]
        return {spec.name: _stack(spec, instances)}
    if any(not isinstance(instance, dict) for instance in instances):
        names = ", ".join(s.name for s in signature.inputs)
        raise BadRequest(f"this model has several inputs ({names}): each instance must map input names to rows")
    feeds = {}
    for spec in signature.inputs:
        if any(spec.name not in instance for instance in instances):
            raise BadRequest(f"every instance needs input '{spec.name}'")
        feeds[spec.name] = _stack(spec, [instance[spec.name] for instance in instances])
    unknown = {key for instance in instances for key in instance} - {s.name for s in signature.inputs}
    if unknown:
        raise BadRequest(f"unknown inputs: {', '.join(sorted(unknown))}")
    return feeds


def _stack(spec: TensorSpec, rows: list) -> np.ndarray:
    if spec.datatype.is_bytes and any(isinstance(row, dict) for row in rows):
        array = _binary(spec.name, rows)
    else:
        try:
            shape = (len(rows), *np.shape(rows[0]))
        except ValueError as error:
            raise BadRequest(f"input '{spec.name}': instances are not regular arrays: {error}") from None
        array = tensors.from_json(spec.name, rows, spec.datatype, shape)
    if not spec.matches(array.shape):
        raise BadRequest(
            f"input '{spec.name}': instances stack to shape {list(array.shape)}, "
            f"which does not fit the model's {list(spec.shape)}"
        )
    return array


BINARY_INSTANCE = 'binary instances are {"b64": "<base64>"}'


def _binary(name: str, rows: list) -> np.ndarray:
    """Instances of binary data, each ``{"b64": "..."}``."""
    array = np.empty(len(rows), dtype=object)
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or row.keys() != {"b64"} or not isinstance(row["b64"], str):
            raise BadRequest(f"input '{name}': {BINARY_INSTANCE}, every one of them")
        array[index] = tensors.from_base64(name, row["b64"])
    return array


def encode_predictions(results: Mapping[str, np.ndarray], signature: ModelSignature) -> bytes:
    names = signature.output_names
    columns = {name: _rows(results[name]) for name in names}
    if len(names) == 1:
        predictions: Any = columns[names[0]]
    else:
        count = len(results[names[0]])
        predictions = [{name: columns[name][index] for name in names} for index in range(count)]
    return orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)


def _rows(array: np.ndarray) -> Any:
    """Rows as orjson writes them: NumPy arrays natively (float32 stays float32), strings as text."""
    if array.dtype == object:
        return np.vectorize(tensors.as_text, otypes=[object])(array).tolist()
    return np.ascontiguousarray(array)
