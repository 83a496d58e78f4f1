"""Request bodies for the sample models: JSON, or JSON followed by binary tensors (Triton's extension)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

# The sample models' single inputs (runtime/samples.py); the comparison models pass their own (bench/models.py).
Inputs = Mapping[str, tuple[str, tuple[int, ...]]]
INPUTS: Inputs = {"tiny": ("input", (4,)), "mlp": ("features", (32,)), "cnn": ("image", (3, 64, 64))}


@dataclass(frozen=True)
class Payload:
    body: bytes
    headers: dict[str, str]
    rows: int


def sample_rows(model: str, rows: int, seed: int = 0, inputs: Inputs = INPUTS) -> np.ndarray:
    _name, shape = inputs[model]
    return np.random.default_rng(seed).random((rows, *shape), dtype=np.float32)


def tabular_inputs(rows: np.ndarray) -> list[dict]:
    """Raw transactions (``samples.tabular_rows``) as the tabular sample's V2 JSON inputs: a [rows, 1] tensor per
    column, the merchant category as BYTES, the rest FP32."""
    from kubeserve.runtime.samples import TABULAR_CATEGORY, TABULAR_NUMERIC

    columns = [*TABULAR_NUMERIC, TABULAR_CATEGORY]
    return [
        {"name": name, "shape": [len(rows), 1], "datatype": "BYTES" if name == TABULAR_CATEGORY else "FP32",
         "data": [str(v) if name == TABULAR_CATEGORY else float(v) for v in rows[:, index]]}
        for index, name in enumerate(columns)
    ]  # fmt: skip


def json_payload(model: str, rows: int, inputs: Inputs = INPUTS) -> Payload:
    name, _shape = inputs[model]
    data = sample_rows(model, rows, inputs=inputs)
    body = {"inputs": [{"name": name, "shape": list(data.shape), "datatype": "FP32", "data": data.ravel().tolist()}]}
    return Payload(json.dumps(body).encode(), {"Content-Type": "application/json"}, rows)


def binary_payload(model: str, rows: int, inputs: Inputs = INPUTS) -> Payload:
    name, _shape = inputs[model]
    data = sample_rows(model, rows, inputs=inputs)
    header = json.dumps({
        "inputs": [{"name": name, "shape": list(data.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": data.nbytes}}],
        "parameters": {"binary_data_output": True},
    }).encode()  # fmt: skip
    return Payload(header + data.tobytes(), {"Inference-Header-Content-Length": str(len(header))}, rows)
