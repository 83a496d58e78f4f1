"""Triton's classification extension: an output requested with ``"parameters": {"classification": K}`` is answered
as its top K classes, highest first, each the string ``"value:index"``, or ``"value:index:label"`` where
``labels_path`` names the class (Triton's format: the value as C++'s ``std::to_string`` writes it, six decimals for
floating point). A tensor of two or more dimensions is classified per row (its first dimension), over the rest of
the row flattened (the last dimension, for ``[batch, classes]``): ``[rows, K]``. A 1-D tensor is one row: ``[K]``.
As Triton, K past the classes is clamped to them; NaN ranks last; a tensor of no rows answers ``[0, K]``.
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
    """``labels_path``'s labels: line i names class i (an empty line names none). Lines end at "\\n" only (a "\\r"
    before it is dropped): a label keeps any other character, form feeds and Unicode line separators included."""
    lines = path.read_bytes().decode("utf-8").split("\n")  # no newline translation: "\r" alone ends no line
    if lines[-1] == "":
        lines.pop()  # the file's last newline ends the last line, it starts none
    return tuple(line.removesuffix("\r") for line in lines)


def top_classes(name: str, array: np.ndarray, count: int, labels: Sequence[str]) -> np.ndarray:
    """``array``'s ``count`` highest classes per row as Triton's strings (ties: the lower index first; NaN last).
    ``count`` past the classes is clamped to them (as Triton)."""
    if array.ndim == 0:
        raise BadRequest(f"output '{name}' is a scalar: classification needs classes")
    # Not reshape(rows, -1): a tensor of no rows has its classes too.
    rows = array.reshape(len(array), math.prod(array.shape[1:])) if array.ndim > 1 else array.reshape(1, -1)
    indices = _top_indices(rows, min(count, rows.shape[1]))
    answer = np.empty(indices.shape, dtype=object)
    floating = rows.dtype.kind == "f"
    for row, (values, top) in enumerate(zip(rows, indices, strict=True)):
        for rank, index in enumerate(top.tolist()):
            value = values[index].item()
            text = f"{value:f}:{index}" if floating else f"{value}:{index}"
            label = labels[index] if index < len(labels) else ""
            answer[row, rank] = f"{text}:{label}" if label else text
    return answer if array.ndim > 1 else answer[0]


def _top_indices(rows: np.ndarray, count: int) -> np.ndarray:
    """Per row, the indices of its ``count`` highest values, highest first; ties: the lower index first; NaN ranks as
    -inf. ``np.argpartition`` finds the ``count``-th highest value, then only the values at least as high are sorted.
    """
    if rows.dtype.kind == "f":
        nan = np.isnan(rows)
        if nan.any():
            rows = np.where(nan, -np.inf, rows).astype(rows.dtype)
    classes = rows.shape[1]
    top = np.empty((len(rows), count), dtype=np.intp)
    if not count:
        return top
    for row, values in enumerate(rows):
        # Ascending over the reversed row, read backwards: descending, and (stable) the lower index first on ties,
        # with no negation (which unsigned integers lack).
        backwards = values[::-1]
        threshold = backwards[np.argpartition(backwards, classes - count)[classes - count]]
        candidates = np.flatnonzero(backwards >= threshold)  # the top count, and any tied with the last of them
        ranked = candidates[np.argsort(backwards[candidates], kind="stable")[: -count - 1 : -1]]
        top[row] = classes - 1 - ranked
    return top
