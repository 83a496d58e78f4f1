"""ONNX Runtime in-process on the same model file and settings as the server: the ceiling to compare with."""

from __future__ import annotations

import time
from pathlib import Path

import onnxruntime as ort
from kubeserve.runtime.config import RuntimeSettings
from kubeserve.runtime.model import session_options
from payloads import INPUTS, Inputs, sample_rows


def samples_per_second(
    model: str, path: Path, batch_sizes: tuple[int, ...], seconds: float = 1.0, inputs: Inputs = INPUTS
) -> dict[int, float]:
    settings = RuntimeSettings(model_path=path, model_name=model)
    options = session_options(settings)
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    name, _shape = inputs[model]
    results = {}
    for batch in batch_sizes:
        feeds = {name: sample_rows(model, batch, inputs=inputs)}
        session.run(None, feeds)
        runs = 0
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            session.run(None, feeds)
            runs += 1
        results[batch] = runs * batch / elapsed
    return results
