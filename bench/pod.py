"""The CNN image point as a pod serves it: the runtime pinned to the pod's cores with the pod's default workers,
``perf_analyzer`` (32 connections, one binary image per request) pinned to the machine's other cores, and in-process
ONNX Runtime's ceiling measured on the pod's cores alone.

A pod's clients run elsewhere: on the comparison's shared cores the client's own CPU per request (150 µs or more)
comes out of the server's, which caps the shared point below what the pod serves. The pod has ``POD_CORES`` cores
where the machine leaves as many to the client, else half the machine (one core of two), and the point says which.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import models as comparison_models
import perf_analyzer
from inprocess import Ceilings, best, ceilings, describe
from kubeserve.runtime.cpus import workers_for_cores
from scaling import cpus
from server import RunningServer

POD_CORES = 2
CONCURRENCY = 32
# One binary CNN image per request from perf_analyzer, in-process ORT's best samples/s on the same cores: the share
# that passes, and the one aimed at (this point's, and the comparison's on shared cores).
CNN_SHARE_FLOOR, CNN_SHARE_GOAL = 0.5, 0.7
# A round: perf_analyzer's result, and in-process ORT's ceilings on the pod's cores.
PodRound = tuple[dict, Ceilings]


def pod_cpus(available: list[int]) -> tuple[set[int], set[int]] | None:
    """The pod's CPUs and the client's: ``POD_CORES``, or half the machine where it has fewer than twice that; None
    where there is no core for the client beside one for the pod."""
    size = min(POD_CORES, len(available) // 2)
    if size < 1:
        return None
    return set(available[:size]), set(available[size:])


def measure_pod(path: Path, rounds: int, batch_sizes: tuple[int, ...]) -> list[PodRound]:
    """``rounds`` rounds of the point and its ceiling (none where ``pod_cpus`` has no split, or perf_analyzer is not
    installed)."""
    split = pod_cpus(cpus())
    if split is None or not perf_analyzer.available():
        return []
    pod, client = split
    name, shape = comparison_models.INPUTS["cnn"]
    measured = []
    for round_number in range(1, rounds + 1):
        with RunningServer(path, "cnn", workers=workers_for_cores(len(pod)), cpus=pod) as server:
            result = perf_analyzer.drive(server, name, shape, CONCURRENCY, cpus=client)
        ceiling = ceilings("cnn", path, batch_sizes, inputs=comparison_models.INPUTS, cpus=pod)
        print(
            f"pod {round_number} {placement(pod, client)}: {result['requests_per_second']:9,.0f} req/s "
            f"p50 {result['p50_ms']:7.2f} ms cpu {result['server_cpu_us_per_request']:7,.0f} µs/req client "
            f"{result['client_cpu_us_per_request']:5,.0f} µs/req; in-process on the pod's cores: {describe(ceiling)}",
            flush=True,
        )
        measured.append((result, ceiling))
    return measured


def placement(pod: set[int], client: set[int]) -> str:
    workers = workers_for_cores(len(pod))
    return (
        f"a pod of {len(pod)} core{'s' if len(pod) > 1 else ''} ({workers} worker{'s' if workers > 1 else ''}), "
        f"perf_analyzer on {len(client)} other{'s' if len(client) > 1 else ''}"
    )


def share(round_: PodRound) -> float:
    """The round's requests/s (one image each) over in-process ORT's best samples/s on the same cores."""
    result, ceiling = round_
    return result["requests_per_second"] / best(ceiling)[1]


def median_round(measured: list[PodRound]) -> PodRound:
    """The round whose share is the median."""
    return sorted(measured, key=share)[len(measured) // 2]


def _unmeasured(split: tuple[set[int], set[int]] | None) -> str:
    """Why ``measure_pod`` measured nothing."""
    return perf_analyzer.MISSING if split is not None else "one CPU leaves none for the client"


def render_pod(measured: list[PodRound]) -> str:
    split = pod_cpus(cpus())
    if not measured or split is None:
        return f"The CNN image point as a pod serves it: not measured ({_unmeasured(split)})."
    result, ceiling = median_round(measured)
    batch, rate = best(ceiling)
    return (
        f"The CNN image point as a pod serves it (bench/pod.py): {placement(*split)}, {CONCURRENCY} connections, one "
        f"binary image per request, {len(measured)} rounds, the median shown: {result['requests_per_second']:,.0f} "
        f"req/s, p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, server CPU "
        f"{result['server_cpu_us_per_request']:,.0f} µs/req, perf_analyzer's {result['client_cpu_us_per_request']:,.0f}"
        f" µs/req; in-process ONNX Runtime on the pod's cores {rate:,.0f} samples/s at best (batch {batch}): "
        f"{share((result, ceiling)):.2f}x of it."
    )


def pod_floor(measured: list[PodRound]) -> tuple[str, bool | None, str]:
    split = pod_cpus(cpus())
    cores = len(split[0]) if split is not None else POD_CORES
    name = (
        f"cnn, c={CONCURRENCY}, one binary image per request (perf_analyzer on cores of its own), a pod of {cores} "
        f"core{'s' if cores > 1 else ''}: at least {CNN_SHARE_FLOOR}x in-process ORT's best samples/s on them "
        f"(goal {CNN_SHARE_GOAL}x)"
    )
    if not measured:
        return name, None, _unmeasured(split)
    shares = [share(round_) for round_ in measured]
    value = statistics.median(shares)
    return name, value >= CNN_SHARE_FLOOR, f"{value:.2f}x (rounds: {', '.join(f'{s:.2f}x' for s in shares)})"
