"""ONNX Runtime in-process on the same model file: the ceilings a server is compared with.

Two sessions on the cores this process may use, each at several batch sizes: ORT's own defaults (``DEFAULTS``: as
many intra-op threads as cores, idle threads spinning) and the server's session options for one process (``SERVER``:
``runtime.model.session_options``, spinning off). The ceiling every ratio divides by is the best of either at any
batch size (``best``); each session's own best is printed beside it, so that the part of the distance due to the
server's options shows. On a quiet machine ORT's defaults are the faster; on a busy one either may be.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import onnxruntime as ort
from kubeserve.runtime.config import RuntimeSettings
from kubeserve.runtime.cpus import available_cpus
from kubeserve.runtime.model import session_options
from payloads import INPUTS, Inputs, sample_rows

DEFAULTS = "ORT's defaults"
SERVER = "server's settings"
SESSIONS = (DEFAULTS, SERVER)
# Samples per second by batch size, for each session.
Ceilings = dict[str, dict[int, float]]


def default_options() -> ort.SessionOptions:
    """ORT's defaults made explicit: one intra-op thread per core this process may use, idle threads spinning."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = available_cpus()
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    return options


def samples_per_second(
    model: str,
    path: Path,
    batch_sizes: tuple[int, ...],
    seconds: float = 1.0,
    inputs: Inputs = INPUTS,
    session_kind: str = DEFAULTS,
) -> dict[int, float]:
    settings = RuntimeSettings(model_path=path, model_name=model)
    options = default_options() if session_kind == DEFAULTS else session_options(settings)
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


def ceilings(
    model: str,
    path: Path,
    batch_sizes: tuple[int, ...],
    seconds: float = 1.0,
    inputs: Inputs = INPUTS,
    cpus: set[int] | None = None,
) -> Ceilings:
    """Both sessions, one after the other: samples/s by batch size; on ``cpus`` (None: this process's), as a server
    pinned to them has them (the sessions' threads are as many, and run there)."""
    before = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, cpus)  # this thread's, which the sessions' threads inherit
    try:
        return {kind: samples_per_second(model, path, batch_sizes, seconds, inputs, kind) for kind in SESSIONS}
    finally:
        os.sched_setaffinity(0, before)


def best(measured: Ceilings, session_kind: str | None = None) -> tuple[int, float]:
    """The batch size at which ``session_kind`` (None: either) served the most samples/s, and that rate."""
    kinds = SESSIONS if session_kind is None else (session_kind,)
    return max((item for kind in kinds for item in measured[kind].items()), key=lambda item: item[1])


def describe(measured: Ceilings) -> str:
    """One line: each session's best rate and batch."""
    return "; ".join(
        f"{kind} {best(measured, kind)[1]:,.0f} samples/s (batch {best(measured, kind)[0]})" for kind in SESSIONS
    )
