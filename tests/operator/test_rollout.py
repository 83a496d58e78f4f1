"""The rollout state machine (``rollout.decide``) with a fake clock and a simulated set of revision Deployments.

``Sim`` plays the operator and the Deployment controller: it feeds ``decide`` what the cluster shows, applies the
replicas it answers (creating a revision's Deployment the first time), deletes what it prunes, and keeps only
``status.rollout``, through JSON, between calls, as the API server would. Pods become ready when the test says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubeserve.operator.analysis import AnalysisResult, Verdict, judge
from kubeserve.operator.canary_metrics import Measurement
from kubeserve.operator.rollout import Decision, Revision, State, Wanted, decide
from kubeserve.operator.spec import (
    Analysis,
    GatewayAPI,
    ParentRef,
    Rollout,
    RolloutStep,
    Strategy,
    Threshold,
    TrafficRouting,
)

T0 = datetime(2026, 1, 2, 3, 0, 0, tzinfo=UTC)
STEPS = [RolloutStep(weight=10, pause_seconds=60), RolloutStep(weight=50, pause_seconds=120)]
ANALYSIS = Analysis(interval_seconds=30, failure_limit=2, error_ratio=Threshold(max=0.01), min_requests=10)
# Gateway API routing: the router splits the requests by the rollout's weights.
ROUTED = TrafficRouting(gateway_api=GatewayAPI(parent_ref=ParentRef(name="gateway")))


@dataclass
class Deployment:
    version: str
    replicas: int
    ready: int
    created: datetime


@dataclass
class Sim:
    policy: Rollout = field(default_factory=lambda: Rollout(steps=STEPS, analysis=ANALYSIS))
    total: int = 10
    now: datetime = T0
    wanted: Wanted = field(default_factory=lambda: Wanted("v1-aaaaaa", "v1"))
    deployments: dict[str, Deployment] = field(default_factory=dict)
    status: dict[str, Any] | None = None
    auto_ready: bool = True  # pods become ready at once, as the next tick sees them
    history: list[Decision] = field(default_factory=list)

    def revisions(self) -> list[Revision]:
        return [Revision(n, d.version, d.replicas, d.ready, d.created) for n, d in self.deployments.items()]

    def tick(self, analysis: AnalysisResult | None = None, *, seconds: float = 0) -> Decision:
        self.now += timedelta(seconds=seconds)
        decision = decide(
            self.policy,
            self.wanted,
            self.revisions(),
            total=self.total,
            previous=self.status,
            analysis=analysis,
            now=self.now,
        )
        for name, replicas in decision.replicas.items():
            if name not in self.deployments:
                version = self.wanted.version if name == self.wanted.name else "?"
                self.deployments[name] = Deployment(version, 0, 0, self.now)
            deployment = self.deployments[name]
            deployment.replicas = replicas
            deployment.ready = min(deployment.ready, replicas)  # scaling down is at once
            if self.auto_ready:
                deployment.ready = replicas
        for name in decision.delete:
            del self.deployments[name]
        self.status = json.loads(json.dumps(decision.rollout))  # what the API server would hold
        self.history.append(decision)
        return decision

    def settle(self) -> Decision:
        """Ticks until nothing changes at the same time (pods readied in between when ``auto_ready``)."""
        decision = self.tick()
        for _ in range(10):
            again = self.tick()
            if again.replicas == decision.replicas and again.rollout == decision.rollout:
                return again
            decision = again
        raise AssertionError("never settled")

    def ready(self, name: str, count: int | None = None) -> None:
        deployment = self.deployments[name]
        deployment.ready = deployment.replicas if count is None else count

    def release(self, version: str) -> None:
        self.wanted = Wanted(f"{version}-{version[1:] * 6}"[: len(version) + 7], version)

    def result(self, verdict: Verdict, *, answers: int = 100, since: float = 30, message: str = "") -> AnalysisResult:
        return AnalysisResult(
            revision=self.wanted.name,
            verdict=verdict,
            started=self.now - timedelta(seconds=since),
            ended=self.now,
            measured={"answers": answers},
            message=message or f"{verdict}",
        )

    def replicas(self) -> dict[str, int]:
        return {name: d.replicas for name, d in self.deployments.items()}

    def events(self) -> list[tuple[str, str]]:
        return [(event.type, event.reason) for decision in self.history for event in decision.events]


def serving(version: str = "v1", *, auto_ready: bool = True, **settings: Any) -> Sim:
    """A simulation with ``version`` rolled out and ready at a total of 10; then pods get ready by themselves
    (``auto_ready``) or when the test says."""
    sim = Sim(**settings)
    sim.release(version)
    sim.settle()
    sim.auto_ready = auto_ready
    sim.history.clear()
    sim.now += timedelta(seconds=1)  # what comes next is newer
    return sim


def test_a_first_revision_goes_in_at_once():
    sim = Sim()
    first = sim.tick()
    assert first.rollout["strategy"] == "Immediate"
    assert first.replicas == {"v1-aaaaaa": 10}
    assert first.rollout["phase"] == "Progressing"
    assert first.events == ()  # a new InferenceService: no Event (a thousand created at once would post a thousand)
    done = sim.tick()
    assert done.events == ()
    assert done.rollout["phase"] == "Succeeded"
    assert done.condition.status and done.condition.reason == "RolloutComplete"
    assert done.requeue_after is None and done.analyze is None
    assert done.revisions == [
        {"name": "v1-aaaaaa", "version": "v1", "weight": 100, "replicas": 10, "readyReplicas": 10}
    ]


def test_a_canary_goes_through_its_steps_after_pauses_and_passing_analyses():
    sim = serving()
    sim.release("v2")
    started = sim.tick()
    assert started.rollout["strategy"] == "Canary"
    # Step 1 at 10%: one canary pod, the stable side waits for it to be ready.
    assert started.replicas == {"v1-111111": 10, "v2-222222": 1}
    assert started.analyze == "v2-222222" and started.stable == "v1-111111"
    assert started.requeue_after == 30  # the first analysis interval ends before the 60 s pause
    ready = sim.tick()
    assert ready.replicas == {"v1-111111": 9, "v2-222222": 1}
    assert "pausing 60s more" in ready.condition.message

    # A passing analysis before the pause is over does not advance the step.
    held = sim.tick(sim.result(Verdict.PASS), seconds=30)
    assert held.rollout["step"] == 0
    assert held.requeue_after == 30
    # Once the pause is over, the next passing interval advances it.
    advanced = sim.tick(sim.result(Verdict.PASS), seconds=30)
    assert advanced.rollout["step"] == 1 and advanced.rollout["weight"] == 50
    assert advanced.replicas == {"v1-111111": 9, "v2-222222": 5}  # surge until the new canary pods are ready
    assert sim.tick().replicas == {"v1-111111": 5, "v2-222222": 5}

    # The pass from before the step began is not evidence for this one.
    assert sim.tick(sim.result(Verdict.PASS, since=130), seconds=120).rollout["step"] == 1
    final = sim.tick(sim.result(Verdict.PASS), seconds=30)
    assert final.rollout["step"] == 2 and final.rollout["weight"] == 100
    assert final.replicas == {"v1-111111": 5, "v2-222222": 10}
    done = sim.tick()
    assert done.rollout["phase"] == "Succeeded" and done.rollout["stableRevision"] == "v2-222222"
    assert done.replicas == {"v1-111111": 0, "v2-222222": 10}
    assert done.condition.status
    assert [r["name"] for r in done.revisions] == ["v2-222222", "v1-111111"]  # the old one kept at 0
    assert sim.events() == [
        ("Normal", "RolloutStarted"),
        ("Normal", "StepAdvanced"),
        ("Normal", "StepAdvanced"),
        ("Normal", "RolloutComplete"),
    ]


def test_without_analysis_the_pauses_alone_pace_the_steps():
    sim = serving(policy=Rollout(steps=[RolloutStep(weight=20, pause_seconds=10)]))
    sim.release("v2")
    sim.settle()
    assert sim.tick(seconds=9).rollout["step"] == 0
    assert sim.tick(seconds=1).rollout["step"] == 1
    assert sim.settle().rollout["phase"] == "Succeeded"


def test_a_step_waits_for_its_canary_pods_to_be_ready():
    sim = serving(policy=Rollout(steps=[RolloutStep(weight=20, pause_seconds=10)]), auto_ready=False)
    sim.release("v2")
    sim.tick()
    waiting = sim.tick(seconds=30)
    assert waiting.rollout["step"] == 0
    assert waiting.replicas == {"v1-111111": 10, "v2-222222": 2}
    assert "0 of 2 pods ready" in waiting.condition.message
    sim.ready("v2-222222", 1)
    assert sim.tick().replicas == {"v1-111111": 9, "v2-222222": 2}  # one stable pod per ready canary pod
    sim.ready("v2-222222")
    assert sim.tick().rollout["step"] == 1


def test_failed_analyses_up_to_the_limit_roll_back():
    sim = serving()
    sim.release("v2")
    sim.settle()
    bad = "120 answers; error ratio 0.2 > 0.01"
    first = sim.tick(sim.result(Verdict.FAIL, message=bad), seconds=30)
    assert first.rollout["phase"] == "Progressing" and first.rollout["failedAnalyses"] == 1
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "AnalysisFailed")]
    # The same result read again (decide runs many times per interval) is not counted twice.
    again = sim.tick(AnalysisResult.from_status(first.rollout["lastAnalysis"]))
    assert again.rollout["failedAnalyses"] == 1 and not again.events
    failed = sim.tick(sim.result(Verdict.FAIL, message=bad), seconds=30)
    assert failed.rollout["phase"] == "Failed"
    # The stable side back to the full total; the canary's pod goes once the stable one taking its place is ready.
    assert failed.replicas == {"v1-111111": 10, "v2-222222": 1}
    assert not failed.condition.status and failed.condition.reason == "AnalysisFailed"
    assert "error ratio 0.2 > 0.01" in failed.condition.message and "2 of 2" in failed.condition.message
    assert [(e.type, e.reason) for e in failed.events] == [("Warning", "AnalysisFailed")]
    assert "rolled back to v1-111111" in failed.events[0].message
    assert failed.requeue_after is None and failed.analyze is None
    # It stays failed, whatever time passes and whatever comes in, until the wanted revision changes.
    later = sim.tick(sim.result(Verdict.PASS), seconds=3600)
    assert later.rollout["phase"] == "Failed" and not later.events
    assert later.replicas == {"v1-111111": 10, "v2-222222": 0}


def test_inconclusive_analysis_never_passes_a_step_and_is_reported_after_its_timeout():
    policy = Rollout(steps=STEPS, analysis=ANALYSIS.model_copy(update={"inconclusive_timeout_seconds": 300}))
    sim = serving(policy=policy)
    sim.release("v2")
    sim.settle()
    for _ in range(9):
        decision = sim.tick(sim.result(Verdict.INCONCLUSIVE, answers=3, message="3 answers"), seconds=30)
        assert decision.rollout["step"] == 0
        assert decision.condition.reason == "RolloutInProgress"
    assert "waiting for a passing analysis (last: Inconclusive, 3 answers)" in decision.condition.message
    reported = sim.tick(sim.result(Verdict.INCONCLUSIVE, answers=3, message="3 answers"), seconds=30)
    assert reported.rollout["phase"] == "Progressing" and reported.rollout["step"] == 0
    assert reported.condition.reason == "AnalysisInconclusive"
    assert "inconclusive for 300s: 3 answers" in reported.condition.message
    assert [(e.type, e.reason) for e in reported.events] == [("Warning", "AnalysisInconclusive")]
    assert not sim.tick(sim.result(Verdict.INCONCLUSIVE), seconds=30).events  # said once per step
    # Traffic comes; the step passes.
    assert sim.tick(sim.result(Verdict.PASS), seconds=30).rollout["step"] == 1


@pytest.mark.parametrize(("new_total", "canary", "stable_at_once", "stable_settled"), [(20, 2, 19, 18), (4, 1, 3, 3)])
def test_the_split_follows_the_total_when_the_hpa_changes_it_mid_step(
    new_total, canary, stable_at_once, stable_settled
):
    sim = serving(policy=Rollout(steps=[RolloutStep(weight=10, pause_seconds=600)]))
    sim.release("v2")
    assert sim.settle().replicas == {"v1-111111": 9, "v2-222222": 1}
    sim.total = new_total
    sim.auto_ready = False
    changed = sim.tick()
    assert changed.replicas == {"v1-111111": stable_at_once, "v2-222222": canary}
    sim.ready("v2-222222")
    sim.ready("v1-111111")
    assert sim.tick().replicas == {"v1-111111": stable_settled, "v2-222222": canary}
    assert sim.history[-1].rollout["step"] == 0


def test_the_total_going_down_in_the_final_step_keeps_capacity():
    sim = serving(policy=Rollout(steps=[RolloutStep(weight=50, pause_seconds=0)]), auto_ready=False)
    sim.release("v2")
    sim.tick()
    sim.ready("v2-222222")
    final = sim.tick()
    assert final.rollout["weight"] == 100 and final.replicas == {"v1-111111": 5, "v2-222222": 10}
    sim.total = 6
    sim.ready("v2-222222", 5)
    assert sim.tick().replicas == {"v1-111111": 1, "v2-222222": 6}
    sim.ready("v2-222222")
    assert sim.tick().rollout["phase"] == "Succeeded"


def test_a_canary_not_ready_within_the_progress_deadline_rolls_back():
    sim = serving(policy=Rollout(steps=STEPS, progress_deadline_seconds=300), auto_ready=False)
    sim.release("v2")
    first = sim.tick()
    assert first.requeue_after == 60  # the pause ends before the deadline
    sim.ready("v2-222222", 0)
    assert sim.tick(seconds=299).rollout["phase"] == "Progressing"
    failed = sim.tick(seconds=1)
    assert failed.rollout["phase"] == "Failed"
    assert failed.condition.reason == "ProgressDeadlineExceeded"
    assert "0 of 1 pods ready after 300s" in failed.condition.message
    assert failed.replicas == {"v1-111111": 10, "v2-222222": 0}
    assert [(e.type, e.reason) for e in failed.events] == [("Warning", "ProgressDeadlineExceeded")]


def test_the_deadline_counts_only_while_canary_pods_are_missing():
    sim = serving(policy=Rollout(steps=[RolloutStep(weight=10, pause_seconds=1000)], progress_deadline_seconds=300))
    sim.release("v2")
    sim.settle()
    assert sim.tick(seconds=900).rollout["phase"] == "Progressing"  # all ready: no deadline running


def test_a_first_revision_that_never_gets_ready_keeps_its_pods_and_sets_no_timer():
    # Nothing to roll back to: its Deployment's own progress deadline says it; the rollout waits, timer-free.
    sim = Sim(policy=Rollout(steps=STEPS, progress_deadline_seconds=300), auto_ready=False)
    first = sim.tick()
    late = sim.tick(seconds=300)
    assert late.rollout["phase"] == "Progressing" and late.replicas == {"v1-aaaaaa": 10}
    assert late.condition.reason == "RolloutInProgress"
    assert first.requeue_after is None and late.requeue_after is None


def test_pause_holds_the_step_and_stops_its_clock():
    sim = serving()
    sim.release("v2")
    sim.settle()
    sim.tick(seconds=40)
    sim.policy = sim.policy.model_copy(update={"paused": True})
    paused = sim.tick()
    assert paused.rollout["phase"] == "Paused"
    assert paused.condition.reason == "RolloutPaused" and paused.requeue_after is None and paused.analyze is None
    assert [(e.type, e.reason) for e in paused.events] == [("Normal", "RolloutPaused")]
    # The step holds for as long as it is paused, and its weight keeps following the total.
    sim.total = 20
    held = sim.tick(sim.result(Verdict.PASS), seconds=3600)
    assert held.rollout["step"] == 0 and held.replicas["v2-222222"] == 2
    sim.policy = sim.policy.model_copy(update={"paused": False})
    resumed = sim.tick()
    assert resumed.rollout["phase"] == "Progressing"
    assert [(e.type, e.reason) for e in resumed.events] == [("Normal", "RolloutResumed")]
    # 40 s of the 60 s pause had passed before: 20 s are left, not none.
    assert "pausing 20s more" in resumed.condition.message
    assert sim.tick(sim.result(Verdict.PASS, since=20), seconds=20).rollout["step"] == 1


def test_a_new_version_while_paused_starts_and_holds_at_step_one():
    sim = serving(policy=Rollout(steps=STEPS, paused=True))
    sim.release("v2")
    decision = sim.settle()
    assert decision.rollout["phase"] == "Paused" and decision.replicas == {"v1-111111": 9, "v2-222222": 1}


def test_a_new_version_supersedes_the_canary():
    sim = serving()
    sim.release("v2")
    sim.settle()
    sim.tick(seconds=30)
    sim.tick(sim.result(Verdict.PASS), seconds=30)
    assert sim.history[-1].rollout["step"] == 1
    assert sim.tick().replicas == {"v1-111111": 5, "v2-222222": 5}
    sim.release("v3")
    superseding = sim.tick()
    assert superseding.rollout["step"] == 0 and superseding.rollout["revision"] == "v3-333333"
    assert superseding.rollout["stableRevision"] == "v1-111111"
    assert superseding.rollout["failedAnalyses"] == 0 and superseding.rollout["lastAnalysis"] is None
    # The stable side grows back, and the superseded canary keeps the ready pods it lacks until it has.
    assert superseding.replicas == {"v1-111111": 10, "v2-222222": 5, "v3-333333": 1}
    assert [(e.type, e.reason) for e in superseding.events] == [
        ("Normal", "RolloutSuperseded"),
        ("Normal", "RolloutStarted"),
    ]
    assert sim.tick().replicas == {"v1-111111": 9, "v2-222222": 0, "v3-333333": 1}


def test_superseding_a_canary_that_has_taken_every_pod_keeps_it_serving_until_the_new_one_is_ready():
    sim = serving(policy=Rollout(steps=[RolloutStep(weight=50, pause_seconds=0)]))
    sim.release("v2")
    sim.tick()
    sim.tick()
    sim.tick()
    sim.tick()
    assert sim.replicas() == {"v1-111111": 0, "v2-222222": 10}
    sim.status = {**sim.status, "phase": "Progressing"}  # as if the last tick (its success) had not happened
    sim.release("v3")
    decision = sim.tick()
    assert decision.rollout["stableRevision"] == "v2-222222"
    assert decision.replicas["v2-222222"] == 10


def test_going_back_to_the_stable_version_abandons_the_canary_at_once():
    sim = serving()
    sim.release("v2")
    sim.settle()
    sim.release("v1")
    back = sim.tick()
    assert back.rollout["phase"] == "Succeeded"
    assert back.replicas == {"v1-111111": 10, "v2-222222": 1}
    assert sim.tick().replicas == {"v1-111111": 10, "v2-222222": 0}
    assert [(e.type, e.reason) for e in back.events] == [("Normal", "RolledBack")]


def test_going_back_to_a_kept_revision_rolls_back_without_canary_steps():
    sim = serving(policy=Rollout(steps=[RolloutStep(weight=50, pause_seconds=0)]))
    sim.release("v2")
    assert sim.settle().rollout["phase"] == "Succeeded"
    sim.auto_ready = False
    sim.release("v1")
    back = sim.tick()
    assert back.rollout["strategy"] == "Immediate" and back.rollout["phase"] == "Progressing"
    assert back.replicas == {"v1-111111": 10, "v2-222222": 10}  # the kept revision starts its pods; v2 serves
    assert [(e.type, e.reason) for e in back.events] == [("Normal", "RolledBack")]
    sim.ready("v1-111111", 6)
    assert sim.tick().replicas == {"v1-111111": 10, "v2-222222": 4}
    sim.ready("v1-111111")
    assert sim.tick().rollout["phase"] == "Succeeded"
    assert sim.replicas() == {"v1-111111": 10, "v2-222222": 0}


def test_a_revision_that_failed_its_canary_gets_a_canary_again():
    sim = serving(policy=Rollout(steps=STEPS, analysis=ANALYSIS.model_copy(update={"failure_limit": 1})))
    sim.release("v2")
    sim.settle()
    assert sim.tick(sim.result(Verdict.FAIL), seconds=30).rollout["phase"] == "Failed"
    sim.release("v3")
    sim.settle()
    sim.release("v2")  # kept at 0, but it never completed a rollout: not a rollback
    assert sim.tick().rollout["strategy"] == "Canary"


def test_an_immediate_policy_replaces_every_pod_without_steps():
    sim = serving(policy=Rollout(strategy=Strategy.IMMEDIATE, steps=STEPS, analysis=ANALYSIS), auto_ready=False)
    sim.release("v2")
    first = sim.tick()
    assert first.rollout["strategy"] == "Immediate" and first.analyze is None
    assert first.replicas == {"v1-111111": 10, "v2-222222": 10}
    sim.ready("v2-222222", 3)
    assert sim.tick().replicas == {"v1-111111": 7, "v2-222222": 10}
    sim.ready("v2-222222")
    assert sim.tick().rollout["phase"] == "Succeeded"


def test_history_beyond_the_limit_is_pruned_oldest_first_once_scaled_down():
    sim = serving(policy=Rollout(strategy=Strategy.IMMEDIATE, revision_history_limit=1))
    for version in ("v2", "v3", "v4"):
        sim.release(version)
        sim.tick(seconds=10)
        sim.tick()
        sim.tick()
    assert sim.replicas() == {"v3-333333": 0, "v4-444444": 10}
    assert [r["name"] for r in sim.history[-1].revisions] == ["v4-444444", "v3-333333"]


def test_a_revision_still_with_ready_pods_is_not_deleted_yet():
    sim = serving(policy=Rollout(strategy=Strategy.IMMEDIATE, revision_history_limit=0), auto_ready=False)
    sim.release("v2")
    sim.tick()
    sim.ready("v2-222222")
    decision = sim.tick()
    assert decision.replicas == {"v1-111111": 0, "v2-222222": 10}
    assert decision.delete == ()  # v1's pods are still ready until the Deployment controller acts
    sim.ready("v1-111111", 0)
    assert sim.tick().delete == ("v1-111111",)


def test_a_restart_mid_rollout_resumes_from_status_alone():
    sim = serving()
    sim.release("v2")
    sim.settle()
    sim.tick(sim.result(Verdict.FAIL), seconds=30)
    sim.tick(sim.result(Verdict.PASS), seconds=30)
    status = sim.status
    assert status is not None
    # Every field survives a round trip through its own dict form.
    state = State.from_status(status)
    assert state is not None and state.to_status(status["weight"]) == status
    # A fresh operator (nothing but status and the cluster) decides as the running one does.
    twin = Sim(policy=sim.policy, now=sim.now, wanted=sim.wanted, status=json.loads(json.dumps(status)))
    twin.deployments = {name: replace(d) for name, d in sim.deployments.items()}
    later = sim.result(Verdict.PASS)
    ours, theirs = sim.tick(seconds=45), twin.tick(seconds=45)
    assert ours == theirs and ours.rollout["step"] == 1 and ours.rollout["failedAnalyses"] == 1
    assert sim.tick(later) == twin.tick(later)


def test_the_first_look_at_an_adopted_serving_revision_changes_nothing():
    sim = Sim()
    sim.deployments["v1-aaaaaa"] = Deployment("v1", 3, 3, T0)
    sim.total = 3
    decision = sim.tick()
    assert decision.rollout["phase"] == "Succeeded" and decision.replicas == {"v1-aaaaaa": 3}
    assert not decision.events


def test_status_that_is_not_a_state_starts_over_from_the_cluster():
    assert State.from_status({"revision": "x", "phase": "Bogus"}) is None
    assert State.from_status(None) is None


def test_times_are_whole_seconds_so_a_state_read_back_is_the_same():
    sim = Sim(now=T0 + timedelta(microseconds=600_000))
    decision = sim.tick()
    assert decision.rollout["stepStartedAt"] == "2026-01-02T03:00:00Z"


# -- judging an interval --------------------------------------------------------------------------------------------


def measured(answers: int = 100, errors: int = 0, p99: float | None = 0.02, queue: float | None = 0.001) -> Measurement:
    return Measurement(answers, errors, errors / answers if answers else None, p99, queue, pods=1)


@pytest.mark.parametrize(
    ("policy", "canary", "stable", "verdict", "said"),
    [
        (Analysis(error_ratio=Threshold(max=0.05)), measured(errors=2), None, Verdict.PASS, "within"),
        (
            Analysis(error_ratio=Threshold(max=0.05)),
            measured(errors=10),
            None,
            Verdict.FAIL,
            "error ratio 0.1 > 0.05",
        ),
        (Analysis(p99_seconds=Threshold(max=0.01)), measured(p99=0.2), None, Verdict.FAIL, "p99 0.2 > 0.01"),
        (
            Analysis(p99_seconds=Threshold(max=1.5, relative_to_stable=True)),
            measured(p99=0.04),
            measured(p99=0.02),
            Verdict.FAIL,
            "p99 0.04 > 0.03 (1.5 x stable 0.02)",
        ),
        (
            Analysis(mean_queue_delay_seconds=Threshold(max=2, relative_to_stable=True)),
            measured(queue=0.003),
            measured(queue=0.002),
            Verdict.PASS,
            "within",
        ),
        (
            Analysis(p99_seconds=Threshold(max=2, relative_to_stable=True)),
            measured(),
            None,
            Verdict.INCONCLUSIVE,
            "no stable value",
        ),
        (Analysis(min_requests=20), measured(answers=19), None, Verdict.INCONCLUSIVE, "19 answers, fewer than"),
        (Analysis(p99_seconds=Threshold(max=0.01)), measured(p99=None), None, Verdict.PASS, "within"),
    ],
)
def test_judge(policy, canary, stable, verdict, said):
    result = judge(policy, canary, stable, revision="v2-222222", started=T0, ended=T0 + timedelta(seconds=30))
    assert result.verdict == verdict
    assert said in result.message
    assert result.measured["answers"] == canary.answers


def test_with_a_router_the_canary_gets_the_steps_weight_once_its_pods_can_carry_it():
    sim = serving(auto_ready=False, policy=Rollout(steps=STEPS, traffic_routing=ROUTED))
    assert sim.history == [] and sim.tick().route == {"v1-111111": 100}
    sim.release("v2")
    first = sim.tick()
    # Step 1 (10%): one canary pod, not ready yet: the router sends it nothing, the stable revision keeps all.
    assert first.replicas == {"v1-111111": 10, "v2-222222": 1}
    assert first.route == {"v2-222222": 0, "v1-111111": 100}
    sim.ready("v2-222222")
    ready = sim.tick()
    assert ready.route == {"v2-222222": 10, "v1-111111": 90}
    assert ready.replicas == {"v1-111111": 9, "v2-222222": 1}
    assert {r["name"]: r["weight"] for r in ready.revisions} == {"v2-222222": 10, "v1-111111": 90}
    # Step 2 (50%): five canary pods wanted; the router's share follows those ready, never above the weight.
    sim.ready("v1-111111")
    step2 = sim.tick(seconds=60)
    assert step2.rollout["weight"] == 50 and step2.replicas["v2-222222"] == 5
    assert step2.route == {"v2-222222": 10, "v1-111111": 90}
    sim.ready("v2-222222", 3)
    assert sim.tick().route == {"v2-222222": 30, "v1-111111": 70}


def test_with_a_router_a_failed_canary_gets_no_request_at_once():
    sim = serving(policy=Rollout(steps=STEPS, analysis=ANALYSIS, traffic_routing=ROUTED))
    sim.release("v2")
    sim.settle()
    sim.tick(sim.result(Verdict.FAIL), seconds=30)
    failed = sim.tick(sim.result(Verdict.FAIL), seconds=30)
    assert failed.rollout["phase"] == "Failed"
    assert failed.route == {"v1-111111": 100}


def test_an_analysis_of_an_earlier_rollout_of_the_same_revision_does_not_count():
    # v2 failed its canary once; back to v1, then v2 again: its old result is still the latest the operator holds.
    sim = serving(policy=Rollout(steps=STEPS, analysis=ANALYSIS.model_copy(update={"failure_limit": 1})))
    sim.release("v2")
    sim.settle()
    old = sim.result(Verdict.FAIL)
    assert sim.tick(old, seconds=30).rollout["phase"] == "Failed"
    sim.release("v1")
    sim.settle()
    sim.release("v2")
    again = sim.tick(old, seconds=1)
    assert again.rollout["phase"] == "Progressing" and again.rollout["failedAnalyses"] == 0
