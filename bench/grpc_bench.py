"""gRPC against REST in the same run, on the same server: the comparison models (bench/models.py), one sample per
request, each point driven over REST by bench/loadgen.py and over gRPC by bench/grpc_load.py, in rounds (each
point's median shown), with the server's CPU per request.

Points: tiny at concurrency 1 (p50; REST JSON, gRPC raw), mlp and cnn at concurrency 32 (req/s; REST JSON, REST
binary, gRPC raw; and, where it is installed, REST binary and gRPC raw from perf_analyzer, whose own cost per call is
the same for both). Floors: on the cnn, gRPC with raw contents serves at least what REST with binary tensors does;
tiny's p50 over gRPC is within 10% of REST's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import models as comparison_models
import perf_analyzer
from payloads import Payload, binary_payload, json_payload, sample_rows
from server import RunningServer

HERE = Path(__file__).resolve().parent
GRPC_LOAD = HERE / "grpc_load.py"
REST_JSON, REST_BINARY, GRPC_RAW = "REST JSON", "REST binary", "gRPC raw"
# The same two from perf_analyzer (bench/perf_analyzer.py), and the protocol it is told to speak for each.
PA_REST_BINARY, PA_GRPC_RAW = "REST binary, perf_analyzer", "gRPC raw, perf_analyzer"
PERF_ANALYZER_WAYS = {PA_REST_BINARY: "http", PA_GRPC_RAW: "grpc"}


@dataclass(frozen=True)
class GrpcPoint:
    model: str
    concurrency: int
    metric: str  # "p50_ms" (lower is better) or "requests_per_second"
    ways: tuple[str, ...]


POINTS = (
    GrpcPoint("tiny", 1, "p50_ms", (REST_JSON, GRPC_RAW)),
    GrpcPoint("mlp", 32, "requests_per_second", (REST_JSON, REST_BINARY, GRPC_RAW, *PERF_ANALYZER_WAYS)),
    GrpcPoint("cnn", 32, "requests_per_second", (REST_JSON, REST_BINARY, GRPC_RAW, *PERF_ANALYZER_WAYS)),
)
TINY_P50_MARGIN = 1.10  # gRPC's p50 at most 10% over REST's
Drive = Callable[..., dict]
# Results: by point label, then way: one loadgen result per round.
Results = dict[str, dict[str, list[dict]]]


def label(point: GrpcPoint) -> str:
    return f"{point.model}, c={point.concurrency}"


def grpc_body(model: str) -> bytes:
    """A ``ModelInferRequest`` with the same sample as REST's payloads, its tensor in ``raw_input_contents``."""
    from kubeserve.runtime.grpc import grpc_service_pb2 as pb

    name, _shape = comparison_models.INPUTS[model]
    data = sample_rows(model, 1, inputs=comparison_models.INPUTS)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype="FP32", shape=data.shape)
    request.raw_input_contents.append(data.tobytes())
    return request.SerializeToString()


def drive_grpc(server: RunningServer, body: bytes, concurrency: int, seconds: float, body_file: Path) -> dict:
    """bench/grpc_load.py against ``server``: its result, every answer OK."""
    body_file.write_bytes(body)
    command = [
        sys.executable, str(GRPC_LOAD), "--address", server.grpc_address, "--body", str(body_file),
        "--concurrency", str(concurrency), "--warmup", "1", "--duration", str(seconds),
        "--server-pid", str(server.pid),
    ]  # fmt: skip
    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    bad = {status: n for status, n in result["statuses"].items() if status != "OK"}
    if bad:
        raise RuntimeError(f"the server answered {bad} under gRPC load")
    return result


def measure_grpc(work: Path, seconds: float, rounds: int, drive: Drive, workers: int) -> Results:
    """Each point each way, one server per model (``workers`` processes), the ways in turn within each round."""
    results: Results = {label(point): {way: [] for way in point.ways} for point in POINTS}
    for round_number in range(1, rounds + 1):
        for point in POINTS:
            path = comparison_models.write_model(point.model, work / f"grpc-{point.model}.onnx")
            payloads: dict[str, Payload] = {
                REST_JSON: json_payload(point.model, 1, inputs=comparison_models.INPUTS),
                REST_BINARY: binary_payload(point.model, 1, inputs=comparison_models.INPUTS),
            }
            with RunningServer(path, point.model, workers=workers) as server:
                for way in point.ways:
                    if way in PERF_ANALYZER_WAYS:
                        if not perf_analyzer.available():
                            continue
                        name, shape = comparison_models.INPUTS[point.model]
                        protocol = PERF_ANALYZER_WAYS[way]
                        result = perf_analyzer.drive(server, name, shape, point.concurrency, protocol)
                    elif way == GRPC_RAW:
                        result = drive_grpc(server, grpc_body(point.model), point.concurrency, seconds, work / "grpc")
                    else:
                        result = drive(server, payloads[way], point.concurrency, seconds, work / "body")
                    results[label(point)][way].append(result)
                    print(
                        f"grpc {round_number} {label(point):9} {way:11} {result['requests_per_second']:9,.0f} req/s "
                        f"p50 {result['p50_ms']:7.3f} ms p99 {result['p99_ms']:7.3f} ms "
                        f"cpu {result['server_cpu_us_per_request']:7,.0f} µs/req",
                        flush=True,
                    )
    return results


def _median(results: Results, point: GrpcPoint, way: str) -> dict:
    """The round whose compared metric is the median."""
    ranked = sorted(results[label(point)][way], key=lambda result: result[point.metric])
    return ranked[len(ranked) // 2]


def grpc_floors(results: Results) -> list[tuple[str, bool, str]]:
    tiny, _mlp, cnn = POINTS
    grpc_cnn = _median(results, cnn, GRPC_RAW)["requests_per_second"]
    rest_cnn = _median(results, cnn, REST_BINARY)["requests_per_second"]
    grpc_tiny = _median(results, tiny, GRPC_RAW)["p50_ms"]
    rest_tiny = _median(results, tiny, REST_JSON)["p50_ms"]
    return [
        ("cnn, c=32, one image per request: gRPC raw serves at least REST binary's req/s", grpc_cnn >= rest_cnn,
         f"{grpc_cnn / rest_cnn:.2f}x ({grpc_cnn:,.0f} against {rest_cnn:,.0f} req/s)"),
        ("tiny, c=1: gRPC's p50 within 10% of REST's", grpc_tiny <= rest_tiny * TINY_P50_MARGIN,
         f"{grpc_tiny / rest_tiny:.2f}x ({grpc_tiny:.3f} against {rest_tiny:.3f} ms)"),
    ]  # fmt: skip


def render_grpc(results: Results) -> str:
    ways = (REST_JSON, REST_BINARY, GRPC_RAW, *PERF_ANALYZER_WAYS)
    lines = [
        "| point | " + " | ".join(ways) + " | server CPU µs/req: " + " | ".join(ways) + " |",
        "|---|" + "---:|" * (2 * len(ways)),
    ]
    for point in POINTS:
        unit = "p50 ms" if point.metric == "p50_ms" else "req/s"
        shown = "{:.3f}" if point.metric == "p50_ms" else "{:,.0f}"
        medians = {way: _median(results, point, way) for way in point.ways if results[label(point)][way]}
        cells = [shown.format(medians[way][point.metric]) if way in medians else "" for way in ways]
        cells += [f"{medians[way]['server_cpu_us_per_request']:,.0f}" if way in medians else "" for way in ways]
        lines.append(f"| {label(point)}, {unit} | " + " | ".join(cells) + " |")
    rounds = len(next(iter(next(iter(results.values())).values())))
    spread = ", ".join(
        f"{label(point)} {way}: " + "/".join(f"{r[point.metric]:,.3g}" for r in results[label(point)][way])
        for point in POINTS
        for way in point.ways
        if results[label(point)][way]
    )
    return "\n".join([*lines, "", f"Each round ({rounds}): {spread}."])
