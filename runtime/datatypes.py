"""Tensor datatypes as the Open Inference Protocol, NumPy, ONNX Runtime and Triton's model config name them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Datatype:
    name: str  # the protocol's name: "FP32"
    numpy: np.dtype  # little-endian, as the binary extension lays tensors out; object for BYTES
    onnx: str  # ONNX Runtime's type string: "tensor(float)"
    triton: str  # Triton model config's: "TYPE_FP32"

    @property
    def is_bytes(self) -> bool:
        return self.name == "BYTES"


def _datatype(name: str, numpy_type: str | type, onnx_type: str, triton: str | None = None) -> Datatype:
    return Datatype(name, np.dtype(numpy_type), f"tensor({onnx_type})", triton or f"TYPE_{name}")


DATATYPES: dict[str, Datatype] = {
    d.name: d
    for d in (
        _datatype("BOOL", "?", "bool"),
        _datatype("UINT8", "<u1", "uint8"),
        _datatype("UINT16", "<u2", "uint16"),
        _datatype("UINT32", "<u4", "uint32"),
        _datatype("UINT64", "<u8", "uint64"),
        _datatype("INT8", "<i1", "int8"),
        _datatype("INT16", "<i2", "int16"),
        _datatype("INT32", "<i4", "int32"),
        _datatype("INT64", "<i8", "int64"),
        _datatype("FP16", "<f2", "float16"),
        _datatype("FP32", "<f4", "float"),
        _datatype("FP64", "<f8", "double"),
        _datatype("BYTES", object, "string", "TYPE_STRING"),
    )
}

BY_ONNX_TYPE: dict[str, Datatype] = {d.onnx: d for d in DATATYPES.values()}
