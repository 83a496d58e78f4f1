"""``make bench``: the runtime under closed-loop load on this machine, beside in-process ONNX Runtime.

For each sample model it starts the real server, drives load from a separate process (bench/loadgen.py)
at several concurrencies, and records requests/s, samples/s, p50/p99 and the server's CPU per request.
Each gain is measured in the same run: batching on against off, binary tensors against JSON, ORT's
thread spinning on against off. Prints the tables, checks the project's floors, and (with ``--readme``)
writes the tables into README.md with the date and the machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# PYTHONSAFEPATH keeps the script's folder off sys.path (the repository root holds `operator/`); add bench/ only.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import onnxruntime
from inprocess import samples_per_second
from kubeserve.runtime.samples import write_sample
from payloads import Payload, binary_payload, json_payload
from server import RunningServer

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
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


def drive(server: RunningServer, payload: Payload, concurrency: int, seconds: float, body_file: Path) -> dict:
    body_file.write_bytes(payload.body)
    command = [
        sys.executable, str(LOADGEN), "--url", f"{server.url}/v2/models/{server.model_name}/infer",
        "--body", str(body_file), "--concurrency", str(concurrency), "--warmup", "1", "--duration", str(seconds),
        "--server-pid", str(server.pid),
    ]  # fmt: skip
    for name, value in payload.headers.items():
        command += ["--header", f"{name}: {value}"]
    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
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
    lines += ["", "In-process ONNX Runtime, same model file and session settings (samples/s):", ""]
    lines += ["| model | " + " | ".join(f"batch {b}" for b in BATCH_SIZES) + " |"]
    lines += ["|---|" + "---:|" * len(BATCH_SIZES)]
    for model, by_batch in inprocess.items():
        lines.append(f"| {model} | " + " | ".join(f"{by_batch[b]:,.0f}" for b in BATCH_SIZES) + " |")
    lines += ["", "Floors:", ""]
    lines += [f"- {'✓' if ok else '✗'} {name}: {detail}" for name, ok, detail in floors]
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
    best = max(inprocess["cnn"].values())
    gain = mlp_on["requests_per_second"] / mlp_off["requests_per_second"]
    share = cnn_bin["samples_per_second"] / best
    binary_gain = cnn_bin["samples_per_second"] / cnn_json["samples_per_second"]
    return [
        ("tiny, concurrency 1: p50 under 0.5 ms", tiny_1["p50_ms"] < 0.5, f"{tiny_1['p50_ms']:.3f} ms"),
        ("tiny, concurrency 32: under 150 µs of server CPU per request",
         tiny_32["server_cpu_us_per_request"] < 150, f"{tiny_32['server_cpu_us_per_request']:.0f} µs"),
        ("MLP, concurrency 32, JSON: batching on serves at least 1.8x batching off", gain >= 1.8, f"{gain:.2f}x"),
        ("MLP, concurrency 32, JSON: more than 4,000 req/s", mlp_on["requests_per_second"] > 4000,
         f"{mlp_on['requests_per_second']:,.0f} req/s"),
        ("CNN, concurrency 32, binary: at least 40% of in-process ORT's best samples/s", share >= 0.4,
         f"{share:.0%} ({cnn_bin['samples_per_second']:,.0f} of {best:,.0f})"),
        ("CNN, concurrency 32: binary at least 5x JSON", binary_gain >= 5, f"{binary_gain:.1f}x"),
    ]  # fmt: skip


def write_readme(text: str) -> None:
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    readme = README.read_text()
    if begin not in readme or end not in readme:
        raise SystemExit(f"README.md has no {begin} ... {end} section")
    head, rest = readme.split(begin, 1)
    _old, tail = rest.split(end, 1)
    README.write_text(f"{head}{begin}\n{text}\n{end}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per point")
    parser.add_argument("--readme", action="store_true", help="write the tables into README.md")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kubeserve-bench-"))
    models = {name: write_sample(name, work / f"{name}.onnx") for name in ("tiny", "mlp", "cnn")}
    print(f"machine: {machine()}", flush=True)

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
                result = drive(server, payload, concurrency, args.seconds, work / "body")
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

    floors = check_floors(rows, inprocess)
    today = datetime.date.today().isoformat()
    text = f"Measured {today} on {machine()} (`make bench`, {args.seconds:g} s per point).\n\n"
    text += render(rows, inprocess, floors)
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "results.md").write_text(text + "\n")
    (HERE / "out" / "results.json").write_text(json.dumps({"rows": rows, "inprocess": inprocess}, indent=2))
    print("\n" + text)
    if args.readme:
        write_readme(text)
        print("\nwritten to README.md")


if __name__ == "__main__":
    main()
