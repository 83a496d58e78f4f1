"""The autoscaling loop, closed on this machine: real runtime processes, a client-side balancer (``balancer.py``),
an open-loop load profile, a Prometheus-style scrape, the adapter rule's per-pod value, the HPA's algorithm
(``hpa_model.py``), and a "kubelet" that starts replicas and drains them with SIGTERM. Used by
``tests/autoscaling/test_closed_loop.py`` and ``demo_autoscale.py``; traffic goes to 127.0.0.1 only.

Every ``period`` (the HPA's sync period and the scrape interval, shortened from 15 s) the loop:

1. scrapes each replica's ``/metrics`` for ``kubeserve_queue_delay_seconds_sum`` and ``_count``;
2. computes each pod's value as the chart's prometheus-adapter rule does,
   ``1000000 * rate(_sum[window]) / clamp_min(rate(_count[window]), 1e-9)``, with Prometheus' ``rate``
   (extrapolated, as ``extrapolatedRate`` does): microseconds, 0 when the pod served nothing in the window (an idle
   pod pulls the average down), absent when the window holds fewer than two scrapes (a new pod); the HPA's target
   is in microseconds too, and reads both as milli-units rounded up;
3. lists the pods as the HPA's selector would: a process that is not listening yet is ``Pending``, one that is
   listening but not ready is ``Running`` and unready, a draining one carries a deletion timestamp (ignored);
4. calls ``HorizontalController.reconcile`` with ``spec.replicas`` and writes its answer back;
5. starts processes or drains the newest (unready first) to match, through SIGTERM; the balancer drops a draining
   replica at once, as an endpoints update does.

The replicas serve the sample ``tiny`` model through ``fixed_latency_runtime.py``: each batch takes a set wall time
spent off the CPU (fixed, plus optionally a fixed time per row, as an accelerator's batch time grows with the batch),
so one replica's capacity is known (:attr:`ReplicaConfig.capacity`) and more replicas add capacity even on a 2-core
machine.

A request counts as failed unless a replica answered it 200 (the balancer's retries of refused connections aside).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from balancer import Balancer, Delivery
from hpa_model import HorizontalController, HPABehavior, HPAScalingRules, HPASpec, PodSample, ReconcileResult
from kubeserve.operator.canary_metrics import QUEUE_DELAY
from kubeserve.operator.canary_metrics import parse as parse_metrics

LAUNCHER = Path(__file__).resolve().with_name("fixed_latency_runtime.py")
INFER_PATH = "/v2/models/tiny/infer"
REQUEST = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})


# --- The adapter rule, on Prometheus' rate() ------------------------------------------------------------------------


def prometheus_rate(samples: Sequence[tuple[float, float]], now: float, window: float) -> float | None:
    """``rate(counter[window])`` evaluated at ``now`` over ``(time, value)`` scrapes: Prometheus' ``extrapolatedRate``
    (counter resets, extrapolation to the window's edges by at most half a scrape interval, never below zero).
    ``None`` where Prometheus returns no sample (fewer than two scrapes in the window)."""
    start = now - window
    points = [(t, v) for t, v in samples if start < t <= now]
    if len(points) < 2:
        return None
    result = points[-1][1] - points[0][1]
    previous = points[0][1]
    for _, value in points[1:]:
        if value < previous:  # a counter reset
            result += previous
        previous = value
    first_t, first_v = points[0]
    last_t = points[-1][0]
    sampled = last_t - first_t
    to_start, to_end = first_t - start, now - last_t
    average_gap = sampled / (len(points) - 1)
    if result > 0 and first_v >= 0:
        to_zero = sampled * (first_v / result)
        to_start = min(to_start, to_zero)
    threshold = average_gap * 1.1
    interval = sampled
    interval += to_start if to_start < threshold else average_gap / 2
    interval += to_end if to_end < threshold else average_gap / 2
    return result * (interval / sampled) / window


def per_pod_queue_delay(
    sums: Sequence[tuple[float, float]], counts: Sequence[tuple[float, float]], now: float, window: float
) -> float | None:
    """The adapter rule's per-pod value, in seconds: ``rate(_sum) / rate(_count)``, 0 when idle, ``None`` when
    Prometheus has no rate yet."""
    total, count = prometheus_rate(sums, now, window), prometheus_rate(counts, now, window)
    if total is None or count is None:
        return None
    return total / count if count > 0 else 0.0


def parse_queue_delay(text: str) -> tuple[float, float]:
    """``kubeserve_queue_delay_seconds_sum`` and ``_count`` from a ``/metrics`` page (summed over label sets), read
    as the canary analysis reads them."""
    counters = parse_metrics(text)
    return counters.queue_delay_sum, counters.queue_delay_count


# --- Replicas -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaConfig:
    model_path: Path
    batch_seconds: float = 0.04  # the fixed compute time of one batch
    row_seconds: float = 0.0  # plus this per row in it
    max_batch_size: int = 4
    max_queue_size: int = 100_000  # overload shows as queue delay, not as 503s

    @property
    def capacity(self) -> float:
        """Requests per second one replica serves at most (full batches back to back, one instance)."""
        return self.max_batch_size / (self.batch_seconds + self.row_seconds * self.max_batch_size)

    def command(self) -> list[str]:
        return [
            sys.executable, str(LAUNCHER), "--fixed-latency-seconds", str(self.batch_seconds),
            "--per-row-seconds", str(self.row_seconds),
            "serve", "--host", "127.0.0.1", "--port", "0", "--grpc-port", "0", "--model-path", str(self.model_path),
            "--model-name", "tiny", "--max-batch-size", str(self.max_batch_size), "--instance-count", "1",
            "--max-queue-delay-microseconds", "0", "--max-queue-size", str(self.max_queue_size),
            "--intra-op-num-threads", "1", "--inter-op-num-threads", "1",
        ]  # fmt: skip


@dataclass(eq=False)
class Replica:
    """One runtime process: a pod. Its life is read from its JSON log."""

    name: str
    process: asyncio.subprocess.Process
    created: float
    port: int | None = None
    ready: bool = False
    draining: bool = False
    exit_code: int | None = None
    outstanding: int = 0
    stopped_event: dict = field(default_factory=dict)
    sums: list[tuple[float, float]] = field(default_factory=list)
    counts: list[tuple[float, float]] = field(default_factory=list)
    watcher: asyncio.Task | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # ready, or exited

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def in_rotation(self) -> bool:
        """In the Service's endpoints: ready and not terminating."""
        return self.ready and not self.draining and self.exit_code is None

    async def watch(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == "listening":
                    self.port = int(event["port"])
                elif event.get("event") == "model_ready":
                    self.ready = True
                    self.settled.set()
                elif event.get("event") == "stopped":
                    self.stopped_event = event
        self.exit_code = await self.process.wait()
        self.settled.set()

    def sample(self, now: float, window: float, unit: float) -> PodSample:
        """The pod as the HPA lists it, with its metric in ``unit`` seconds (``None``: missing)."""
        if self.port is None:
            return PodSample(self.name, None, ready=False, phase="Pending", deleting=self.draining)
        value = per_pod_queue_delay(self.sums, self.counts, now, window)
        quantity = None if value is None else f"{value / unit:.3f}"
        return PodSample(self.name, quantity, ready=self.ready, deleting=self.draining)


# --- Load -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    seconds: float
    rate: float  # requests per second, open loop


def offered_rate(profile: Sequence[Phase], t: float) -> float:
    for phase in profile:
        if t < phase.seconds:
            return phase.rate
        t -= phase.seconds
    return 0.0


@dataclass
class Outcome:
    sent: float
    latency: float
    ok: bool
    retries: int
    error: str = ""

    @classmethod
    def of(cls, delivery: Delivery[Replica], t0: float) -> Outcome:
        """The request as the loop counts it, from ``t0`` on: failed unless answered 200."""
        ok = delivery.status == 200
        error = "" if ok else delivery.error or f"HTTP {delivery.status}"
        return cls(delivery.sent - t0, delivery.latency, ok, delivery.retries, error)


# --- The loop -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoopConfig:
    replica: ReplicaConfig
    profile: tuple[Phase, ...]
    target_seconds: float = 0.1  # the HPA's target per-pod mean queue delay
    min_replicas: int = 1
    max_replicas: int = 4
    period: float = 1.0  # HPA sync period = scrape interval (15 s on a real controller)
    window: float = 4.0  # the adapter rule's rate() window
    scale_down_stabilization: int = 5  # seconds (300 by default)
    settle_seconds: float = 0.0  # after the profile, keep reconciling (no load) this long
    unit: float = 1e-6  # the adapter rule serves the metric in microseconds

    def hpa_spec(self) -> HPASpec:
        return HPASpec(
            min_replicas=self.min_replicas,
            max_replicas=self.max_replicas,
            target_average_value=f"{self.target_seconds / self.unit:g}",
            metric_name=QUEUE_DELAY,
            behavior=HPABehavior(
                scale_down=HPAScalingRules(stabilization_window_seconds=self.scale_down_stabilization)
            ),
        )

    @property
    def duration(self) -> float:
        return sum(phase.seconds for phase in self.profile) + self.settle_seconds


@dataclass
class PeriodRow:
    """One sync period, as the CSV and the plot show it."""

    t: float
    offered_rps: float
    spec_replicas: int  # after this period's reconcile
    ready_replicas: int
    draining_replicas: int
    mean_queue_delay_ms: float | None  # the HPA's view: mean of the pods' values (None: no metric)
    max_queue_delay_ms: float | None
    target_ms: float
    completed: int
    failed: int
    retried: int
    p99_latency_ms: float | None
    reason: str

    CSV_FIELDS = (
        "t", "offered_rps", "spec_replicas", "ready_replicas", "draining_replicas", "mean_queue_delay_ms",
        "max_queue_delay_ms", "target_ms", "completed", "failed", "retried", "p99_latency_ms", "reason",
    )  # fmt: skip


@dataclass
class LoopResult:
    config: LoopConfig
    rows: list[PeriodRow]
    outcomes: list[Outcome]
    replicas: list[Replica]
    decisions: list[ReconcileResult]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def peak_replicas(self) -> int:
        return max(row.spec_replicas for row in self.rows)

    def step_bounds(self) -> tuple[float, float]:
        """When the highest-rate phase starts and ends."""
        start, peak = 0.0, max(self.config.profile, key=lambda p: p.rate)
        for phase in self.config.profile:
            if phase is peak:
                return start, start + phase.seconds
            start += phase.seconds
        raise AssertionError("unreachable")

    def periods_to_recover(self) -> int | None:
        """Periods from the step's start to the first period whose mean queue delay is back under the target after
        having been above it (``None``: it never went above, or never came back)."""
        start, end = self.step_bounds()
        during = [row for row in self.rows if start <= row.t < end]
        above = False
        for index, row in enumerate(during):
            value = row.mean_queue_delay_ms
            if value is not None and value > row.target_ms:
                above = True
            elif above and value is not None and value <= row.target_ms:
                return index + 1
        return None

    def summary(self) -> dict:
        start, end = self.step_bounds()
        return {
            "capacity_per_replica_rps": self.config.replica.capacity,
            "peak_offered_rps": max(p.rate for p in self.config.profile),
            "peak_replicas": self.peak_replicas,
            "periods_to_recover": self.periods_to_recover(),
            "final_replicas": self.rows[-1].spec_replicas,
            "requests": len(self.outcomes),
            "failed": len(self.failed),
            "retried_connects": sum(o.retries for o in self.outcomes),
            "drained_exit_codes": [r.exit_code for r in self.replicas if r.draining],
            "p99_latency_ms_step": _percentile([o.latency for o in self.outcomes if start <= o.sent < end], 99),
        }

    def write_csv(self, path: Path) -> None:
        with path.open("w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(PeriodRow.CSV_FIELDS)
            for row in self.rows:
                writer.writerow(
                    [_csv(getattr(row, name)) for name in PeriodRow.CSV_FIELDS]
                )  # fmt: skip


def _csv(value: object) -> object:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else value


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)] * 1000


class ClosedLoop:
    def __init__(self, config: LoopConfig, log: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.controller = HorizontalController(config.hpa_spec())
        self.replicas: list[Replica] = []
        self.spec_replicas = config.min_replicas
        self.rows: list[PeriodRow] = []
        self.decisions: list[ReconcileResult] = []
        self.outcomes: list[Outcome] = []
        self.log = log or (lambda _: None)
        self._serial = 0
        self._tasks: set[asyncio.Task] = set()

    # -- the kubelet -------------------------------------------------------------------------------------------------

    async def start_replica(self, now: float) -> Replica:
        self._serial += 1
        process = await asyncio.create_subprocess_exec(
            *self.config.replica.command(), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        replica = Replica(f"replica-{self._serial}", process, now)
        replica.watcher = asyncio.create_task(replica.watch())
        self.replicas.append(replica)
        return replica

    def drain(self, replica: Replica) -> None:
        """The pod is deleted: it leaves the endpoints and gets SIGTERM (at once, as the kubelet does)."""
        replica.draining = True
        if replica.exit_code is None:
            replica.process.send_signal(signal.SIGTERM)

    async def match(self, now: float) -> None:
        live = [r for r in self.replicas if not r.draining]
        for _ in range(self.spec_replicas - len(live)):
            await self.start_replica(now)
        surplus = len(live) - self.spec_replicas
        if surplus > 0:
            # A ReplicaSet deletes unready pods first, then the newest.
            for replica in sorted(live, key=lambda r: (r.ready, -r.created))[:surplus]:
                self.drain(replica)

    # -- Prometheus and the HPA --------------------------------------------------------------------------------------

    async def scrape(self, session: aiohttp.ClientSession, replica: Replica, now: float) -> None:
        if replica.port is None or replica.exit_code is not None:
            return
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(replica.url + "/metrics", timeout=aiohttp.ClientTimeout(total=2)) as response:
                total, count = parse_queue_delay(await response.text())
            replica.sums.append((now, total))
            replica.counts.append((now, count))

    async def sync(self, session: aiohttp.ClientSession, t0: float, now: float) -> None:
        config = self.config
        await asyncio.gather(*(self.scrape(session, r, now) for r in self.replicas))
        pods = [r.sample(now, config.window, config.unit) for r in self.replicas if r.exit_code is None]
        result = self.controller.reconcile(now - t0, self.spec_replicas, pods)
        self.decisions.append(result)
        self.spec_replicas = result.desired_replicas
        await self.match(now)
        values = [  # in ms, for people
            float(p.value) * config.unit * 1000
            for p in pods
            if p.value is not None and not p.deleting and p.phase == "Running"
        ]
        since = now - t0 - config.period
        recent = [o for o in self.outcomes if since <= o.sent + o.latency < now - t0]
        row = PeriodRow(
            t=round(now - t0, 3),
            offered_rps=offered_rate(config.profile, now - t0),
            spec_replicas=self.spec_replicas,
            ready_replicas=sum(r.in_rotation for r in self.replicas),
            draining_replicas=sum(r.draining and r.exit_code is None for r in self.replicas),
            mean_queue_delay_ms=sum(values) / len(values) if values else None,
            max_queue_delay_ms=max(values) if values else None,
            target_ms=config.target_seconds * 1000,
            completed=len(recent),
            failed=sum(not o.ok for o in recent),
            retried=sum(o.retries for o in recent),
            p99_latency_ms=_percentile([o.latency for o in recent], 99),
            reason=result.reason or "",
        )
        self.rows.append(row)
        self.log(
            f"t={row.t:6.1f}s offered={row.offered_rps:6.0f}/s replicas={row.spec_replicas} "
            f"(ready {row.ready_replicas}, draining {row.draining_replicas}) "
            f"queue delay={_fmt(row.mean_queue_delay_ms)} ms (target {row.target_ms:g}) "
            f"p99={_fmt(row.p99_latency_ms)} ms done={row.completed} failed={row.failed}"
        )

    # -- the whole run -----------------------------------------------------------------------------------------------

    async def run(self) -> LoopResult:
        config = self.config
        loop = asyncio.get_running_loop()
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            balancer = Balancer(self.replicas, session, INFER_PATH, REQUEST)
            try:
                first = await self.start_replica(loop.time())
                for _ in range(self.spec_replicas - 1):
                    await self.start_replica(loop.time())
                await asyncio.gather(*(r.settled.wait() for r in self.replicas))
                if first.exit_code is not None:
                    raise RuntimeError(f"the first replica exited with {first.exit_code}")
                t0 = loop.time()
                generator = asyncio.create_task(self._generate(balancer, loop, t0))
                next_sync = t0 + config.period
                while next_sync <= t0 + config.duration + 1e-9:
                    await asyncio.sleep(max(0.0, next_sync - loop.time()))
                    await self.sync(session, t0, loop.time())
                    next_sync = max(next_sync + config.period, loop.time() + config.period / 2)  # never bunch up
                await generator
                await asyncio.gather(*self._tasks)
            finally:
                for replica in self.replicas:
                    self.drain(replica)
                await asyncio.gather(*(r.watcher for r in self.replicas if r.watcher is not None))
        return LoopResult(config, self.rows, self.outcomes, self.replicas, self.decisions)

    async def _generate(self, balancer: Balancer[Replica], loop: asyncio.AbstractEventLoop, t0: float) -> None:
        """Open loop: arrivals at a fixed interval for each phase's rate, sent whatever the answers do."""
        start = t0
        for phase in self.config.profile:
            for index in range(round(phase.seconds * phase.rate)):
                delay = start + index / phase.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(self._request(balancer, loop, t0))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            start += phase.seconds

    async def _request(self, balancer: Balancer[Replica], loop: asyncio.AbstractEventLoop, t0: float) -> None:
        self.outcomes.append(Outcome.of(await balancer.send(loop), t0))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:7.1f}"


def run_loop(config: LoopConfig, log: Callable[[str], None] | None = None) -> LoopResult:
    started = time.perf_counter()
    result = asyncio.run(ClosedLoop(config, log).run())
    if log:
        log(f"ran {time.perf_counter() - started:.1f}s")
    return result
