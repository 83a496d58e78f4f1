"""The CNN image point as a pod serves it: the runtime pinned to the pod's cores with the pod's default workers,
``perf_analyzer`` (one binary image per request) pinned to the machine's other cores, and in-process ONNX Runtime's
ceiling measured on the pod's cores alone.

A pod's clients run elsewhere: on the comparison's shared cores the client's own CPU per request comes out of the
server's, which caps the shared point below what the pod serves. The pod has ``POD_CORES`` cores where the machine
leaves as many to the client, else half the machine (one core of two), and the point says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import models as comparison_models
import perf_analyzer
from inprocess import Ceilings, best, ceilings, describe
from kubeserve.runtime.cpus import workers_for_cores
from scaling import cpus
from server import RunningServer

POD_CORES = 2
# One binary CNN image per request from perf_analyzer, in-process ORT's best samples/s on the same cores: the share
# that passes, and the one aimed at (this point's, and the comparison's on shared cores).
CNN_SHARE_FLOOR, CNN_SHARE_GOAL = 0.5, 0.7
# A round: perf_analyzer's result, and in-process ORT's ceilings on the pod's cores.
PodRound = tuple[dict, Ceilings]


@dataclass
class PodPoint:  # its rounds appended as they are measured
    pod: set[int]  # the server's CPUs
    client: set[int]  # perf_analyzer's
    connections: int  # perf_analyzer's, in all
    rounds: list[PodRound]  # none: not measured (``unmeasured`` says why)
    unmeasured: str = ""

    @property
    def placement(self) -> str:
        cores, workers = len(self.pod), workers_for_cores(len(self.pod))
        return (
            f"a pod of {cores} core{'s' if cores > 1 else ''} ({workers} worker{'s' if workers > 1 else ''}), "
            f"perf_analyzer on {len(self.client)} other{'s' if len(self.client) > 1 else ''}"
        )

    def median_round(self) -> PodRound:
        """The round whose share is the median (of an even number, the higher of the middle two)."""
        return sorted(self.rounds, key=share)[len(self.rounds) // 2]


def pod_cpus(available: list[int]) -> tuple[set[int], set[int]]:
    """The pod's CPUs and the client's: ``POD_CORES``, or half the machine where it has fewer than twice that (none
    for either on one CPU)."""
    size = min(POD_CORES, len(available) // 2)
    if not size:
        return set(), set()
    return set(available[:size]), set(available[size:])


def measure_pod(path: Path, rounds: int, batch_sizes: tuple[int, ...], connections: int) -> PodPoint:
    """``rounds`` rounds of the point, ``connections`` in all, and of its ceiling."""
    pod, client = pod_cpus(cpus())
    if not pod:
        return PodPoint(pod, client, connections, [], "one CPU leaves none for the client")
    if not perf_analyzer.available():
        return PodPoint(pod, client, connections, [], perf_analyzer.MISSING)
    point = PodPoint(pod, client, connections, [])
    name, shape = comparison_models.INPUTS["cnn"]
    for round_number in range(1, rounds + 1):
        with RunningServer(path, "cnn", workers=workers_for_cores(len(pod)), cpus=pod) as server:
            result = perf_analyzer.drive(server, name, shape, connections, cpus=client)
        ceiling = ceilings("cnn", path, batch_sizes, inputs=comparison_models.INPUTS, cpus=pod)
        print(
            f"pod {round_number} {point.placement}: {result['requests_per_second']:9,.0f} req/s "
            f"p50 {result['p50_ms']:7.2f} ms cpu {result['server_cpu_us_per_request']:7,.0f} µs/req client "
            f"{result['client_cpu_us_per_request']:5,.0f} µs/req; in-process on the pod's cores: {describe(ceiling)}",
            flush=True,
        )
        point.rounds.append((result, ceiling))
    return point


def share(round_: PodRound) -> float:
    """The round's requests/s (one image each) over in-process ORT's best samples/s on the same cores."""
    result, ceiling = round_
    return result["requests_per_second"] / best(ceiling)[1]


def render_pod(point: PodPoint) -> str:
    if not point.rounds:
        return f"The CNN image point as a pod serves it: not measured ({point.unmeasured})."
    result, ceiling = point.median_round()
    batch, rate = best(ceiling)
    return (
        f"The CNN image point as a pod serves it (bench/pod.py): {point.placement}, {point.connections} connections, "
        f"one binary image per request, {len(point.rounds)} rounds, the median shown: "
        f"{result['requests_per_second']:,.0f} req/s, p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
        f"server CPU {result['server_cpu_us_per_request']:,.0f} µs/req, perf_analyzer's "
        f"{result['client_cpu_us_per_request']:,.0f} µs/req; in-process ONNX Runtime on the pod's cores {rate:,.0f} "
        f"samples/s at best (batch {batch}): {share((result, ceiling)):.2f}x of it."
    )


def pod_floor(point: PodPoint) -> tuple[str, bool | None, str]:
    """The floor, on the median round (the one ``render_pod`` shows), each round's share beside it."""
    cores = len(point.pod) or POD_CORES
    name = (
        f"cnn, c={point.connections}, one binary image per request (perf_analyzer on cores of its own), a pod of "
        f"{cores} core{'s' if cores > 1 else ''}: at least {CNN_SHARE_FLOOR}x in-process ORT's best samples/s on them "
        f"(goal {CNN_SHARE_GOAL}x)"
    )
    if not point.rounds:
        return name, None, point.unmeasured
    value = share(point.median_round())
    each = ", ".join(f"{share(round_):.2f}x" for round_ in point.rounds)
    return name, value >= CNN_SHARE_FLOOR, f"{value:.2f}x (rounds: {each})"
