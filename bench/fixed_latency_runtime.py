"""Harness tooling, not a product feature: ``kubeserve-runtime`` serving a model whose compute is a fixed per-batch
latency spent off the CPU, as an accelerator's is.

A 2-core machine gains no compute from more processes, so the closed-loop autoscaling harness needs a model whose
capacity per replica is fixed and known: every batch takes ``--fixed-latency-seconds`` of wall time, of which the
real (tiny) ONNX compute is a negligible part and the rest is ``time.sleep`` in the batcher's worker thread (it
releases the GIL: the event loop keeps serving). Everything else (HTTP, batching, metrics, drain) is the runtime's
own code, unmodified: this only wraps ``OnnxModel.load``'s result from outside.

    python bench/fixed_latency_runtime.py --fixed-latency-seconds 0.02 serve --model-path ...
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

FLAG = "--fixed-latency-seconds"
ROW_FLAG = "--per-row-seconds"


def fixed_latency(run: Callable[..., Any], seconds: float, per_row: float = 0.0) -> Callable[..., Any]:
    """``run`` (the model's), padded with an off-CPU wait to exactly ``seconds + per_row * rows`` per call (per
    batch): an accelerator's batch time, fixed plus growing with the batch."""

    def run_fixed(feeds: Any, output_names: Any) -> Any:
        started = time.perf_counter()
        rows = max((len(array) for array in feeds.values()), default=1)
        outputs = run(feeds, output_names)  # real outputs, of the right shape
        remaining = seconds + per_row * rows - (time.perf_counter() - started)
        if remaining > 0:
            time.sleep(remaining)  # releases the GIL, as a wait on an accelerator does
        return outputs

    return run_fixed


def wrap_models(wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Make every model the runtime loads in this process run through ``wrap(model.run)`` (after its warm-up)."""
    from kubeserve.runtime.model import OnnxModel

    original = OnnxModel.load.__func__  # type: ignore[attr-defined]

    def load(cls: type[OnnxModel], path: Path, settings: Any) -> OnnxModel:
        model = original(cls, path, settings)
        model.run = wrap(model.run)  # type: ignore[method-assign]
        return model

    OnnxModel.load = classmethod(load)  # type: ignore[method-assign, assignment]


def install(seconds: float, per_row: float = 0.0) -> None:
    """Make every model the runtime loads in this process take ``seconds + per_row * rows`` per batch (after its
    warm-up)."""
    wrap_models(lambda run: fixed_latency(run, seconds, per_row))


def split_args(argv: Sequence[str]) -> tuple[float, float, list[str]]:
    args = list(argv)
    if FLAG not in args:
        raise SystemExit(f"usage: {Path(__file__).name} {FLAG} SECONDS [{ROW_FLAG} SECONDS] serve ...")
    at = args.index(FLAG)
    seconds = float(args[at + 1])
    args = args[:at] + args[at + 2 :]
    per_row = 0.0
    if ROW_FLAG in args:
        at = args.index(ROW_FLAG)
        per_row = float(args[at + 1])
        args = args[:at] + args[at + 2 :]
    if not seconds > 0 or per_row < 0:
        raise SystemExit(f"{FLAG} must be positive, {ROW_FLAG} not negative")
    return seconds, per_row, args


def main(argv: Sequence[str] | None = None) -> None:
    seconds, per_row, rest = split_args(sys.argv[1:] if argv is None else argv)
    install(seconds, per_row)
    from kubeserve.runtime.cli import main as runtime_main

    runtime_main(rest)


if __name__ == "__main__":
    main()
