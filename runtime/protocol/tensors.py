"""Tensor data to and from the wire: JSON lists and Triton's binary layout (little-endian, row-major;
BYTES elements as a 4-byte little-endian length followed by the bytes)."""

from __future__ import annotations

import binascii
import math
import struct

import numpy as np
from kubeserve.runtime.datatypes import Datatype
from kubeserve.runtime.protocol.errors import BadRequest

_LENGTH = struct.Struct("<I")

# JSON numbers arrive as Python ints/floats/bools; which NumPy kinds may become which datatype.
_ACCEPTED_KINDS = {"b": "b", "f": "biuf"}


def element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def from_json(name: str, data: object, datatype: Datatype, shape: tuple[int, ...], base64: bool = False) -> np.ndarray:
    """A JSON ``data`` field (flat or nested, row-major) as an array of ``shape``; ``base64``: BYTES strings hold
    base64."""
    if datatype.is_bytes:
        return _bytes_from_json(name, data, shape, base64)
    if not isinstance(data, list):
        raise BadRequest(f"input '{name}': data must be a list, not {type(data).__name__}")
    try:
        values = np.asarray(data)
    except ValueError as error:  # ragged nesting
        raise BadRequest(f"input '{name}': data is not a regular (row-major) array: {error}") from error
    if values.size != element_count(shape):
        raise BadRequest(
            f"input '{name}': shape {list(shape)} needs {element_count(shape)} elements, data has {values.size}"
        )
    target = datatype.numpy
    if values.size and target.kind in "iu":
        values = _integers(name, data, values, datatype)
    elif values.size and values.dtype.kind not in _ACCEPTED_KINDS[target.kind]:
        raise BadRequest(f"input '{name}': data holds {_describe_kind(values.dtype)}, not {datatype.name} values")
    return values.astype(target, copy=False).reshape(shape)


def _integers(name: str, data: list, values: np.ndarray, datatype: Datatype) -> np.ndarray:
    """Integers converted straight from the JSON values, so NumPy checks the range (and keeps all 64 bits)."""
    if values.dtype.kind not in "biufO":
        raise BadRequest(f"input '{name}': data holds {_describe_kind(values.dtype)}, not {datatype.name} values")
    try:
        exact = np.asarray(data, dtype=datatype.numpy)
    except OverflowError:
        raise BadRequest(f"input '{name}': a value is out of range for {datatype.name}") from None
    except (TypeError, ValueError):
        raise BadRequest(f"input '{name}': data holds non-integer values, not {datatype.name} values") from None
    # Floats are only integers if nothing was cut off (2**63 arrives as a float in NumPy's eyes).
    if values.dtype.kind == "f" and not np.array_equal(exact, values):
        raise BadRequest(f"input '{name}': data holds fractional numbers, not {datatype.name} values")
    return exact


def _describe_kind(dtype: np.dtype) -> str:
    return {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers", "U": "strings"}.get(
        dtype.kind, "values of mixed or non-numeric types"
    )


def _bytes_from_json(name: str, data: object, shape: tuple[int, ...], base64: bool) -> np.ndarray:
    flat = _flatten(data)
    if any(not isinstance(item, str) for item in flat):
        raise BadRequest(f"input '{name}': BYTES data must be strings")
    if len(flat) != element_count(shape):
        raise BadRequest(
            f"input '{name}': shape {list(shape)} needs {element_count(shape)} elements, data has {len(flat)}"
        )
    if base64:
        flat = [from_base64(name, item) for item in flat]
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array.reshape(shape)


def from_base64(name: str, text: str) -> bytes:
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError) as error:
        raise BadRequest(f"input '{name}': BYTES data is not base64: {error}") from None


def _flatten(data: object) -> list:
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(item, list) for item in data):
        return data
    flat: list = []
    for item in data:
        flat.extend(_flatten(item))
    return flat


def from_binary(
    name: str, buffer: memoryview, offset: int, size: int, datatype: Datatype, shape: tuple[int, ...]
) -> np.ndarray:
    """``size`` bytes at ``offset`` as an array of ``shape``: a view of the request body, no copy."""
    count = element_count(shape)
    if datatype.is_bytes:
        return _bytes_from_binary(name, buffer[offset : offset + size], count).reshape(shape)
    expected = count * datatype.numpy.itemsize
    if size != expected:
        raise BadRequest(
            f"input '{name}': binary_data_size is {size} bytes, but {datatype.name} {list(shape)} takes {expected}"
        )
    return np.frombuffer(buffer, dtype=datatype.numpy, count=count, offset=offset).reshape(shape)


def _bytes_from_binary(name: str, chunk: memoryview, count: int) -> np.ndarray:
    items = np.empty(count, dtype=object)
    position = 0
    for index in range(count):
        if position + 4 > len(chunk):
            raise BadRequest(f"input '{name}': binary BYTES data ends after {index} of {count} elements")
        (length,) = _LENGTH.unpack_from(chunk, position)
        position += 4
        if position + length > len(chunk):
            raise BadRequest(f"input '{name}': binary BYTES element {index} runs past its data")
        items[index] = bytes(chunk[position : position + length])
        position += length
    if position != len(chunk):
        raise BadRequest(f"input '{name}': binary_data_size has {len(chunk) - position} bytes beyond the elements")
    return items


def to_json_data(array: np.ndarray) -> object:
    """What goes in a JSON ``data`` field: a flat array (orjson writes NumPy arrays natively) or strings."""
    if array.dtype == object:
        return [as_text(item) for item in array.ravel()]
    return np.ascontiguousarray(array).ravel()


def as_text(item: object) -> str:
    if isinstance(item, bytes):
        return item.decode("utf-8", errors="replace")
    return str(item)


def to_binary(array: np.ndarray) -> bytes | memoryview:
    """The tensor's bytes in Triton's layout; a view where the array allows it."""
    if array.dtype == object:
        parts = []
        for item in array.ravel():
            raw = item if isinstance(item, bytes) else str(item).encode()
            parts += [_LENGTH.pack(len(raw)), raw]
        return b"".join(parts)
    contiguous = np.ascontiguousarray(array)
    if contiguous.dtype.byteorder == ">":
        contiguous = contiguous.astype(contiguous.dtype.newbyteorder("<"))
    return memoryview(contiguous.reshape(-1)).cast("B")
