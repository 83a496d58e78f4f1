"""What ``kubeserve-runtime optimize`` did to a model, as the model file's own metadata (ONNX ``metadata_props``)
says it: written by the optimizer, read by the server before it creates its session.

The server reads the props straight from the file's protobuf wire format, skipping the graph by its length, so that
it knows whether the graph is precompiled before ONNX Runtime parses it (and without importing ``onnx``, which the
server does not otherwise need). A model without these keys is an unoptimized FP32 model.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

QUANTIZATION_KEY = "kubeserve.quantization"
PRECISION_KEY = "kubeserve.precision"
PRECOMPILED_KEY = "kubeserve.precompiled"
PRECOMPILE_LEVEL_KEY = "kubeserve.precompile_level"
SOURCE_SHA256_KEY = "kubeserve.source_sha256"

# Each quantization and the precision of the weights it serves.
PRECISIONS = {"none": "FP32", "dynamicInt8": "INT8"}
QUANTIZATIONS = tuple(PRECISIONS)
# ONNX Runtime's graph optimization levels, each including those before it.
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")

# onnx.proto: ModelProto.metadata_props is field 14, a StringStringEntryProto {key = 1, value = 2}.
_METADATA_PROPS = 14
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


@dataclass(frozen=True)
class ModelOptimization:
    quantization: str = "none"
    precision: str = "FP32"
    precompiled: bool = False
    source_sha256: str | None = None
    precompile_level: str | None = None  # the graph optimizations saved in the file, when precompiled

    @classmethod
    def of(cls, quantization: str, precompile_level: str | None, source_sha256: str) -> ModelOptimization:
        """What ``optimize`` does: ``precompile_level`` None when it does not precompile."""
        return cls(
            quantization, PRECISIONS[quantization], precompile_level is not None, source_sha256, precompile_level
        )

    @classmethod
    def from_metadata(cls, props: dict[str, str]) -> ModelOptimization:
        precompiled = props.get(PRECOMPILED_KEY, "false").lower() == "true"
        level = props.get(PRECOMPILE_LEVEL_KEY, "all")
        return cls(
            quantization=props.get(QUANTIZATION_KEY, "none"),
            precision=props.get(PRECISION_KEY, "FP32"),
            precompiled=precompiled,
            source_sha256=props.get(SOURCE_SHA256_KEY),
            precompile_level=(level if level in OPTIMIZATION_LEVELS else "all") if precompiled else None,
        )

    def as_metadata(self) -> dict[str, str]:
        props = {
            QUANTIZATION_KEY: self.quantization,
            PRECISION_KEY: self.precision,
            PRECOMPILED_KEY: str(self.precompiled).lower(),
        }
        if self.source_sha256 is not None:
            props[SOURCE_SHA256_KEY] = self.source_sha256
        if self.precompile_level is not None:
            props[PRECOMPILE_LEVEL_KEY] = self.precompile_level
        return props

    def load_level(self, configured: str) -> str:
        """The graph optimization a session of this file needs when ``configured`` is asked for: none where the
        file already holds that much (optimizing it again only costs start-up time), else ``configured`` (a graph
        precompiled at a lower level, e.g. ``basic`` for a GPU, still gets the provider's own optimizations)."""
        if self.precompile_level is not None and (
            OPTIMIZATION_LEVELS.index(self.precompile_level) >= OPTIMIZATION_LEVELS.index(configured)
        ):
            return "disable"
        return configured

    def as_parameters(self) -> dict[str, Any]:
        """What is served, as the V2 model metadata's ``parameters`` and the log events report it."""
        return {"precision": self.precision, "quantization": self.quantization, "precompiled": self.precompiled}


def _varint(data: IO[bytes]) -> int:
    value, shift = 0, 0
    while True:
        byte = data.read(1)
        if not byte:
            raise ValueError("truncated varint")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: IO[bytes], end: int, wanted: frozenset[int]) -> list[tuple[int, bytes]]:
    """The length-delimited fields numbered ``wanted`` of the message in ``data`` up to ``end``, in order; every
    other field is skipped by its length (in a ModelProto, the graph and with it the weights: never read)."""
    found = []
    while data.tell() < end:
        tag = _varint(data)
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            _varint(data)
        elif wire in (_FIXED64, _FIXED32):
            data.seek(8 if wire == _FIXED64 else 4, os.SEEK_CUR)
        elif wire == _LENGTH_DELIMITED:
            length = _varint(data)
            if number in wanted:
                found.append((number, data.read(length)))
            else:
                data.seek(length, os.SEEK_CUR)
        else:
            raise ValueError(f"wire type {wire} is not protobuf's")
    if data.tell() != end:
        raise ValueError("a field runs past the end of its message")
    return found


def read_metadata_props(path: Path) -> dict[str, str]:
    """The model file's ``metadata_props``; empty for a file that is not a readable ONNX model (ONNX Runtime
    then says what is wrong with it)."""
    try:
        with path.open("rb") as file:
            entries = _fields(file, os.fstat(file.fileno()).st_size, frozenset({_METADATA_PROPS}))
        props = {}
        for _number, entry in entries:
            parts = dict(_fields(io.BytesIO(entry), len(entry), frozenset({1, 2})))
            props[parts.get(1, b"").decode()] = parts.get(2, b"").decode()
        return props
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
