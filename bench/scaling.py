"""The scaling floor: a pod with more cores serves proportionally more (``workers``).

The runtime runs with 1, 2, 4, ... workers, pinned to as many CPUs, while the load generator runs pinned to CPUs
of its own (in as many processes as there are workers, up to its CPUs), so that the server's share is what grows.
Each worker gets the load one worker gets alone: 32 connections per worker, so that N workers' batchers fill as one
worker's does. That needs at least twice the CPUs of the largest point:
on a 2-core machine only the one-worker point fits, and the floor is reported as not measured. (The comparison
with the plain server shows the runtime with one worker per core and with one, on cores shared with the load
generator.)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from payloads import Payload
from server import RunningServer

CONCURRENCY = 32
# Each worker's requests per second within this share of perfect scaling (N workers: N times one's) passes.
SCALING_FLOOR = 0.8


def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def pinned_points(available: int) -> list[int]:
    """Worker counts whose server and load generator each get cores of their own: 1, 2, 4, ... up to half."""
    points, workers = [], 1
    while 2 * workers <= available:
        points.append(workers)
        workers *= 2
    return points


def measure_scaling(
    model: str,
    path: Path,
    payload: Payload,
    seconds: float,
    work: Path,
    drive: Callable[..., dict],
) -> list[dict]:
    """Rows of workers, placement (CPUs pinned, connections), req/s, p50, server CPU per request."""
    rows = []
    available = cpus()
    for workers in pinned_points(len(available)):
        server_cpus, loadgen_cpus = set(available[:workers]), set(available[workers:])
        # The same load per worker as one worker gets: more cores serve more clients, each batcher as full.
        concurrency, processes = CONCURRENCY * workers, min(workers, len(loadgen_cpus))
        with RunningServer(path, model, workers=workers, cpus=server_cpus) as server:
            result = drive(server, payload, concurrency, seconds, work / "body", loadgen_cpus, processes)
        placement = f"{workers} server, {len(loadgen_cpus)} client, c={concurrency}"
        rows.append({"workers": workers, "placement": placement, **result})
        _print(model, rows[-1])
    return rows


def _print(model: str, row: dict) -> None:
    print(
        f"scaling {model:4} workers {row['workers']:2} {row['placement']:36} {row['requests_per_second']:9,.0f} req/s "
        f"p50 {row['p50_ms']:7.2f} ms cpu {row['server_cpu_us_per_request']:7,.0f} µs/req",
        flush=True,
    )


def scaling_floor(model: str, rows: list[dict]) -> tuple[str, bool | None, str]:
    name = (
        f"{model}: a pod with more cores serves proportionally more "
        f"(N workers on N cores, {CONCURRENCY} connections each: at least {SCALING_FLOOR:.0%} of N x one's req/s)"
    )
    if len(rows) < 2:
        return (
            name,
            None,
            f"not measurable here: {len(cpus())} CPUs leave no second core for a second worker beside the client",
        )
    one = rows[0]["requests_per_second"]
    last = rows[-1]
    scaling = last["requests_per_second"] / (one * last["workers"])
    return (
        name,
        scaling >= SCALING_FLOOR,
        (
            f"{last['workers']} workers: {last['requests_per_second']:,.0f} req/s = {scaling:.0%} of "
            f"{last['workers']} x {one:,.0f}"
        ),
    )


def render_scaling(model: str, rows: list[dict]) -> str:
    lines = [
        f"| {model} | CPUs pinned, connections | req/s | p50 ms | server CPU µs/req |",
        "|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['workers']} worker{'s' if row['workers'] > 1 else ''} | {row['placement']} "
            f"| {row['requests_per_second']:,.0f} | {row['p50_ms']:.2f} | {row['server_cpu_us_per_request']:,.0f} |"
        )
    return "\n".join(lines)
