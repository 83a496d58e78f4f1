"""Triton's ``perf_analyzer`` (C++) as a second load generator, so that a Python client's own CPU does not set the
result: same closed loop (``--concurrency-range N``), binary tensors over HTTP or raw contents over gRPC, against a
kubeserve server.

``make perf-analyzer`` puts it in .tools/perf_analyzer (from the tritonclient 2.45.0 wheel, the last that ships it,
with the libraries it links). Its requests/s and latency percentiles come from its CSV report; CPU per request, the
server's (its process tree, from /proc) and perf_analyzer's own (a child's rusage), over its whole run, divided by
the requests the server counted over that run (``kubeserve_requests_total``).
"""

from __future__ import annotations

import csv
import os
import resource
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from processes import pinned_to, tree_cpu_seconds
from prometheus_client.parser import text_string_to_metric_families
from server import RunningServer

HOME = Path(__file__).resolve().parent.parent / ".tools" / "perf_analyzer"
BINARY = HOME / "perf_analyzer"
# Three windows of this length, each accepted (stability is not asked for: the rounds' median deals with noise).
WINDOW_MS = 2000
MISSING = "perf_analyzer is not installed (make perf-analyzer)"


def available() -> bool:
    return BINARY.is_file()


def requests_served(server: RunningServer) -> float:
    """Requests the server has answered 200, all models and protocols."""
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "kubeserve_requests"
        for sample in family.samples
        if sample.name == "kubeserve_requests_total" and sample.labels.get("code") == "200"
    )


def drive(
    server: RunningServer,
    input_name: str,
    shape: tuple[int, ...],
    concurrency: int,
    protocol: str = "http",
    cpus: set[int] | None = None,
) -> dict:
    """One closed-loop run of ``concurrency`` requests of one sample each (``protocol`` http: binary tensors; grpc:
    raw contents), perf_analyzer pinned to ``cpus`` if given: loadgen.py's keys, with ``client_cpu_us_per_request``
    added."""
    address = server.grpc_address if protocol == "grpc" else server.url.removeprefix("http://")
    with tempfile.TemporaryDirectory(prefix="kubeserve-perf-analyzer-") as folder:
        report = Path(folder) / "report.csv"
        command = [
            str(BINARY), "-m", server.model_name, "-u", address, "-i", protocol,
            "--concurrency-range", str(concurrency), "--shape", f"{input_name}:{','.join(map(str, shape))}",
            "--measurement-interval", str(WINDOW_MS), "--stability-percentage", "999", "-f", str(report),
        ]  # fmt: skip
        environment = {**os.environ, "LD_LIBRARY_PATH": str(HOME / "lib")}
        served, cpu = requests_served(server), tree_cpu_seconds(server.pid)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(
            command, capture_output=True, text=True, env=environment, timeout=300, preexec_fn=pinned_to(cpus)
        )
        if done.returncode != 0:
            raise RuntimeError(f"perf_analyzer failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        requests = requests_served(server) - served
        server_cpu = tree_cpu_seconds(server.pid) - cpu
        with report.open() as file:
            row = next(csv.DictReader(file))
    client_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    return {
        "requests_per_second": float(row["Inferences/Second"]),
        "p50_ms": float(row["p50 latency"]) / 1e3,
        "p99_ms": float(row["p99 latency"]) / 1e3,
        "server_cpu_us_per_request": 1e6 * server_cpu / requests,
        "client_cpu_us_per_request": 1e6 * client_cpu / requests,
    }
