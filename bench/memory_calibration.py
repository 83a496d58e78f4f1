"""Calibrates the operator's memory estimate (kubeserve.operator.memory_estimate) against the real runtime.

For each model, as FP32 and dynamically quantized to INT8, and each batch size, it starts ``kubeserve-runtime
serve`` as its own process, sends requests of that many rows, and reads the process's peak resident memory
(``VmHWM`` in /proc/PID/status: what a cgroup memory limit is measured against, near enough). The INT8 file is
made by ``kubeserve-runtime optimize``, run as the operator's init container runs it (its comparison included),
and that command's own peak is measured too, quantizing and precompiling alone (``optimize`` rows, whose estimate
is a pod's at batch 1). It prints the measurements next to the estimate and the error, as a Markdown table (the
docs/guide/optimization.md's).

    .venv/bin/python bench/memory_calibration.py            # the bundled samples, bench models and a wide MLP
    .venv/bin/python bench/memory_calibration.py --quick    # the bundled samples only

Linux only (it reads /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from kubeserve.operator.memory_estimate import MemoryInputs, estimate_bytes
from kubeserve.runtime import samples

# PYTHONSAFEPATH keeps the script's folder off sys.path (the repository root holds `operator/`); add bench/ only.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from processes import tree_bytes
from server import RUNTIME, RunningServer

BATCH_SIZES = (1, 32)
# Requests per measurement: the peak settles after the first few (ORT's arena grows to the largest batch once).
REQUESTS = 5
MIB = 1024 * 1024
# Runs a command and prints its peak resident memory (KiB) from wait4. A fresh, small process: a child forked from
# this one would start with this process's peak as its own (Linux carries ru_maxrss across fork and exec).
_PEAK_OF = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _bench_models() -> dict[str, Callable[[], onnx.ModelProto]]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import models as bench_models  # bench/models.py, the models of `make bench`'s comparison

    return {"bench-mlp": bench_models.build_mlp, "bench-cnn": bench_models.build_cnn}


def _wide_mlp() -> onnx.ModelProto:
    # 1024 -> 4096 -> 4096 -> 1024: about 96 MiB of FP32 weights, so that the model's own term dominates.
    return samples.mlp([1024, 4096, 4096, 1024], seed=13, input_name="x", output_name="y", batch="N", name="wide")


def model_builders(quick: bool) -> dict[str, Callable[[], onnx.ModelProto]]:
    """The bundled samples (what the operator's sample InferenceServices serve), and for a full run the bench's
    models and a wide MLP."""
    builders: dict[str, Callable[[], onnx.ModelProto]] = {"mlp": samples.build_mlp, "cnn": samples.build_cnn}
    if not quick:
        builders.update(_bench_models())
        builders["wide-mlp"] = _wide_mlp
    return builders


def optimize(source: Path, dest: Path, quantization: str = "dynamicInt8", *, precompile: bool = False) -> int:
    """``kubeserve-runtime optimize`` as the init container runs it; its peak resident memory in bytes."""
    flags = ["--quantization", quantization, "--precompile" if precompile else "--no-precompile"]
    result = subprocess.run(
        [sys.executable, "-S", "-c", _PEAK_OF, RUNTIME, "optimize", str(source), str(dest), *flags],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubeserve-runtime optimize failed: {result.stderr}")
    return int(result.stdout.split()[-1]) * 1024


@dataclass(frozen=True)
class Measurement:
    model: str
    quantization: str
    file_bytes: int  # the FP32 file's size: what spec.model.size says
    batch_size: int | None  # None: the optimize command (precompiling, with quantization none)
    peak_bytes: int

    @property
    def inputs(self) -> MemoryInputs:
        if self.batch_size is None:
            return MemoryInputs(self.file_bytes, self.quantization, max_batch_size=1, optimizes=True)
        return MemoryInputs(self.file_bytes, self.quantization, max_batch_size=self.batch_size)

    @property
    def estimate(self) -> int:
        return estimate_bytes(self.inputs)

    @property
    def error(self) -> float:
        return self.estimate / self.peak_bytes - 1


def _random_request(model_path: Path, rows: int) -> bytes:
    """A V2 JSON request of ``rows`` rows of random FP32 data for the model's first input."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    (first, *_) = [value for value in graph.input if value.name not in initializers]
    shape = [rows, *(dim.dim_value for dim in first.type.tensor_type.shape.dim[1:])]
    data = np.random.default_rng(0).random(int(np.prod(shape)), dtype=np.float32)
    body = {"inputs": [{"name": first.name, "datatype": "FP32", "shape": shape, "data": data.tolist()}]}
    return json.dumps(body).encode()


def measure(model_path: Path, batch_size: int, requests: int = REQUESTS, workers: int = 1) -> int:
    """The runtime's peak resident memory in bytes (summed over its processes), serving ``model_path`` after
    ``requests`` requests of ``batch_size`` rows."""
    body = _random_request(model_path, batch_size)
    with RunningServer(model_path, "m", "--max-batch-size", str(batch_size), workers=workers) as server:
        for _ in range(requests):
            request = urllib.request.Request(
                f"{server.url}/v2/models/m/infer", data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                response.read()
        return tree_bytes(server.pid, "VmHWM")


def calibrate(quick: bool, directory: Path) -> list[Measurement]:
    results = []
    for name, build in model_builders(quick).items():
        fp32 = directory / f"{name}.onnx"
        onnx.save(build(), str(fp32))
        size = fp32.stat().st_size
        int8 = directory / f"{name}.int8.onnx"
        results.append(Measurement(name, "dynamicInt8", size, None, optimize(fp32, int8)))
        precompiled = optimize(fp32, directory / f"{name}.precompiled.onnx", "none", precompile=True)
        results.append(Measurement(name, "none", size, None, precompiled))
        for quantization, path in {"none": fp32, "dynamicInt8": int8}.items():
            for batch_size in BATCH_SIZES:
                results.append(Measurement(name, quantization, size, batch_size, measure(path, batch_size)))
        for done in results[-6:]:
            print(
                f"measured {done.model} {done.quantization} {done.batch_size}: {done.peak_bytes / MIB:.1f} MiB",
                file=sys.stderr,
            )
    return results


def table(results: list[Measurement]) -> str:
    lines = [
        "| Model | Quantization | FP32 file (MiB) | Process | Measured peak RSS (MiB) | Estimate (MiB) | Error |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for m in results:
        if m.batch_size is None:
            process = "optimize" if m.quantization != "none" else "optimize (precompile)"
        else:
            process = f"serve, batch {m.batch_size}"
        lines.append(
            f"| {m.model} | {m.quantization} | {m.file_bytes / MIB:.2f} | {process} | "
            f"{m.peak_bytes / MIB:.0f} | {m.estimate / MIB:.0f} | {m.error:+.0%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the bundled samples")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as directory:
        print(table(calibrate(args.quick, Path(directory))))


if __name__ == "__main__":
    main()
