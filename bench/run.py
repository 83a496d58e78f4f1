"""``make bench``: the runtime under closed-loop load on this machine, beside a plain server and in-process ORT.

First the comparison with a plain server: on three models built for it (bench/models.py), the runtime and a plain
reference server (bench/plain_server.py) are driven in turn by the same load generator with the same requests,
one sample per request, and the ratios are printed beside the absolute numbers, with the server CPU per
request; and the CNN image point as a pod serves it, its cores apart from the client's (bench/pod.py). Then, for
each sample model it starts the real server, drives load from a separate process (bench/loadgen.py) at several
concurrencies, and records requests/s, samples/s, p50/p99 and the server's CPU per request.
Each gain is measured in the same run: batching on against off, binary tensors against JSON, ORT's
thread spinning on against off; and what tracing costs the request path, off against on (bench/tracing_cost.py).
Then the processing around the model: an image per request decoded in the server against the same preprocessing
done by the client (bench/image_path.py), and a no-op Python handler's cost per request, against the same server
without it.
Last, the bench MLP and CNN as FP32, precompiled and dynamicInt8-quantized
(bench/optimization.py). Prints the tables, checks the project's floors, writes them to bench/out/ (ignored by git),
and (with ``--docs``) into docs/benchmarks.md with the date and the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

# PYTHONSAFEPATH keeps the script's folder off sys.path (the repository root holds `operator/`); add bench/ only.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import http_attacks
import models as comparison_models
import onnxruntime
import perf_analyzer
from grpc_bench import grpc_floors, measure_grpc, render_grpc
from image_path import measure_image_path, render_image_path
from inprocess import DEFAULTS, SERVER, Ceilings, best, ceilings, describe, samples_per_second
from kubeserve.runtime.cpus import available_cpus, workers_for_cores
from kubeserve.runtime.samples import write_sample
from optimization import measure_optimization, measure_startup, render_optimization, render_startup
from payloads import Payload, binary_payload, json_payload
from pod import CNN_SHARE_FLOOR, CNN_SHARE_GOAL, measure_pod, pod_floor, render_pod
from processes import pinned_to
from scaling import measure_scaling, render_scaling, scaling_floor
from server import PlainServer, RunningServer
from tracing_cost import measure_tracing

HERE = Path(__file__).resolve().parent
BENCHMARKS_PAGE = HERE.parent / "docs" / "benchmarks.md"
LOADGEN = HERE / "loadgen.py"
BATCH_SIZES = (1, 8, 32, 64)
CNN_ROWS = 8  # CNN requests carry a client-side batch of images


@dataclass(frozen=True)
class Scenario:
    model: str
    encoding: str  # "json" or "binary"
    rows: int
    flags: tuple[str, ...]
    batching: str
    concurrency: tuple[int, ...]


SCENARIOS = (
    Scenario("tiny", "json", 1, (), "on", (1, 8, 32)),
    Scenario("tiny", "json", 1, ("--max-batch-size", "0"), "off", (1, 8, 32)),
    Scenario("mlp", "json", 1, (), "on", (1, 8, 32)),
    Scenario("mlp", "json", 1, ("--max-batch-size", "0"), "off", (1, 8, 32)),
    Scenario("mlp", "json", 1, ("--allow-spinning",), "on, ORT spinning", (8, 32)),
    Scenario("cnn", "binary", CNN_ROWS, (), "on", (1, 8, 32)),
    Scenario("cnn", "binary", CNN_ROWS, ("--max-batch-size", "0"), "off", (32,)),
    Scenario("cnn", "json", CNN_ROWS, (), "on", (1, 8, 32)),
)


@dataclass(frozen=True)
class Point:
    """One point of the comparison with the plain server; every request carries one sample."""

    label: str
    model: str
    encoding: str  # "json" or "binary"
    concurrency: int
    metric: str  # the loadgen result compared: "p50_ms" (lower is better) or "requests_per_second"
    client: str = "loadgen"  # bench/loadgen.py against every server; "perf_analyzer": against kubeserve's only


PERF_ANALYZER_POINT = "cnn, c=32, binary, perf_analyzer, req/s"
POINTS = (
    Point("tiny, c=1, p50 ms", "tiny", "json", 1, "p50_ms"),
    Point("tiny, c=32, req/s", "tiny", "json", 32, "requests_per_second"),
    Point("mlp, c=32, JSON, req/s", "mlp", "json", 32, "requests_per_second"),
    Point("cnn, c=32, JSON, req/s", "cnn", "json", 32, "requests_per_second"),
    Point("cnn, c=32, binary, req/s", "cnn", "binary", 32, "requests_per_second"),
    Point(PERF_ANALYZER_POINT, "cnn", "binary", 32, "requests_per_second", client="perf_analyzer"),
)
# kubeserve as the operator runs it in a pod that asks for the cores this bench may use (one worker per whole core,
# ONNX Runtime's threads shared between them), and as one process. The floors are checked on the first.
DEPLOYED_WORKERS = workers_for_cores(available_cpus())
DEPLOYED = f"kubeserve, {DEPLOYED_WORKERS} worker{'s' if DEPLOYED_WORKERS > 1 else ''}"
ONE_WORKER = "kubeserve, 1 worker"
# Started one at a time: on a small machine two servers would share the cores the other is measured on.
SERVERS: dict[str, Callable[[Path, str], RunningServer]] = {
    DEPLOYED: partial(RunningServer, workers=DEPLOYED_WORKERS),
    **({ONE_WORKER: RunningServer} if DEPLOYED_WORKERS > 1 else {}),
    "plain": PlainServer,
}
KUBESERVE = [name for name in SERVERS if name != "plain"]
# The comparison runs in rounds, each server and in-process ORT once per round, and reports each point's median:
# the machines it runs on are shared, and one run of a point can be off by a fifth.
ROUNDS = 3

Results = dict[str, dict[str, dict]]  # load generators' results by point label and server
Round = tuple[Results, Ceilings]  # and in-process ORT's on the cnn


def drive(
    server: RunningServer,
    payload: Payload,
    concurrency: int,
    seconds: float,
    body_file: Path,
    cpus: set[int] | None = None,
    processes: int = 1,
) -> dict:
    """bench/loadgen.py against ``server`` (pinned to ``cpus``, if given, in ``processes``): its result, every answer
    a 200."""
    body_file.write_bytes(payload.body)
    command = [
        sys.executable, str(LOADGEN), "--url", f"{server.url}/v2/models/{server.model_name}/infer",
        "--body", str(body_file), "--concurrency", str(concurrency), "--warmup", "1", "--duration", str(seconds),
        "--server-pid", str(server.pid), "--processes", str(processes),
    ]  # fmt: skip
    for name, value in payload.headers.items():
        command += ["--header", f"{name}: {value}"]
    done = subprocess.run(command, check=True, capture_output=True, text=True, preexec_fn=pinned_to(cpus))
    result = json.loads(done.stdout)
    bad = {status: n for status, n in result["statuses"].items() if status != "200"}
    if bad:
        raise RuntimeError(f"the server answered {bad} under load")
    return result


def machine() -> str:
    model = "unknown CPU"
    with Path("/proc/cpuinfo").open() as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    return (
        f"{model}, {os.cpu_count()} cores, {memory_kib / 2**20:.0f} GiB; Python {platform.python_version()}, "
        f"onnxruntime {onnxruntime.__version__}; server and load generator on the same cores"
    )


def server_cores(result: dict) -> float:
    """Cores the server kept busy: its CPU per request times the requests per second."""
    return result["server_cpu_us_per_request"] * result["requests_per_second"] / 1e6


def compare(work: Path, seconds: float, rounds: int = ROUNDS) -> list[Round]:
    """Each round: each point on each server (load generators' results by point label and server), and in-process
    ORT's ceilings on the cnn (samples/s by batch size). perf_analyzer's point only where it is installed."""
    write = comparison_models.write_model
    paths = {name: write(name, work / f"compare-{name}.onnx") for name in comparison_models.BUILDERS}
    if not perf_analyzer.available():
        print(f"compare: {PERF_ANALYZER_POINT} not measured: {perf_analyzer.MISSING}", flush=True)
    measured = []
    for round_number in range(1, rounds + 1):
        results: Results = {point.label: {} for point in POINTS}
        for model, path in paths.items():
            for server_name, start in SERVERS.items():
                with start(path, model) as server:
                    for point in (p for p in POINTS if p.model == model and measures(p, server_name)):
                        result = drive_point(point, server, seconds, work)
                        results[point.label][server_name] = result
                        client = (
                            f" client {result['client_cpu_us_per_request']:5,.0f} µs/req"
                            if "client_cpu_us_per_request" in result
                            else ""
                        )
                        print(
                            f"compare {round_number} {point.label:26} {server_name:21} "
                            f"{result['requests_per_second']:9,.0f} req/s p50 {result['p50_ms']:7.2f} ms "
                            f"p99 {result['p99_ms']:7.2f} ms cpu {result['server_cpu_us_per_request']:7,.0f} µs/req "
                            f"({server_cores(result):.2f} cores){client}",
                            flush=True,
                        )
        inprocess = ceilings("cnn", paths["cnn"], BATCH_SIZES, inputs=comparison_models.INPUTS)
        print(f"compare {round_number} in-process cnn: {describe(inprocess)}", flush=True)
        measured.append((results, inprocess))
    return measured


def measures(point: Point, server_name: str) -> bool:
    """Whether ``point`` is measured on that server in this run."""
    if point.client == "perf_analyzer":  # it needs the model's metadata and configuration: kubeserve's alone
        return server_name in KUBESERVE and perf_analyzer.available()
    return True


def drive_point(point: Point, server: RunningServer, seconds: float, work: Path) -> dict:
    if point.client == "perf_analyzer":
        name, shape = comparison_models.INPUTS[point.model]
        return perf_analyzer.drive(server, name, shape, point.concurrency)
    make = binary_payload if point.encoding == "binary" else json_payload
    payload = make(point.model, 1, inputs=comparison_models.INPUTS)
    return drive(server, payload, point.concurrency, seconds, work / "body")


def medians(measured: list[Round]) -> Round:
    """Each point's median round (the whole result of the round whose compared metric is the median), and each
    in-process ceiling's median samples/s at each batch size."""
    results: Results = {}
    for point in POINTS:
        results[point.label] = {}
        for server in SERVERS:
            ranked = sorted(
                (round_[point.label][server] for round_, _ in measured if server in round_[point.label]),
                key=lambda r: r[point.metric],
            )
            if ranked:
                results[point.label][server] = ranked[len(ranked) // 2]
    ceilings_ = {
        ceiling: {batch: statistics.median(round_[ceiling][batch] for _, round_ in measured) for batch in BATCH_SIZES}
        for ceiling in measured[0][1]
    }
    return results, ceilings_


def _ratio(label: str) -> Callable[[Results, Ceilings], float | None]:
    """kubeserve's value at ``label`` over plain's."""
    metric = next(p for p in POINTS if p.label == label).metric
    return lambda results, _: results[label][DEPLOYED][metric] / results[label]["plain"][metric]


def _cnn_share(label: str) -> Callable[[Results, Ceilings], float | None]:
    """kubeserve's req/s (one image per request) at ``label`` over in-process ORT's best samples/s; None: not
    measured."""

    def share(results: Results, inprocess: Ceilings) -> float | None:
        result = results[label].get(DEPLOYED)
        return None if result is None else result["requests_per_second"] / best(inprocess)[1]

    return share


# The floors against the plain server and in-process ORT at its best (inprocess.best): the measured value, the
# bound, and which way it passes (the p50's ratio must stay at or under 1; the others at or over their bound). The
# Python load generator shares the cores and costs more CPU per request than perf_analyzer, hence its lower bound.
FLOORS = (
    ("tiny, concurrency 1: p50 no worse than plain's", _ratio("tiny, c=1, p50 ms"), 1.0, "at most"),
    ("tiny, c=32: at least 1.3x plain's req/s", _ratio("tiny, c=32, req/s"), 1.3, "at least"),
    ("mlp, c=32, JSON: at least 2.5x plain's req/s", _ratio("mlp, c=32, JSON, req/s"), 2.5, "at least"),
    ("cnn, c=32, one binary image per request (bench/loadgen.py): at least 0.38x in-process ORT's best samples/s",
     _cnn_share("cnn, c=32, binary, req/s"), 0.38, "at least"),
    (f"cnn, c=32, one binary image per request (perf_analyzer on the same cores): at least {CNN_SHARE_FLOOR}x "
     f"in-process ORT's best samples/s (goal {CNN_SHARE_GOAL}x)", _cnn_share(PERF_ANALYZER_POINT), CNN_SHARE_FLOOR,
     "at least"),
)  # fmt: skip


def compare_floors(measured: list[Round], scaling: dict[str, list[dict]]) -> list[tuple[str, bool | None, str]]:
    """The comparison's floors on each point's median round, with the value each round gave. ``None``: not measurable in
    this run (said so rather than passed)."""
    results, inprocess = medians(measured)
    floors: list[tuple[str, bool | None, str]] = []
    for name, value_of, bound, way in FLOORS:
        value = value_of(results, inprocess)
        if value is None:
            floors.append((name, None, perf_analyzer.MISSING))
            continue
        passed = value <= bound if way == "at most" else value >= bound
        each = ", ".join(f"{value_of(*round_):.2f}x" for round_ in measured)
        floors.append((name, passed, f"{value:.2f}x of the medians (rounds: {each})"))
    return floors + [scaling_floor(model, rows) for model, rows in scaling.items()]


# The models whose scaling with workers is measured, and how their requests are sent.
SCALED = {"mlp": "json", "cnn": "binary"}


def scale(work: Path, seconds: float) -> dict[str, list[dict]]:
    """The runtime with more workers on the comparison's models: rows by model."""
    scaling = {}
    for model, encoding in SCALED.items():
        path = comparison_models.write_model(model, work / f"scale-{model}.onnx")
        make = binary_payload if encoding == "binary" else json_payload
        payload = make(model, 1, inputs=comparison_models.INPUTS)
        scaling[f"{model}, {encoding}"] = measure_scaling(model, path, payload, seconds, work, drive)
    return scaling


def _comparison_cells(point: Point, measured: dict[str, dict]) -> list[str]:
    """A point's row: its value on each server, kubeserve's over plain's, server CPU per request and cores kept busy;
    empty where a server was not measured."""
    shown = "{:.2f}" if point.metric == "p50_ms" else "{:,.0f}"
    plain = measured.get("plain")
    values = [shown.format(measured[name][point.metric]) if name in measured else "" for name in SERVERS]
    ratios = [
        f"{measured[name][point.metric] / plain[point.metric]:.2f}x" if plain and name in measured else ""
        for name in KUBESERVE
    ]
    cpu = [f"{measured[name]['server_cpu_us_per_request']:,.0f}" if name in measured else "" for name in SERVERS]
    cores = [f"{server_cores(measured[name]):.2f}" if name in measured else "" for name in SERVERS]
    return values + ratios + cpu + cores


def render_comparison(results: Results, inprocess_cnn: Ceilings) -> str:
    """Each point on each server, the ratios to plain, each server's CPU per request and cores kept busy; then the
    in-process ceilings and the cnn's share of the best."""
    short = [name.removeprefix("kubeserve, ") for name in SERVERS]  # the headers after the first group
    lines = [
        "| point | " + " | ".join(SERVERS) + " | ÷ plain: " + " | ".join(short[: len(KUBESERVE)])
        + " | server CPU µs/req: " + " | ".join(short) + " | server cores: " + " | ".join(short) + " |",
        "|---|" + "---:|" * (3 * len(SERVERS) + len(KUBESERVE)),
    ]  # fmt: skip
    for point in POINTS:
        measured = results[point.label]
        if not measured:
            continue
        cells = _comparison_cells(point, measured)
        lines.append(f"| {point.label} | " + " | ".join(cells) + " |")
    best_batch, best_rate = best(inprocess_cnn)
    defaults_batch, defaults_rate = best(inprocess_cnn, DEFAULTS)
    server_batch, server_rate = best(inprocess_cnn, SERVER)
    shares = "; ".join(
        f"{point.label.removesuffix(', req/s')}: "
        + ", ".join(
            f"{name} {results[point.label][name]['requests_per_second'] / best_rate:.2f}x"
            for name in KUBESERVE
            if name in results[point.label]
        )
        for point in POINTS
        if point.model == "cnn" and point.encoding == "binary" and results[point.label]
    )
    clients = [
        f"{name} {results[PERF_ANALYZER_POINT][name]['client_cpu_us_per_request']:,.0f}"
        for name in KUBESERVE
        if name in results[PERF_ANALYZER_POINT]
    ]
    lines += [
        "",
        f"In-process ONNX Runtime on the same cnn, median of the rounds at each batch size: with its defaults "
        f"({available_cpus()} intra-op threads, spinning on) {defaults_rate:,.0f} samples/s at best (batch "
        f"{defaults_batch}); with the server's session options for one process (spinning off) {server_rate:,.0f} "
        f"(batch {server_batch}). Its best, {best_rate:,.0f} samples/s (batch {best_batch}), is the ceiling; of it, "
        f"one binary image per request serves: {shares}."
        + (f" perf_analyzer's own CPU per request (µs): {', '.join(clients)}." if clients else ""),
    ]
    return "\n".join(lines)


def render_floors(floors: list[tuple[str, bool | None, str]]) -> list[str]:
    marks = {True: "PASS", False: "BELOW", None: "NOT MEASURED"}
    return [f"- {marks[ok]} {name}: {detail}" for name, ok, detail in floors]


def render(rows: list[dict], inprocess: dict[str, dict[int, float]], floors: list[tuple[str, bool, str]]) -> str:
    lines = [
        "| model | request | batching | concurrency | req/s | samples/s | p50 ms | p99 ms | server CPU µs/req |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['request']} | {row['batching']} | {row['concurrency']} "
            f"| {row['requests_per_second']:,.0f} | {row['samples_per_second']:,.0f} | {row['p50_ms']:.2f} "
            f"| {row['p99_ms']:.2f} | {row['server_cpu_us_per_request']:,.0f} |"
        )
    lines += ["", "In-process ONNX Runtime with its defaults (same model file, spinning on), samples/s:", ""]
    lines += ["| model | " + " | ".join(f"batch {b}" for b in BATCH_SIZES) + " |"]
    lines += ["|---|" + "---:|" * len(BATCH_SIZES)]
    for model, by_batch in inprocess.items():
        lines.append(f"| {model} | " + " | ".join(f"{by_batch[b]:,.0f}" for b in BATCH_SIZES) + " |")
    lines += ["", "Floors:", "", *render_floors(floors)]
    return "\n".join(lines)


def check_floors(rows: list[dict], inprocess: dict[str, dict[int, float]]) -> list[tuple[str, bool, str]]:
    def point(model: str, request: str, batching: str, concurrency: int) -> dict:
        return next(
            r for r in rows
            if (r["model"], r["request"], r["batching"], r["concurrency"]) == (model, request, batching, concurrency)
        )  # fmt: skip

    tiny_1, tiny_32 = point("tiny", "JSON", "on", 1), point("tiny", "JSON", "on", 32)
    mlp_on, mlp_off = point("mlp", "JSON", "on", 32), point("mlp", "JSON", "off", 32)
    cnn_request = f"binary, {CNN_ROWS} images"
    cnn_bin, cnn_json = point("cnn", cnn_request, "on", 32), point("cnn", f"JSON, {CNN_ROWS} images", "on", 32)
    ceiling = max(inprocess["cnn"].values())
    gain = mlp_on["requests_per_second"] / mlp_off["requests_per_second"]
    share = cnn_bin["samples_per_second"] / ceiling
    binary_gain = cnn_bin["samples_per_second"] / cnn_json["samples_per_second"]
    return [
        ("tiny, concurrency 1: p50 under 0.5 ms", tiny_1["p50_ms"] < 0.5, f"{tiny_1['p50_ms']:.3f} ms"),
        ("tiny, concurrency 32: under 150 µs of server CPU per request",
         tiny_32["server_cpu_us_per_request"] < 150, f"{tiny_32['server_cpu_us_per_request']:.0f} µs"),
        ("MLP, concurrency 32, JSON: batching on serves at least 1.8x batching off", gain >= 1.8, f"{gain:.2f}x"),
        ("MLP, concurrency 32, JSON: more than 4,000 req/s", mlp_on["requests_per_second"] > 4000,
         f"{mlp_on['requests_per_second']:,.0f} req/s"),
        ("CNN, concurrency 32, binary: at least 40% of in-process ORT's best samples/s", share >= 0.4,
         f"{share:.0%} ({cnn_bin['samples_per_second']:,.0f} of {ceiling:,.0f})"),
        ("CNN, concurrency 32: binary at least 5x JSON", binary_gain >= 5, f"{binary_gain:.1f}x"),
    ]  # fmt: skip


# Python handlers that change nothing (bench/noop_handler.py): their preprocess and postprocess stages' own cost, in
# the stage threads and on the event loop (``async def``).
HANDLER_SERVERS = {
    "plain path": (),
    "no-op handler": ("--handler", "noop_handler:NoOp", "--handler-path", str(HERE)),
    "async no-op": ("--handler", "noop_handler:NoOpOnLoop", "--handler-path", str(HERE)),
}
HANDLER_GOAL_US = 20  # of server CPU per request, over the same server without the handler
# Rounds of the handler's points: a cost of some µs against a request's 100 or more, on shared cores whose speed
# drifts by more than that between minutes, needs many short rounds, each server's beside the others'.
HANDLER_ROUNDS = 12


def measure_handler(work: Path, seconds: float, rounds: int = HANDLER_ROUNDS) -> dict[str, dict[int, list[dict]]]:
    """The sample MLP, one JSON row per request, served without a handler and with each no-op one: the servers all
    started first, then, in each round, each driven in turn (the order reversed every other round, so a drift in the
    machine's speed falls on all alike) at concurrency 1 and 32: loadgen results by server and concurrency, one per
    round."""
    path = write_sample("mlp", work / "mlp.onnx")
    payload = json_payload("mlp", 1)
    results: dict[str, dict[int, list[dict]]] = {name: {1: [], 32: []} for name in HANDLER_SERVERS}
    with contextlib.ExitStack() as stack:
        servers = {
            name: stack.enter_context(RunningServer(path, "mlp", *flags)) for name, flags in HANDLER_SERVERS.items()
        }
        for round_number in range(1, rounds + 1):
            order = list(servers) if round_number % 2 else list(reversed(servers))
            for name in order:
                for concurrency, measured in results[name].items():
                    result = drive(servers[name], payload, concurrency, seconds, work / "body")
                    measured.append(result)
                    print(
                        f"handler {round_number} {name:13} c={concurrency:<3} {result['requests_per_second']:9,.0f} "
                        f"req/s p50 {result['p50_ms']:7.3f} ms cpu {result['server_cpu_us_per_request']:7,.1f} µs/req",
                        flush=True,
                    )
    return results


def render_handler(results: dict[str, dict[int, list[dict]]]) -> str:
    """Each point's median over the rounds, with and without the handler, and the handler's cost: the median of its
    rounds' differences from the plain path in the same round; then the goal."""

    def median(name: str, concurrency: int, metric: str) -> float:
        return statistics.median(result[metric] for result in results[name][concurrency])

    def cost(name: str, concurrency: int, metric: str) -> float:
        paired = zip(results[name][concurrency], results["plain path"][concurrency], strict=True)
        return statistics.median(handled[metric] - plain[metric] for handled, plain in paired)

    handlers = [name for name in HANDLER_SERVERS if name != "plain path"]
    lines = [
        f"| sample mlp, JSON, medians | plain path | {' | '.join(f'{name} (its cost)' for name in handlers)} |",
        f"|---|---:|{'---:|' * len(handlers)}",
    ]
    for label, concurrency, metric, scale in (
        ("c=1: p50 latency", 1, "p50_ms", 1e3),
        ("c=32: server CPU per request", 32, "server_cpu_us_per_request", 1.0),
    ):
        cells = [
            f"{median(name, concurrency, metric) * scale:,.1f} µs ({cost(name, concurrency, metric) * scale:+,.1f} µs)"
            for name in handlers
        ]
        lines.append(f"| {label} | {median('plain path', concurrency, metric) * scale:,.1f} µs | {' | '.join(cells)} |")
    plain = median("plain path", 32, "requests_per_second")
    rates = [median(name, 32, "requests_per_second") for name in handlers]
    cells = [f"{rate:,.0f} ({rate / plain - 1:+.1%})" for rate in rates]
    lines.append(f"| c=32: req/s | {plain:,.0f} | {' | '.join(cells)} |")
    floors = []
    for name, where in (("no-op handler", "in the stage threads"), ("async no-op", "async def, on the event loop")):
        spent = cost(name, 32, "server_cpu_us_per_request")
        goal = f"a no-op Python handler ({where}) costs at most {HANDLER_GOAL_US} µs of server CPU per request (c=32)"
        floors.append((goal, spent <= HANDLER_GOAL_US, f"{spent:+.1f} µs"))
    return "\n".join([*lines, "", *render_floors(floors)])


def write_docs(text: str, section: str = "bench") -> None:
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    page = BENCHMARKS_PAGE.read_text()
    if begin not in page or end not in page:
        raise SystemExit(f"{BENCHMARKS_PAGE} has no {begin} ... {end} section")
    head, rest = page.split(begin, 1)
    _old, tail = rest.split(end, 1)
    BENCHMARKS_PAGE.write_text(f"{head}{begin}\n{text}\n{end}{tail}")


def measure_self(work: Path, seconds: float) -> tuple[list[dict], dict[str, dict[int, float]]]:
    """The runtime against itself on the bundled samples: batching, encodings, ORT spinning."""
    models = {name: write_sample(name, work / f"{name}.onnx") for name in ("tiny", "mlp", "cnn")}
    inprocess = {}
    for name, path in models.items():
        inprocess[name] = samples_per_second(name, path, BATCH_SIZES)
        print(f"in-process {name}: " + ", ".join(f"b{b} {v:,.0f}/s" for b, v in inprocess[name].items()), flush=True)

    rows = []
    for scenario in SCENARIOS:
        make = binary_payload if scenario.encoding == "binary" else json_payload
        payload = make(scenario.model, scenario.rows)
        request = "binary" if scenario.encoding == "binary" else "JSON"
        if scenario.rows > 1:
            request += f", {scenario.rows} images"
        with RunningServer(models[scenario.model], scenario.model, *scenario.flags) as server:
            for concurrency in scenario.concurrency:
                result = drive(server, payload, concurrency, seconds, work / "body")
                row = {
                    "model": scenario.model, "request": request, "batching": scenario.batching,
                    "concurrency": concurrency, "samples_per_second": result["requests_per_second"] * scenario.rows,
                    **result,
                }  # fmt: skip
                rows.append(row)
                print(
                    f"{scenario.model:5} {request:18} batching {scenario.batching:16} c={concurrency:<3} "
                    f"{row['requests_per_second']:9,.0f} req/s {row['samples_per_second']:9,.0f} samples/s "
                    f"p50 {row['p50_ms']:7.2f} ms p99 {row['p99_ms']:7.2f} ms "
                    f"cpu {row['server_cpu_us_per_request']:7,.0f} µs/req",
                    flush=True,
                )
    return rows, inprocess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per point")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="rounds of the comparison (medians reported)")
    parser.add_argument("--docs", action="store_true", help="also write the tables into docs/benchmarks.md")
    parser.add_argument(
        "--part", choices=("all", "comparison", "grpc", "self", "processing", "optimization", "attacks"), default="all",
        help="comparison: the runtime against the plain server; self: the runtime against itself (samples, tracing); "
        "processing: images decoded in the server against the client, and a no-op Python handler against the same "
        "server without it; "
        "optimization: FP32 against precompiled and dynamicInt8 (its own table); grpc: gRPC against REST on the same "
        "server (bench/grpc_bench.py); attacks: hostile clients "
        "against the HTTP layer, a normal client beside each (bench/http_attacks.py)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.docs and args.part not in ("all", "optimization"):
        parser.error("--docs writes every table of docs/benchmarks.md: it needs --part all (or optimization)")

    work = Path(tempfile.mkdtemp(prefix="kubeserve-bench-"))
    print(f"machine: {machine()}", flush=True)
    today = datetime.date.today().isoformat()
    header = f"Measured {today} on {machine()} (`make bench`, {args.seconds:g} s per point)."
    text = header
    saved: dict = {}
    optimization_text = None
    if args.part in ("all", "comparison"):
        measured = compare(work, args.seconds, args.rounds)
        results, inprocess_cnn = medians(measured)
        scaling = scale(work, args.seconds)
        connections = next(point.concurrency for point in POINTS if point.label == PERF_ANALYZER_POINT)
        pod_model = comparison_models.write_model("cnn", work / "pod-cnn.onnx")
        pod = measure_pod(pod_model, args.rounds, BATCH_SIZES, connections)
        floors = [*compare_floors(measured, scaling), pod_floor(pod)]
        text += (
            "\n\nAgainst a plain server (bench/plain_server.py: aiohttp on uvloop, `json`, `session.run` in the "
            "handler, 2 intra-op threads) on the models of bench/models.py, one sample per request, same load "
            f"generator, one server at a time, in {args.rounds} rounds (each point's median round shown). {DEPLOYED} "
            f"is the runtime as the operator runs it in a pod that asks for the {available_cpus()} cores this bench "
            "may use (one worker per whole core, ONNX Runtime's threads shared between them); the floors are checked "
            "on it, but for the pod point's (after the table):\n\n"
            + render_comparison(results, inprocess_cnn)
            + "\n\n"
            + render_pod(pod)
            + "\n\nPast one core, `workers`: N workers pinned to N CPUs, the load generator to CPUs of its own, 32 "
            "connections per worker, one sample per request (only where the machine has twice the CPUs):\n\n"
            + "\n\n".join(render_scaling(model, rows) for model, rows in scaling.items())
            + "\n\nFloors against the plain server and in-process ORT:\n\n"
            + "\n".join(render_floors(floors))
        )
        saved["comparison"] = {
            "rounds": [{"results": r, "inprocess_cnn": i} for r, i in measured],
            "results": results,
            "inprocess_cnn": inprocess_cnn,
            "scaling": scaling,
            "pod": [{"result": result, "inprocess_cnn": ceiling} for result, ceiling in pod.rounds],
        }
    if args.part in ("all", "grpc"):
        grpc_results = measure_grpc(work, args.seconds, args.rounds, drive, DEPLOYED_WORKERS)
        text += (
            f"\n\ngRPC against REST on the same server ({DEPLOYED}), the models of bench/models.py, one sample per "
            f"request, in {args.rounds} rounds (medians; bench/grpc_bench.py):\n\n"
            + render_grpc(grpc_results)
            + "\n\n"
            + "\n".join(render_floors(grpc_floors(grpc_results)))
        )
        saved["grpc"] = grpc_results
    if args.part in ("all", "self"):
        rows, inprocess = measure_self(work, args.seconds)
        text += "\n\nThe runtime against itself on the bundled samples:\n\n" + render(
            rows, inprocess, check_floors(rows, inprocess)
        )
        tracing = measure_tracing(work)
        print(tracing.render(), flush=True)
        text += f"\n\n{tracing.render()}."
        saved.update(rows=rows, inprocess=inprocess, tracing=vars(tracing))
    if args.part in ("all", "processing"):
        image_rows = measure_image_path(work, args.seconds, drive)
        text += "\n\n" + render_image_path(image_rows)
        saved["image_path"] = [vars(row) for row in image_rows]
        handler_results = measure_handler(work, args.seconds / 2)
        text += (
            "\n\nA Python handler that changes nothing (bench/noop_handler.py: a preprocess and a postprocess stage "
            "per request, in a stage thread or, written async def, on the event loop) against the same server without "
            f"one, in {HANDLER_ROUNDS} rounds of {args.seconds / 2:g} s per point, the servers side by side:\n\n"
            + render_handler(handler_results)
        )
        saved["handler"] = handler_results
    if args.part in ("all", "attacks"):
        for workers in sorted({1, DEPLOYED_WORKERS}):
            attack_rows = http_attacks.run(workers, args.seconds, list(http_attacks.ATTACKS))
            text += "\n\n" + http_attacks.render(attack_rows, workers) + "\n\n"
            text += "\n".join(render_floors([http_attacks.floor(attack_rows, workers)]))
            saved.setdefault("attacks", {})[workers] = [vars(row) for row in attack_rows]
    if args.part in ("all", "optimization"):
        optimization_rows = measure_optimization(work, args.seconds, drive)
        startup_rows = measure_startup(work)
        optimization_text = (
            f"{header}\n\n{render_optimization(optimization_rows)}\n\nStart-up: ONNX Runtime session creation "
            f"(median of several) as the server creates it, the graph optimized at load against precompiled:\n\n"
            f"{render_startup(startup_rows)}"
        )
        saved["optimization"] = [vars(row) for row in optimization_rows]
        saved["startup"] = [vars(row) for row in startup_rows]
        if args.part == "optimization":
            text = optimization_text
    (HERE / "out").mkdir(exist_ok=True)
    tables = f"{text}\n\n{optimization_text}" if args.part == "all" and optimization_text is not None else text
    (HERE / "out" / "results.md").write_text(tables + "\n")
    (HERE / "out" / "results.json").write_text(json.dumps(saved, indent=2))
    print("\n" + text)
    if args.part == "all" and optimization_text is not None:
        print("\n" + optimization_text)
    if args.docs:
        if args.part == "all":
            write_docs(text)
        if optimization_text is not None:
            write_docs(optimization_text, "bench-optimization")
        print(f"\nwritten to {BENCHMARKS_PAGE}")


if __name__ == "__main__":
    main()
