"""A versioned rollout closed on this machine: real runtime processes for two revisions, the rollout state machine
(``kubeserve.operator.rollout.decide``) choosing their replicas, the canary analysis scraping the processes'
``/metrics`` (``kubeserve.operator.canary_metrics``), and open-loop load through a client-side balancer the whole
time. Used by ``tests/rollout/test_canary_rollout.py``; traffic goes to 127.0.0.1 only.

It plays the operator, the Deployment controller, the kubelet and the main Service:

- every ``period`` the loop calls ``decide`` with the revisions as a cluster would show them (``replicas`` as last
  set, ``ready`` the processes ready and not terminating), the replica total, the analysis finished since the last
  call, and ``status.rollout`` read back through JSON as the API server holds it;
- it applies the decision's replicas per revision: starts processes, or sends SIGTERM to the surplus (unready first,
  then the newest, as a ReplicaSet picks); a process joins the balancer once its model is ready and leaves it at
  once when it gets SIGTERM (an endpoints update), then drains;
- while the decision names a revision to ``analyze``, it scrapes that revision's processes (and the stable
  revision's) at the start and the end of each ``interval_seconds``, and ``measure``s and ``judge``s the interval.

The processes run ``faulty_runtime.py``: the sample ``tiny`` model with a fixed per-batch latency spent off the CPU
(``fixed_latency_runtime.py``), and for a bad revision a failure in one batch in N (answered 500).

The balancer (``balancer.py``) picks among every process in rotation, whatever its revision (the InferenceService's
Service spans every ready revision); each answer is recorded with the process and the model version that gave it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from autoscaling_loop import INFER_PATH, REQUEST, Replica
from balancer import Balancer, Delivery
from kubeserve.operator.analysis import AnalysisResult, judge
from kubeserve.operator.canary_metrics import Scrape, measure, metrics_url, scrape
from kubeserve.operator.rollout import Decision, Event, Revision, Wanted, decide
from kubeserve.operator.spec import Rollout

LAUNCHER = Path(__file__).resolve().with_name("faulty_runtime.py")
FINAL_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class RevisionSpec:
    """What a revision's pods run: its name (``naming.revision_name``'s form), model version, and a fault."""

    name: str
    version: str
    fail_every: int = 0  # one batch in this many answers 500 (0: none)


@dataclass(frozen=True)
class RolloutConfig:
    model_path: Path
    policy: Rollout
    stable: RevisionSpec
    canary: RevisionSpec
    total: int = 3  # the replica total (spec.replicas)
    rate: float = 60.0  # requests per second, open loop
    period: float = 0.5  # the operator's look at the InferenceService (its requeue, shortened)
    batch_seconds: float = 0.02  # each batch's fixed compute time
    max_batch_size: int = 4
    warm_seconds: float = 1.0  # load on the stable revision alone, before the new version is asked for
    after_seconds: float = 1.0  # load once the rollout has settled
    deadline_seconds: float = 60.0  # the rollout gives up settling after this (the test then fails)
    drain_timeout_seconds: float = 30.0  # a process still alive this long after SIGTERM is killed

    def command(self, revision: RevisionSpec) -> list[str]:
        return [
            sys.executable, str(LAUNCHER), "--fail-every", str(revision.fail_every),
            "--fixed-latency-seconds", str(self.batch_seconds),
            "serve", "--host", "127.0.0.1", "--port", "0", "--grpc-port", "0", "--model-path", str(self.model_path),
            "--model-name", "tiny", "--model-version", revision.version,
            "--max-batch-size", str(self.max_batch_size), "--instance-count", "1",
            "--max-queue-delay-microseconds", "0", "--max-queue-size", "100000",
            "--intra-op-num-threads", "1", "--inter-op-num-threads", "1",
        ]  # fmt: skip


@dataclass(eq=False)
class Pod(Replica):
    """One runtime process of one revision."""

    revision: str = ""
    by_rollout: bool = False  # SIGTERMed because a decision scaled its revision down (not at the harness's end)


@dataclass(frozen=True)
class Answer:
    """One request the client sent: when (seconds from the start of the load), who answered, with what."""

    sent: float
    latency: float
    status: int | None  # None: no HTTP answer (a connection error)
    pod: str  # the process that answered ("" when none did)
    revision: str
    version: str  # the model version in the answer's body
    retries: int  # connections refused before anything was sent, sent again elsewhere
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200

    @classmethod
    def of(cls, delivery: Delivery[Pod], t0: float) -> Answer:
        """The request as the rollout records it, from ``t0`` on: a failed answer keeps the start of its body."""
        pod, status, error = delivery.replica, delivery.status, delivery.error
        version = json.loads(delivery.body).get("model_version", "") if status == 200 else ""
        if status is not None and status != 200:
            error = delivery.body.decode(errors="replace")[:200]
        return cls(
            delivery.sent - t0,
            delivery.latency,
            status,
            pod.name if pod else "",
            pod.revision if pod else "",
            version,
            delivery.retries,
            error,
        )


@dataclass(frozen=True)
class Period:
    """One look of the operator: what it saw, what it decided."""

    t: float  # seconds from the start of the load, at the look's start
    applied: float  # and once its replicas were applied (pods out of rotation, new ones starting)
    phase: str
    weight: int
    wanted: dict[str, int]  # replicas per revision, as decided
    ready: dict[str, int]  # per revision, as seen before deciding
    draining: int  # processes terminating (SIGTERMed, not exited yet)
    events: tuple[Event, ...]
    analysis: AnalysisResult | None  # the interval fed to this decision


@dataclass
class RolloutResult:
    config: RolloutConfig
    answers: list[Answer]
    sent: int
    pods: list[Pod]
    first: list[Period]  # the first revision's Immediate rollout, before any load
    periods: list[Period]  # from the look that first saw the new version
    analyses: list[AnalysisResult]
    rollout: dict[str, Any]  # status.rollout at the end
    decision: Decision  # the last one
    rollout_started: float  # seconds from the start of the load: the new version asked for
    settled_at: float | None  # the rollout in a final phase and the processes matching it; None: never
    seconds: float = 0.0

    @property
    def events(self) -> list[Event]:
        return [event for period in self.periods for event in period.events]

    @property
    def failed(self) -> list[Answer]:
        return [answer for answer in self.answers if not answer.ok]

    def of(self, revision: str) -> list[Pod]:
        return [pod for pod in self.pods if pod.revision == revision]

    def summary(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 1),
            "phase": self.rollout.get("phase"),
            "reason": self.rollout.get("reason"),
            "requests": len(self.answers),
            "failed": len(self.failed),
            "by_version": dict(Counter(a.version or "-" for a in self.answers)),
            "retried_connects": sum(a.retries for a in self.answers),
            "pods": {pod.name: (pod.exit_code, pod.by_rollout) for pod in self.pods},
            "analyses": [(str(a.verdict), a.message) for a in self.analyses],
        }


@dataclass
class _Interval:
    """An analysis interval under way: the scrapes at its start."""

    revision: str
    stable: str | None
    started: datetime
    started_on_loop: float
    canary: dict[str, Scrape] = field(default_factory=dict)
    baseline: dict[str, Scrape] = field(default_factory=dict)


class CanaryLoop:
    def __init__(self, config: RolloutConfig, log: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.log = log or (lambda _: None)
        self.pods: list[Pod] = []
        self.specs = {spec.name: spec for spec in (config.stable, config.canary)}
        self.replicas: dict[str, int] = {}  # each revision Deployment's spec.replicas
        self.created: dict[str, datetime] = {}  # and its creationTimestamp
        self.status_json = "null"  # status.rollout as the API server holds it
        self.periods: list[Period] = []
        self.analyses: list[AnalysisResult] = []
        self.interval: _Interval | None = None
        self.finished: AnalysisResult | None = None  # judged, not yet fed to decide
        self.last_decision: Decision | None = None
        self.wanted = Wanted(config.stable.name, config.stable.version)
        self.answers: list[Answer] = []
        self.t0 = 0.0
        self._serial = 0

    # -- the kubelet and the Deployment controller --------------------------------------------------------------

    async def start_pod(self, revision: RevisionSpec) -> Pod:
        self._serial += 1
        process = await asyncio.create_subprocess_exec(
            *self.config.command(revision), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        pod = Pod(f"{revision.name}-{self._serial}", process, time.monotonic(), revision=revision.name)
        pod.watcher = asyncio.create_task(pod.watch())
        self.pods.append(pod)
        return pod

    def terminate(self, pod: Pod, *, by_rollout: bool) -> None:
        """The pod is deleted: out of the endpoints and SIGTERMed at once, as the kubelet does."""
        if pod.draining:
            return
        pod.draining = True
        pod.by_rollout = by_rollout
        if pod.exit_code is None:
            pod.process.send_signal(signal.SIGTERM)

    def live(self, revision: str) -> list[Pod]:
        """The revision's pods not being deleted (a ReplicaSet's active pods)."""
        return [p for p in self.pods if p.revision == revision and not p.draining and p.exit_code is None]

    def ready(self, revision: str) -> int:
        return sum(pod.in_rotation for pod in self.pods if pod.revision == revision)

    async def apply(self, decision: Decision, now: datetime) -> None:
        for name in decision.delete:
            self.replicas.pop(name, None)
        for name, count in decision.replicas.items():
            self.created.setdefault(name, now)
            self.replicas[name] = count
        for name in list(self.created):
            count = self.replicas.get(name, 0)
            live = self.live(name)
            for _ in range(count - len(live)):
                await self.start_pod(self.specs[name])
            for pod in sorted(live, key=lambda p: (p.ready, -p.created))[: max(len(live) - count, 0)]:
                self.terminate(pod, by_rollout=True)

    def revisions(self) -> list[Revision]:
        return [
            Revision(name, self.specs[name].version, self.replicas[name], self.ready(name), self.created[name])
            for name in self.replicas
        ]

    def settled(self, decision: Decision) -> bool:
        """A final phase, each revision's pods as decided and ready, no pod still draining."""
        if decision.rollout.get("phase") not in FINAL_PHASES:
            return False
        if any(pod.draining and pod.exit_code is None for pod in self.pods):
            return False
        return all(
            len(self.live(name)) == count and self.ready(name) == count for name, count in decision.replicas.items()
        )

    # -- the analysis ---------------------------------------------------------------------------------------------

    def metrics_urls(self, revision: str | None) -> list[str]:
        return [
            metrics_url("127.0.0.1", pod.port)
            for pod in self.pods
            if pod.revision == revision and pod.port is not None and not pod.draining and pod.exit_code is None
        ]

    async def analyse(self, session: aiohttp.ClientSession, decision: Decision | None, loop_now: float) -> None:
        """Finish an interval that is due (its result waits for the next ``decide``); start one when the last
        decision wants the canary analysed and none runs."""
        analysis = self.config.policy.analysis
        assert analysis is not None
        interval = self.interval
        if interval is not None and (decision is None or decision.analyze != interval.revision):
            self.interval = interval = None  # nothing to analyse any more (done, failed, superseded)
        if interval is not None and loop_now - interval.started_on_loop >= analysis.interval_seconds:
            canary, baseline = await asyncio.gather(
                scrape(self.metrics_urls(interval.revision), session=session),
                scrape(self.metrics_urls(interval.stable), session=session),
            )
            ended = datetime.now(UTC)
            result = judge(
                analysis,
                measure(interval.canary, canary),
                measure(interval.baseline, baseline) if interval.stable else None,
                revision=interval.revision,
                started=interval.started,
                ended=ended,
            )
            self.analyses.append(result)
            self.finished = result
            self.interval = interval = None
            self.log(f"  analysis of {result.revision}: {result.verdict} {result.measured} {result.message}")
        if interval is None and decision is not None and decision.analyze is not None:
            revision, stable = decision.analyze, decision.stable
            started = datetime.now(UTC)
            canary, baseline = await asyncio.gather(
                scrape(self.metrics_urls(revision), session=session), scrape(self.metrics_urls(stable), session=session)
            )
            self.interval = _Interval(revision, stable, started, loop_now, canary, baseline)

    # -- the operator -----------------------------------------------------------------------------------------------

    async def look(self, session: aiohttp.ClientSession, loop_now: float) -> Decision:
        """One reconcile: the analysis due, ``decide`` on what the cluster shows, the replicas applied."""
        if self.config.policy.analysis is not None:
            await self.analyse(session, self.last_decision, loop_now)
        now = datetime.now(UTC)
        ready = {name: self.ready(name) for name in self.replicas}
        analysis, self.finished = self.finished, None
        decision = decide(
            self.config.policy,
            self.wanted,
            self.revisions(),
            total=self.config.total,
            previous=json.loads(self.status_json),
            analysis=analysis,
            now=now,
        )
        self.status_json = json.dumps(decision.rollout)  # what the next look reads back, as from the API server
        await self.apply(decision, now)
        self.last_decision = decision
        period = Period(
            round(loop_now - self.t0, 3),
            round(asyncio.get_running_loop().time() - self.t0, 3),
            decision.rollout["phase"],
            decision.rollout["weight"],
            dict(decision.replicas),
            ready,
            sum(pod.draining and pod.exit_code is None for pod in self.pods),
            decision.events,
            analysis,
        )
        self.periods.append(period)
        self.log(
            f"t={period.t:5.1f}s {period.phase:<11} weight={period.weight:3d} ready={period.ready} "
            f"wanted={period.wanted} draining={period.draining}"
            + "".join(f"\n  {event.type} {event.reason}: {event.message}" for event in decision.events)
        )
        return decision

    async def reconcile_until(self, session: aiohttp.ClientSession, done: Callable[[Decision], bool]) -> Decision:
        """Look every ``period`` until ``done`` says so, or the deadline passes (then the last decision)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.deadline_seconds
        next_look = loop.time()
        while True:
            await asyncio.sleep(max(0.0, next_look - loop.time()))
            decision = await self.look(session, loop.time())
            if done(decision) or loop.time() >= deadline:
                return decision
            next_look = max(next_look + self.config.period, loop.time() + self.config.period / 2)  # never bunch up

    # -- the whole run ----------------------------------------------------------------------------------------------

    async def run(self) -> RolloutResult:
        config = self.config
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        tasks: set[asyncio.Task[None]] = set()
        stop = asyncio.Event()
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
            balancer = Balancer(self.pods, session, INFER_PATH, REQUEST)
            try:
                # The first revision: an Immediate rollout to the full total, before any load.
                self.t0 = loop.time()
                first = await self.reconcile_until(session, self.settled)
                if not self.settled(first):
                    raise RuntimeError(f"the stable revision never became ready: {first.condition}")
                first_periods, self.periods = self.periods, []
                self.t0 = loop.time()
                generator = asyncio.create_task(self.generate(balancer, stop, tasks))
                await asyncio.sleep(config.warm_seconds)  # the load's schedule, not a synchronisation
                self.wanted = Wanted(config.canary.name, config.canary.version)
                rollout_started = loop.time() - self.t0
                last = await self.reconcile_until(session, self.settled)
                settled_at = loop.time() - self.t0 if self.settled(last) else None
                until = loop.time() + config.after_seconds
                while loop.time() < until:  # the operator keeps looking while the load goes on
                    await asyncio.sleep(config.period)
                    last = await self.look(session, loop.time())
                stop.set()
                sent = await generator
                await asyncio.gather(*tasks)
            finally:
                stop.set()
                await self.shut_down()
        return RolloutResult(
            config,
            self.answers,
            sent,
            self.pods,
            first_periods,
            self.periods,
            self.analyses,
            last.rollout,
            last,
            rollout_started,
            settled_at,
            time.perf_counter() - started,
        )

    async def generate(self, balancer: Balancer[Pod], stop: asyncio.Event, tasks: set[asyncio.Task[None]]) -> int:
        """Open loop: a request every ``1 / rate`` seconds, sent whatever the answers do, until ``stop``; the count
        is bounded by the deadline's worth."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        most = round(self.config.rate * (self.config.deadline_seconds + self.config.warm_seconds + 10))
        sent = 0
        while sent < most and not stop.is_set():
            delay = start + sent / self.config.rate - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    break
            task = asyncio.create_task(self.request(balancer, loop))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        return sent

    async def request(self, balancer: Balancer[Pod], loop: asyncio.AbstractEventLoop) -> None:
        self.answers.append(Answer.of(await balancer.send(loop), self.t0))

    async def shut_down(self) -> None:
        """Every pod left gets SIGTERM (drains, as at the end of a test); one that hangs is killed."""
        for pod in self.pods:
            self.terminate(pod, by_rollout=False)
        watchers = [pod.watcher for pod in self.pods if pod.watcher is not None]
        _, pending = await asyncio.wait(watchers, timeout=self.config.drain_timeout_seconds) if watchers else ((), ())
        if pending:
            for pod in self.pods:
                if pod.exit_code is None:
                    pod.process.kill()
            await asyncio.gather(*pending)


def run_rollout(config: RolloutConfig, log: Callable[[str], None] | None = None) -> RolloutResult:
    """The whole run on a fresh, real event loop (real time: the processes and the wall clock are real)."""
    return asyncio.run(CanaryLoop(config, log).run())
