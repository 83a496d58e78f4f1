"""``bench/run.py --part optimization``: the bundled sample MLP and CNN (runtime/samples.py) and the bench's larger
MLP and CNN (bench/models.py) as FP32, precompiled, and
dynamicInt8-quantized (``kubeserve-runtime optimize``'s own code), each served by the real server under the bench's
load generator: throughput and latency, file size, start-up, the server's resident memory, and the largest output
difference from FP32. Then the start-up that precompiling saves: session creation with the graph optimized at load
against precompiled, on those models and on a deep one, where the optimizer has the most to do."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import models as comparison_models
import onnx
import onnxruntime as ort
from kubeserve.runtime.config import RuntimeSettings
from kubeserve.runtime.model import CPU, session_options
from kubeserve.runtime.model_metadata import ModelOptimization
from kubeserve.runtime.optimize import OptimizeOptions, compare, open_model, optimize, random_feeds
from kubeserve.runtime.samples import mlp, write_sample
from payloads import INPUTS, Inputs, Payload, binary_payload, json_payload
from processes import tree_bytes
from server import RunningServer

VARIANTS = {
    "FP32": None,
    "FP32, precompiled": OptimizeOptions(precompile=True),
    "dynamicInt8": OptimizeOptions(quantization="dynamicInt8"),
}
# One sample per request: JSON rows for the MLP, binary images for the CNN (JSON decoding would hide the compute).
ENCODINGS: dict[str, Callable[..., Payload]] = {"mlp": json_payload, "cnn": binary_payload}


@dataclass(frozen=True)
class Bench:
    """A model measured: its label in the table, how its file is written, and its input."""

    label: str
    name: str  # the model's name in URLs and in ``inputs``
    write: Callable[[str, Path], Path]
    inputs: Inputs


BENCHES = (
    Bench("sample mlp", "mlp", write_sample, INPUTS),
    Bench("sample cnn", "cnn", write_sample, INPUTS),
    Bench("mlp", "mlp", comparison_models.write_model, comparison_models.INPUTS),
    Bench("cnn", "cnn", comparison_models.write_model, comparison_models.INPUTS),
)
CONCURRENCY = (1, 32)
STARTS = 7  # session creations timed per model file; their median is reported
DEEP_LAYERS = 400  # the deep MLP: 400 Gemm layers 64 wide, 6.5 MB; many nodes for the optimizer to fuse


@dataclass(frozen=True)
class Row:
    model: str
    variant: str
    file_bytes: int
    session_ms: float  # median ONNX Runtime session creation, as the server creates it
    ready_seconds: float  # the server's own model_ready: session, warm-up
    max_abs_diff: float
    results: dict[int, dict]  # loadgen's, by concurrency
    rss_bytes: int  # the server's resident memory after the load


def session_ms(path: Path, optimization: ModelOptimization) -> float:
    options = session_options(RuntimeSettings(model_path=path, model_name="bench"), optimization)
    timings = []
    for _ in range(STARTS):
        started = time.perf_counter()
        ort.InferenceSession(str(path), sess_options=options, providers=[CPU])
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def measure_optimization(work: Path, seconds: float, drive: Callable[..., dict]) -> list[Row]:
    rows = []
    for bench in BENCHES:
        name, key = bench.name, bench.label.replace(" ", "-")
        fp32 = bench.write(name, work / f"optimize-{key}.onnx")
        feeds = random_feeds(open_model(fp32))
        payload = ENCODINGS[name](name, 1, inputs=bench.inputs)
        for variant, options in VARIANTS.items():
            path, done, difference = fp32, ModelOptimization(), 0.0
            if options is not None:
                path = work / f"optimize-{key}-{variant.replace(', ', '-')}.onnx"
                done = optimize(fp32, path, options)
                report = compare(fp32, path, done, feeds, "random", runs=1)
                difference = max(value or 0.0 for value in report.max_abs_diff.values())
            startup = session_ms(path, done)
            with RunningServer(path, name) as server:
                results = {c: drive(server, payload, c, seconds, work / "body") for c in CONCURRENCY}
                rss = tree_bytes(server.pid, "VmRSS")
                ready = float(server.ready_event["seconds"])
            row = Row(bench.label, variant, path.stat().st_size, startup, ready, difference, results, rss)
            rows.append(row)
            print(
                f"optimization {bench.label:10} {variant:18} {row.file_bytes:>10,} B session {startup:6.1f} ms "
                + " ".join(
                    f"c={c} {r['requests_per_second']:,.0f} req/s p50 {r['p50_ms']:.2f} ms" for c, r in results.items()
                )
                + f" rss {rss / 2**20:.0f} MiB diff {difference:.2g}",
                flush=True,
            )
    return rows


def render_optimization(rows: list[Row]) -> str:
    lines = [
        "| model | variant | file | session creation ms | c=1 p50 ms | c=32 req/s | c=32 p99 ms "
        "| server CPU µs/req (c=32) | server RSS MiB | max abs diff vs FP32 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        one, many = row.results[1], row.results[32]
        size = f"{row.file_bytes / 2**20:.2f} MiB" if row.file_bytes >= 2**20 else f"{row.file_bytes / 1024:.0f} KiB"
        lines.append(
            f"| {row.model} | {row.variant} | {size} | {row.session_ms:.1f} | {one['p50_ms']:.2f} "
            f"| {many['requests_per_second']:,.0f} | {many['p99_ms']:.2f} | {many['server_cpu_us_per_request']:,.0f} "
            f"| {row.rss_bytes / 2**20:.0f} | {row.max_abs_diff:.2g} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class Startup:
    model: str
    nodes: int
    optimized_at_load_ms: float
    precompiled_ms: float


def measure_startup(work: Path) -> list[Startup]:
    """Session creation (median of STARTS) with graph optimization at load (level all, the server's default)
    against the precompiled file loaded with optimization off."""
    deep = work / "optimize-deep.onnx"
    shape = [64] * (DEEP_LAYERS + 1)
    onnx.save(mlp(shape, seed=14, input_name="x", output_name="y", batch="N", name="deep"), str(deep))
    sources = {
        "mlp": comparison_models.write_model("mlp", work / "startup-mlp.onnx"),
        "cnn": comparison_models.write_model("cnn", work / "startup-cnn.onnx"),
        f"deep MLP ({DEEP_LAYERS} layers)": deep,
    }
    found = []
    for name, source in sources.items():
        precompiled = source.with_name(f"{source.stem}-precompiled.onnx")
        done = optimize(source, precompiled, OptimizeOptions(precompile=True))
        nodes = len(onnx.load(str(source)).graph.node)
        found.append(Startup(name, nodes, session_ms(source, ModelOptimization()), session_ms(precompiled, done)))
        print(f"start-up {name}: {found[-1]}", flush=True)
    return found


def render_startup(rows: list[Startup]) -> str:
    lines = [
        "| model | nodes | session creation, optimized at load (ms) | precompiled, optimization off (ms) | saved |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        saved = 1 - row.precompiled_ms / row.optimized_at_load_ms
        lines.append(
            f"| {row.model} | {row.nodes} | {row.optimized_at_load_ms:.1f} | {row.precompiled_ms:.1f} | {saved:.0%} |"
        )
    return "\n".join(lines)
