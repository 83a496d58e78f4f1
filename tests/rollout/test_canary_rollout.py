"""No failed request through a versioned rollout (the canary's contract), with real runtime processes on this machine
(``bench/canary_rollout.py``): a stable revision of 3 pods under open-loop load, a canary to model version 2 driven by
``rollout.decide`` through 25% and 50% to 100%, analysed on its own ``/metrics`` every interval, old pods sent SIGTERM
as their revision is scaled down. Then a canary that answers 500 for half its batches: rolled back on its own.

Real time on a real event loop (no looptime): the processes, their drains and the analysis intervals are real. The
assertions count requests and read the state machine's outcome; none of them is a timing threshold. About 12 s each.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from canary_rollout import RevisionSpec, RolloutConfig, RolloutResult, run_rollout  # bench/, put on sys.path above
from kubeserve.operator.analysis import Verdict
from kubeserve.operator.spec import Rollout, parse
from kubeserve.runtime.samples import write_sample

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "isvc-canary.yaml"
STABLE = RevisionSpec("1-aaaaaa", "1")
CANARY = RevisionSpec("2-bbbbbb", "2")
# Time runs this much faster than in the sample, so a whole rollout takes seconds.
SPEED_UP = 20


def compressed(given: Rollout, factor: float) -> Rollout:
    """The policy with every duration divided by ``factor``: the same steps, weights and thresholds. (Copied without
    validation: a compressed duration is below what the CRD lets a user write.)"""
    analysis = given.analysis
    if analysis is not None:
        analysis = analysis.model_copy(
            update={
                "interval_seconds": analysis.interval_seconds / factor,
                "inconclusive_timeout_seconds": analysis.inconclusive_timeout_seconds / factor,
            }
        )
    steps = [step.model_copy(update={"pause_seconds": step.pause_seconds / factor}) for step in given.steps]
    return given.model_copy(
        update={
            "steps": steps,
            "analysis": analysis,
            "progress_deadline_seconds": given.progress_deadline_seconds / factor,
        }
    )


# The settings a user copies: the canary sample's steps, analysis and thresholds (its error ratio, and its p99
# relative to the stable revision's over the same interval), in compressed time.
POLICY = compressed(parse(yaml.safe_load(SAMPLE.read_text())).spec.rollout, SPEED_UP)
assert POLICY.analysis is not None
TOTAL = 3


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    return write_sample("tiny", tmp_path_factory.mktemp("model") / "tiny.onnx")


def check_capacity(result: RolloutResult) -> None:
    """Capacity never dipped: at every look, at least the total of pods were ready and in rotation."""
    short = [(period.t, period.ready) for period in result.periods if sum(period.ready.values()) < TOTAL]
    assert short == [], "fewer ready pods than the total"


def check_drains(result: RolloutResult) -> None:
    """Every process exited 0 after SIGTERM with nothing left unanswered, and none exited unasked."""
    for pod in result.pods:
        assert pod.draining, f"{pod.name} exited without being sent SIGTERM: {pod.exit_code}"
        assert pod.exit_code == 0, f"{pod.name} exited with {pod.exit_code}"
        assert pod.stopped_event.get("exit_code") == 0 and pod.stopped_event.get("unanswered") == 0, pod.name


def test_a_canary_rollout_under_load_fails_no_request(model):
    config = RolloutConfig(model, POLICY, STABLE, CANARY, total=TOTAL)
    result = run_rollout(config, print)
    print(result.summary())

    assert result.settled_at is not None, f"the rollout settled: {result.decision.condition}"
    assert result.rollout["phase"] == "Succeeded" and result.rollout["revision"] == CANARY.name
    assert result.decision.replicas == {CANARY.name: TOTAL, STABLE.name: 0}
    weights = [period.weight for period in result.periods]
    assert sorted(set(weights)) == [*(step.weight for step in POLICY.steps), 100], "through every step"
    assert weights == sorted(weights), "steps only go forward"
    # A failed analysis is possible without a fault (on a busy machine a fresh pod's one slow answer can be its p99
    # over a short interval); fewer than the sample's failureLimit of them leave the rollout going, as above.
    assert any(a.verdict is Verdict.PASS for a in result.analyses), "steps advanced on passing analyses"

    # Every old pod got SIGTERM from a decision (the load running), and no canary pod did.
    stable = result.of(STABLE.name)
    assert len(stable) == TOTAL and all(pod.by_rollout for pod in stable)
    canary = result.of(CANARY.name)
    assert len(canary) == TOTAL and not any(pod.by_rollout for pod in canary)
    check_drains(result)
    check_capacity(result)

    assert len(result.answers) == result.sent, "every request sent was answered or counted"
    assert result.failed == [], f"no request may fail through the rollout: {result.failed[:5]}"
    assert {a.version for a in result.answers} == {"1", "2"}, "both versions served during the rollout"
    # The balancer follows the decisions: once the one that completed the rollout is applied (the old pods out of
    # rotation), every request goes to version 2.
    done = next(period for period in result.periods if period.phase == "Succeeded")
    after = [a for a in result.answers if a.sent >= done.applied]
    assert after and all(a.version == "2" for a in after), "version 2 serves everything at the end"


def test_a_failing_canary_is_rolled_back_and_only_its_own_errors_fail(model):
    bad = RevisionSpec(CANARY.name, CANARY.version, fail_every=2)  # half its batches answer 500
    config = RolloutConfig(model, POLICY, STABLE, bad, total=TOTAL)
    result = run_rollout(config, print)
    print(result.summary())

    assert result.settled_at is not None, f"the rollback settled: {result.decision.condition}"
    assert result.rollout["phase"] == "Failed" and result.rollout["reason"] == "AnalysisFailed"
    assert result.decision.condition.reason == "AnalysisFailed" and not result.decision.condition.status
    assert result.decision.replicas == {STABLE.name: TOTAL, CANARY.name: 0}, "stable back at the full total"
    failed_analyses = [a for a in result.analyses if a.verdict is Verdict.FAIL]
    assert len(failed_analyses) == POLICY.analysis.failure_limit
    warnings = [e for e in result.events if e.type == "Warning" and e.reason == "AnalysisFailed"]
    assert len(warnings) == POLICY.analysis.failure_limit, "a Warning per failed analysis, the last one rolling back"

    canary = result.of(bad.name)
    assert canary and all(pod.by_rollout for pod in canary), "the canary's pods were drained by the rollback"
    check_drains(result)
    check_capacity(result)

    assert len(result.answers) == result.sent, "every request sent was answered or counted"
    assert [a for a in result.failed if a.status is None] == [], "no connection error"
    assert result.failed, "the canary did answer 500s"
    outside = [a for a in result.failed if a.status != 500 or a.revision != bad.name]
    assert outside == [], f"every failed request is one of the canary's own 500s: {outside[:5]}"
    assert result.settled_at is not None
    after = [a for a in result.answers if a.sent >= result.settled_at]
    assert after and all(a.ok and a.version == "1" for a in after), "version 1 serves everything after the rollback"
