"""Triton's classification extension: an output requested with ``"parameters": {"classification": K}`` is answered
as its top K classes, highest first, each the string ``"value:index"``, or ``"value:index:label"`` where
``labels_path`` names the class (Triton's format: the value as C++'s ``std::to_string`` writes it, six decimals for
floating point). A tensor of two or more dimensions is classified per row (its first dimension), over the rest of
the row flattened (the last dimension, for ``[batch, classes]``): ``[rows, K]``. A 1-D tensor is one row: ``[K]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from kubeserve.runtime.datatypes import Datatype
from kubeserve.runtime.protocol.errors import BadRequest


def classifiable(datatype: Datatype) -> bool:
    """Numbers only: not BYTES, and not BOOL (as Triton)."""
    return not datatype.is_bytes and datatype.name != "BOOL"


def class_count(shape: Sequence[int]) -> int:
    """Classes per row of a tensor of ``shape`` (the model's, -1 where dynamic): -1 while unknown."""
    per_row = shape[1:] if len(shape) > 1 else shape
    return -1 if any(dim < 0 for dim in per_row) else math.prod(per_row)


def read_labels(path: Path) -> tuple[str, ...]:
    """``labels_path``'s labels: line i names class i (an empty line names none)."""
    return tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines())


def top_classes(name: str, array: np.ndarray, count: int, labels: Sequence[str]) -> np.ndarray:
    """``array``'s ``count`` highest classes per row as Triton's strings (ties: the lower index first)."""
    if array.ndim == 0:
        raise BadRequest(f"output '{name}' is a scalar: classification needs classes")
    rows = array.reshape(len(array), -1) if array.ndim > 1 else array.reshape(1, -1)
    classes = rows.shape[1]
    if count > classes:
        raise BadRequest(f"output '{name}': classification asks for the top {count} of {classes} classes")
    # Descending and stable (any dtype, no negation): sort the reversed row ascending, then read it backwards.
    indices = classes - 1 - np.argsort(rows[:, ::-1], axis=1, kind="stable")[:, : -count - 1 : -1]
    answer = np.empty(indices.shape, dtype=object)
    floating = rows.dtype.kind == "f"
    for row, (values, top) in enumerate(zip(rows, indices, strict=True)):
        for rank, index in enumerate(top.tolist()):
            value = values[index].item()
            text = f"{value:f}:{index}" if floating else f"{value}:{index}"
            label = labels[index] if index < len(labels) else ""
            answer[row, rank] = f"{text}:{label}" if label else text
    return answer if array.ndim > 1 else answer[0]
