"""Harness tooling, not a product feature: ``kubeserve-runtime`` serving a model that fails every Nth batch (a bad
model version, for the canary that must be rolled back), on top of ``fixed_latency_runtime.py``'s fixed per-batch
latency.

A failed batch is an exception out of the model's ``run``, so the runtime's own code answers it (500, counted in
``kubeserve_requests_total{code="500"}``), as it would a model that breaks at run time. The warm-up at load is not
affected: the failure wraps ``OnnxModel.load``'s result, as the latency does.

    python bench/faulty_runtime.py --fail-every 2 --fixed-latency-seconds 0.02 serve --model-path ...
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

FLAG = "--fail-every"
# PYTHONSAFEPATH keeps the script's folder off sys.path (the repository root holds `operator/`); add bench/ only.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fixed_latency_runtime  # noqa: E402  (needs the path above)


def failing(run: Callable[..., Any], every: int) -> Callable[..., Any]:
    """``run``, raising on every ``every``-th call (per batch): the 1st, the ``every + 1``-th, and so on."""
    calls = itertools.count()

    def run_failing(feeds: Any, output_names: Any) -> Any:
        if next(calls) % every == 0:
            raise RuntimeError(f"injected failure (one batch in {every})")
        return run(feeds, output_names)

    return run_failing


def install(every: int) -> None:
    """Make every model the runtime loads in this process fail one batch in ``every`` (after its warm-up)."""
    fixed_latency_runtime.wrap_models(lambda run: failing(run, every))


def split_args(argv: Sequence[str]) -> tuple[int, list[str]]:
    args = list(argv)
    if FLAG not in args:
        return 0, args
    at = args.index(FLAG)
    every = int(args[at + 1])
    if every < 0:
        raise SystemExit(f"{FLAG} must not be negative")
    return every, args[:at] + args[at + 2 :]


def main(argv: Sequence[str] | None = None) -> None:
    every, rest = split_args(sys.argv[1:] if argv is None else argv)
    if every:
        install(every)
    fixed_latency_runtime.main(rest)  # installs the latency on top, then runs the runtime's CLI


if __name__ == "__main__":
    main()
