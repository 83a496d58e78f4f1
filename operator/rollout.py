"""The rollout of a new revision: a pure state machine over ``spec.rollout`` (as ``spec`` parsed it, defaults
included: it has none of its own), the cluster and a clock.

``decide`` takes what the operator reads (the wanted revision, the revision Deployments with their replicas, the
replica total, the last analysis of the canary, ``status.rollout`` as the API server holds it, the time) and
answers what to do: replicas per revision, revisions to delete, the new ``status.rollout`` and ``status.revisions``,
what ``RolloutComplete`` says of the rollout, Events for what changed, and when to look again. It keeps nothing in
memory: ``status.rollout`` is its whole state, so an operator that restarts mid-rollout resumes where it was.

How it goes:

- No ready stable revision (the first one, or none serving): ``Immediate``, the wanted revision at the full total.
- A new revision with a ready stable one: ``Canary`` (unless the policy says ``Immediate``): through the steps, then
  100%. The replicas split by weight (``canary_split.split_replicas``); the stable side shrinks only as canary pods
  become ready. A step advances when the canary's pods are all ready, its pause has passed and the last analysis
  of the step passed (when the policy has an analysis). Inconclusive analyses never pass a step: after
  ``inconclusiveTimeoutSeconds`` the condition and a Warning Event say so, and the step keeps waiting for data.
- ``failureLimit`` failed analyses, or canary pods not all ready within ``progressDeadlineSeconds``: Failed.
  The stable revision goes back to the full total, the canary to 0, until the wanted revision changes. A revision
  with nothing to go back to (the first) has no deadline here: its Deployment's own progress deadline reports it
  (so an InferenceService whose pods cannot start costs no timer).
- Capacity never dips: a revision on its way out (a superseded or failed canary, the old stable one) keeps the
  ready pods that the revisions staying lack, until theirs are ready.
- ``paused``: a canary holds its step (its weight and replicas still follow the total); the pause's clock and the
  progress deadline stop, and resume where they were. An ``Immediate`` rollout or a rollback is not held.
- The wanted revision is a kept one that completed a rollout before (``status.rollout.provenRevisions``): a
  rollback, at once, as ``Immediate``. A kept revision that never completed one (a failed canary) gets a canary
  again. The wanted revision is the stable one while a canary runs: the canary is abandoned at once.
- A newer revision during a rollout supersedes the canary: it goes to 0, the new one starts at step one, against
  the same stable revision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from kubeserve.operator.analysis import AnalysisResult, Verdict
from kubeserve.operator.canary_split import canary_replicas, split_replicas
from kubeserve.operator.spec import Rollout, RolloutStep, Strategy
from kubeserve.operator.status import Reason, RolloutProgress
from kubeserve.operator.timestamps import format_time, parse_time, whole_seconds


class RolloutReason(StrEnum):
    """Reasons of the rollout's Events only (those a condition can show are ``status.Reason``'s)."""

    ROLLOUT_RESUMED = "RolloutResumed"
    ROLLOUT_STARTED = "RolloutStarted"
    ROLLOUT_SUPERSEDED = "RolloutSuperseded"
    ROLLED_BACK = "RolledBack"
    STEP_ADVANCED = "StepAdvanced"


class Phase(StrEnum):
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


# -- what the operator reads ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wanted:
    """The revision the spec asks for (``naming.revision_name``) and its model version."""

    name: str
    version: str


@dataclass(frozen=True)
class Revision:
    """A revision Deployment as the cluster shows it: ``replicas`` its spec's, ``ready`` its status's."""

    name: str
    version: str
    replicas: int
    ready: int
    created: datetime  # its creationTimestamp: the newest revisions are kept, the oldest pruned


# -- what the operator does -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    replicas: Mapping[str, int]  # every revision Deployment to keep (the wanted one included), with its replicas
    delete: tuple[str, ...]  # revisions to delete: beyond the history limit, and without ready pods
    rollout: dict[str, Any]  # ``status.rollout``: the whole state; ``decide`` reads it back next time
    revisions: list[dict[str, Any]]  # ``status.revisions``
    condition: RolloutProgress  # what ``RolloutComplete`` says of the rollout (``status`` writes the condition)
    events: tuple[Event, ...]
    requeue_after: float | None  # seconds until something is due (end of a pause, a deadline, an analysis)
    analyze: str | None  # the canary revision whose analysis is wanted now (None: scrape nothing)
    stable: str | None  # the revision the canary is measured against (for relative thresholds)
    # With a traffic router (``spec.rollout.trafficRouting``): each revision's share of the requests in percent (adds
    # up to 100); empty without one.
    route: Mapping[str, int] = field(default_factory=dict)


# -- the state, as ``status.rollout`` holds it --------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    revision: str  # the wanted revision this rollout is about
    version: str
    stable: str | None  # the revision serving before it, None for a first revision
    strategy: Strategy
    phase: Phase
    step: int  # index into the policy's steps; len(steps) is the final 100%
    step_started: datetime  # shifted by the time spent paused: the pause's clock stops while paused
    failed_analyses: int = 0
    waiting_since: datetime | None = None  # since when canary pods are wanted and not all ready
    paused_at: datetime | None = None
    last_analysis: AnalysisResult | None = None
    inconclusive_reported: bool = False
    proven: tuple[str, ...] = ()  # revisions that completed a rollout: going back to one needs no canary
    reason: str = ""  # why it failed
    message: str = ""
    started: datetime | None = None  # when this rollout began: an analysis from before it (of an earlier rollout
    # of the same revision) is not this one's

    def to_status(self, weight: int) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "version": self.version,
            "stableRevision": self.stable,
            "strategy": str(self.strategy),
            "phase": str(self.phase),
            "step": self.step,
            "weight": weight,
            "stepStartedAt": format_time(self.step_started),
            "failedAnalyses": self.failed_analyses,
            "waitingSince": format_time(self.waiting_since) if self.waiting_since else None,
            "pausedAt": format_time(self.paused_at) if self.paused_at else None,
            "lastAnalysis": self.last_analysis.to_status() if self.last_analysis else None,
            "inconclusiveReported": self.inconclusive_reported,
            "provenRevisions": list(self.proven),
            "reason": self.reason,
            "message": self.message,
            "startedAt": format_time(self.started) if self.started else None,
        }

    @classmethod
    def from_status(cls, data: Mapping[str, Any] | None) -> State | None:
        """The state written last time; None when there is none or it is not one (then the cluster decides)."""
        if not data or not data.get("revision"):
            return None
        try:
            return cls(
                revision=data["revision"],
                version=data.get("version") or "",
                stable=data.get("stableRevision"),
                strategy=Strategy(data["strategy"]),
                phase=Phase(data["phase"]),
                step=int(data.get("step") or 0),
                step_started=parse_time(data["stepStartedAt"]),
                failed_analyses=int(data.get("failedAnalyses") or 0),
                waiting_since=parse_time(data["waitingSince"]) if data.get("waitingSince") else None,
                paused_at=parse_time(data["pausedAt"]) if data.get("pausedAt") else None,
                last_analysis=AnalysisResult.from_status(data["lastAnalysis"]) if data.get("lastAnalysis") else None,
                inconclusive_reported=bool(data.get("inconclusiveReported")),
                proven=tuple(data.get("provenRevisions") or ()),
                reason=data.get("reason") or "",
                message=data.get("message") or "",
                started=parse_time(data["startedAt"]) if data.get("startedAt") else None,
            )
        except (KeyError, ValueError, TypeError):
            return None  # written by someone else, or by a later version: start over from the cluster


# -- the machine ----------------------------------------------------------------------------------------------------


def decide(
    policy: Rollout,
    wanted: Wanted,
    revisions: Sequence[Revision],
    *,
    total: int,
    previous: Mapping[str, Any] | None,
    analysis: AnalysisResult | None,
    now: datetime,
) -> Decision:
    """What to do now. ``revisions``: every revision Deployment of the InferenceService (the wanted one may not
    exist yet); ``total``: the replica total (``spec.replicas``); ``previous``: ``status.rollout`` as read;
    ``analysis``: the latest judged analysis interval, or None (one already counted is ignored)."""
    now = whole_seconds(now)
    if analysis is not None:  # as status will hold it, so that one result read back is the same result
        analysis = replace(analysis, started=whole_seconds(analysis.started), ended=whole_seconds(analysis.ended))
    by_name = {revision.name: revision for revision in revisions}
    events: list[Event] = []
    state = State.from_status(previous)
    if state is None or state.revision != wanted.name:
        state = _start(policy, wanted, by_name, state, now, events)
    if state.phase in (Phase.PROGRESSING, Phase.PAUSED):
        state = _progress(policy, state, by_name, total, analysis, now, events)
    replicas = _replicas(policy, state, by_name, total)
    delete = _prune(policy, state, by_name)
    weight = _weight(policy, state)
    route = _route(policy, state, by_name, total) if policy.traffic_routing is not None else {}
    return Decision(
        replicas=replicas,
        delete=delete,
        rollout=state.to_status(weight),
        revisions=_revision_status(state, by_name, replicas, delete, route),
        condition=_report(policy, state, by_name, replicas, now),
        events=tuple(events),
        requeue_after=_requeue_after(policy, state, now),
        analyze=state.revision if _analysing(policy, state) else None,
        stable=state.stable,
        route=route,
    )


def _route(policy: Rollout, state: State, by_name: Mapping[str, Revision], total: int) -> dict[str, int]:
    """The router's split: the canary gets the step's weight, but never more than the share of the total its ready
    pods can carry (so the router never sends it more than it has ready); the stable revision the rest. A failed
    canary gets nothing at once (its errors stop there, its pods are only kept as spare capacity)."""
    stable = state.stable
    if stable is None or stable == state.revision or state.phase is Phase.SUCCEEDED:
        return {state.revision: 100}
    if state.phase is Phase.FAILED:
        return {stable: 100}
    wanted = _canary_wanted(policy, state, total)
    ready = min(_ready(by_name, state.revision), wanted)
    canary = min(_weight(policy, state), 100 * ready // total) if total else 0
    return {state.revision: canary, stable: 100 - canary}


def _ready(by_name: Mapping[str, Revision], name: str | None) -> int:
    revision = by_name.get(name) if name else None
    return revision.ready if revision else 0


def _start(
    policy: Rollout,
    wanted: Wanted,
    by_name: Mapping[str, Revision],
    state: State | None,
    now: datetime,
    events: list[Event],
) -> State:
    """A rollout to ``wanted``: a new revision, a rollback, or the operator's first look (adoption, or a status
    lost), where the cluster says which revision serves."""
    stable = state.stable if state is not None else None
    if stable is None or not _ready(by_name, stable):
        # The stable revision has no ready pod (a canary at 100% took its place, say): whichever serves now is the
        # capacity to keep until the new revision is ready.
        stable = _serving(by_name, exclude=wanted.name) or stable
    if stable is not None and stable not in by_name:
        stable = None
    if state is None:  # the first look (an adopted Deployment, or a status lost): what serves most has proven itself
        proven: tuple[str, ...] = (stable,) if stable is not None else ()
    else:
        proven = tuple(name for name in state.proven if name in by_name)
    fresh = State(
        wanted.name, wanted.version, stable, Strategy.IMMEDIATE, Phase.PROGRESSING, 0, now, proven=proven, started=now
    )
    what = f"revision {wanted.name} (version {wanted.version})"
    if state is None and stable is None and _ready(by_name, wanted.name):
        # The operator's first look at a revision already serving alone: nothing to roll.
        return replace(fresh, stable=wanted.name, phase=Phase.SUCCEEDED)
    if wanted.name == stable:
        events.append(Event("Normal", RolloutReason.ROLLED_BACK, f"back to {what}: the canary is abandoned"))
        return replace(fresh, phase=Phase.SUCCEEDED)
    if state is not None and state.phase in (Phase.PROGRESSING, Phase.PAUSED) and state.revision != stable:
        events.append(Event("Normal", RolloutReason.ROLLOUT_SUPERSEDED, f"{what} supersedes {state.revision}"))
    if wanted.name in proven and stable is not None:
        # A kept revision that served before: known good, so no canary steps.
        events.append(Event("Normal", RolloutReason.ROLLED_BACK, f"rolling back to {what}, replacing {stable}"))
        return replace(fresh, waiting_since=now)
    if stable is None or not _ready(by_name, stable):
        if state is not None:  # not for a new InferenceService: an Event each would be noise (a thousand at once)
            events.append(Event("Normal", RolloutReason.ROLLOUT_STARTED, f"{what}: no ready revision to compare with"))
        return replace(fresh, stable=stable, waiting_since=now)
    strategy = policy.strategy
    first = f"step 1 of {len(policy.steps) + 1}" if strategy is Strategy.CANARY and policy.steps else "100%"
    events.append(Event("Normal", RolloutReason.ROLLOUT_STARTED, f"{what} replacing {stable}: {strategy}, {first}"))
    return replace(fresh, strategy=strategy, waiting_since=now)


def _serving(by_name: Mapping[str, Revision], *, exclude: str) -> str | None:
    """The revision serving now: most ready pods, the newest on a tie; None when none has a ready pod."""
    candidates = [r for r in by_name.values() if r.name != exclude and r.ready > 0]
    return max(candidates, key=lambda r: (r.ready, r.created)).name if candidates else None


def _steps(policy: Rollout, state: State) -> Sequence[RolloutStep]:
    """The steps of this rollout; the final 100% is the one after them."""
    return policy.steps if state.strategy is Strategy.CANARY else ()


def _weight(policy: Rollout, state: State) -> int:
    if state.phase is Phase.FAILED:
        return 0
    steps = _steps(policy, state)
    return steps[state.step].weight if state.step < len(steps) else 100


def _canary_wanted(policy: Rollout, state: State, total: int) -> int:
    return canary_replicas(total, _weight(policy, state))


def _progress(
    policy: Rollout,
    state: State,
    by_name: Mapping[str, Revision],
    total: int,
    analysis: AnalysisResult | None,
    now: datetime,
    events: list[Event],
) -> State:
    steps = _steps(policy, state)
    held = state.strategy is Strategy.CANARY and policy.paused
    # Pause and resume: the clocks of the step's pause and of the progress deadline stop meanwhile.
    if held and state.phase is not Phase.PAUSED:
        events.append(Event("Normal", Reason.ROLLOUT_PAUSED, f"held at step {state.step + 1}"))
        state = replace(state, phase=Phase.PAUSED, paused_at=now)
    elif not held and state.phase is Phase.PAUSED:
        stopped = now - (state.paused_at or now)
        events.append(Event("Normal", RolloutReason.ROLLOUT_RESUMED, f"resumed at step {state.step + 1}"))
        state = replace(
            state,
            phase=Phase.PROGRESSING,
            paused_at=None,
            step_started=state.step_started + stopped,
            waiting_since=state.waiting_since + stopped if state.waiting_since else None,
        )

    state = _count_analysis(policy, state, analysis, events)
    if state.phase is Phase.FAILED:
        return state

    # The progress deadline: canary pods wanted and not all ready, for too long.
    wanted = _canary_wanted(policy, state, total)
    ready = _ready(by_name, state.revision)
    if ready >= wanted:
        state = replace(state, waiting_since=None)
    elif state.waiting_since is None:
        state = replace(state, waiting_since=now)
    elif state.stable is not None and state.phase is Phase.PROGRESSING and _past_deadline(policy, state, now):
        message = (
            f"revision {state.revision}: {ready} of {wanted} pods ready after "
            f"{policy.progress_deadline_seconds:g}s (progressDeadlineSeconds)"
        )
        return _fail(state, Reason.PROGRESS_DEADLINE_EXCEEDED, message, events)

    if state.phase is Phase.PAUSED:
        return state
    if state.step >= len(steps):
        if ready >= total:
            if state.stable is not None:  # it replaced a revision (a first one's readiness is the Ready condition's)
                message = f"all {total} pods run revision {state.revision}"
                events.append(Event("Normal", Reason.ROLLOUT_COMPLETE, message))
            proven = tuple(sorted({*state.proven, state.revision}))
            return replace(state, phase=Phase.SUCCEEDED, stable=state.revision, waiting_since=None, proven=proven)
        return state
    state = _inconclusive(policy, state, now, events)
    if ready >= wanted and _step_done(policy, state, steps[state.step], now):
        step = state.step + 1
        weight = steps[step].weight if step < len(steps) else 100
        events.append(Event("Normal", RolloutReason.STEP_ADVANCED, f"revision {state.revision} at {weight}%"))
        return replace(state, step=step, step_started=now, inconclusive_reported=False)
    return state


def _count_analysis(policy: Rollout, state: State, analysis: AnalysisResult | None, events: list[Event]) -> State:
    """A new analysis of this canary (one not counted yet) into the state; failures up to the limit fail it."""
    if policy.analysis is None or analysis is None or analysis.revision != state.revision:
        return state
    if state.started is not None and analysis.ended < state.started:
        return state  # over before this rollout began: an earlier rollout's of the same revision
    last = state.last_analysis
    if last is not None and analysis.ended <= last.ended:
        return state  # already counted: decide runs many times per interval
    state = replace(state, last_analysis=analysis)
    if analysis.verdict is not Verdict.FAIL:
        return state
    failed = state.failed_analyses + 1
    state = replace(state, failed_analyses=failed)
    limit = policy.analysis.failure_limit
    message = f"revision {state.revision} failed analysis {failed} of {limit}: {analysis.message}"
    if failed >= limit:
        return _fail(state, Reason.ANALYSIS_FAILED, message, events)
    events.append(Event("Warning", Reason.ANALYSIS_FAILED, message))
    return state


def _past_deadline(policy: Rollout, state: State, now: datetime) -> bool:
    since = state.waiting_since
    return since is not None and _seconds(now - since) >= policy.progress_deadline_seconds


def _fail(state: State, reason: str, message: str, events: list[Event]) -> State:
    back = f"; rolled back to {state.stable}" if state.stable else ""
    events.append(Event("Warning", reason, message + back))
    return replace(state, phase=Phase.FAILED, paused_at=None, waiting_since=None, reason=reason, message=message)


def _step_done(policy: Rollout, state: State, step: RolloutStep, now: datetime) -> bool:
    if _seconds(now - state.step_started) < step.pause_seconds:
        return False
    if policy.analysis is None:
        return True
    last = state.last_analysis
    # Evidence from this step: an interval that began once the step's replicas were set.
    return last is not None and last.verdict is Verdict.PASS and last.started >= state.step_started


def _inconclusive(policy: Rollout, state: State, now: datetime, events: list[Event]) -> State:
    """Reported once per step, when the step has waited ``inconclusive_timeout_seconds`` on inconclusive data."""
    if policy.analysis is None or state.inconclusive_reported or not _is_inconclusive(policy, state, now):
        return state
    last = state.last_analysis
    detail = last.message if last is not None else "no analysis yet"
    message = f"revision {state.revision}: no conclusive analysis at step {state.step + 1} yet ({detail})"
    events.append(Event("Warning", Reason.ANALYSIS_INCONCLUSIVE, message))
    return replace(state, inconclusive_reported=True)


def _is_inconclusive(policy: Rollout, state: State, now: datetime) -> bool:
    analysis = policy.analysis
    if analysis is None or state.phase is not Phase.PROGRESSING or state.step >= len(_steps(policy, state)):
        return False
    last = state.last_analysis
    passed = last is not None and last.verdict is Verdict.PASS and last.started >= state.step_started
    return not passed and _seconds(now - state.step_started) >= analysis.inconclusive_timeout_seconds


def _seconds(delta: timedelta) -> float:
    return delta.total_seconds()


def _replicas(policy: Rollout, state: State, by_name: Mapping[str, Revision], total: int) -> dict[str, int]:
    staying = _staying(policy, state, by_name, total)
    replicas = {name: 0 for name in by_name} | staying
    # Capacity never dips: a revision on its way out (a superseded or failed canary, the stable one of a rollback)
    # keeps the ready pods that the revisions staying lack, and gives them up as theirs become ready.
    lacking = total - sum(min(_ready(by_name, name), count) for name, count in staying.items())
    leaving = [r for r in by_name.values() if not staying.get(r.name) and r.ready > 0]
    for revision in sorted(leaving, key=lambda r: (r.ready, r.created), reverse=True):
        replicas[revision.name] = kept = min(revision.ready, max(lacking, 0))
        lacking -= kept
    return replicas


def _staying(policy: Rollout, state: State, by_name: Mapping[str, Revision], total: int) -> dict[str, int]:
    """The revisions that serve on, with their replicas."""
    if state.phase is Phase.SUCCEEDED or (state.phase is not Phase.FAILED and state.stable in (None, state.revision)):
        return {state.revision: total}
    if state.phase is Phase.FAILED:
        # Nothing to go back to: the failing revision keeps its pods.
        return {state.revision: total} if state.stable is None else {state.stable: total}
    assert state.stable is not None
    split = split_replicas(total, _weight(policy, state), _ready(by_name, state.revision))
    return {state.revision: split.canary, state.stable: split.stable}


def _prune(policy: Rollout, state: State, by_name: Mapping[str, Revision]) -> tuple[str, ...]:
    """Older revisions beyond the history limit, newest kept; one still with ready pods waits for them to go."""
    live = {state.revision, state.stable}
    older = sorted((r for r in by_name.values() if r.name not in live), key=lambda r: r.created, reverse=True)
    return tuple(r.name for r in older[policy.revision_history_limit :] if r.ready == 0)


def _revision_status(
    state: State,
    by_name: Mapping[str, Revision],
    replicas: Mapping[str, int],
    delete: Sequence[str],
    route: Mapping[str, int],
) -> list[dict[str, Any]]:
    """Newest first; ``weight``: the revision's share of the traffic: the router's (``route``), or without one its
    share of the ready pods, which the InferenceService's Service spreads requests over."""
    ready_total = sum(r.ready for r in by_name.values())
    entries = []
    for revision in sorted(by_name.values(), key=lambda r: r.created, reverse=True):
        if revision.name in delete:
            continue
        entries.append(
            {
                "name": revision.name,
                "version": revision.version,
                "weight": route.get(revision.name, 0)
                if route
                else (round(100 * revision.ready / ready_total) if ready_total else 0),
                "replicas": replicas.get(revision.name, 0),
                "readyReplicas": revision.ready,
            }
        )
    if state.revision not in by_name:
        entries.insert(
            0,
            {
                "name": state.revision,
                "version": state.version,
                "weight": 0,
                "replicas": replicas.get(state.revision, 0),
                "readyReplicas": 0,
            },
        )
    return entries


def _report(
    policy: Rollout, state: State, by_name: Mapping[str, Revision], replicas: Mapping[str, int], now: datetime
) -> RolloutProgress:
    revision = state.revision
    if state.phase is Phase.SUCCEEDED:
        message = f"all {replicas.get(revision, 0)} pods run revision {revision} (version {state.version})"
        return RolloutProgress(True, Reason.ROLLOUT_COMPLETE, message)
    if state.phase is Phase.FAILED:
        back = f"; {state.stable} serves at the full total" if state.stable else ""
        return RolloutProgress(False, state.reason, state.message + back, failed=True)
    steps = _steps(policy, state)
    wanted, ready = replicas.get(revision, 0), _ready(by_name, revision)
    where = f"step {state.step + 1} of {len(steps) + 1}" if steps else "replacing every pod"
    progress = f"revision {revision} at {_weight(policy, state)}% ({where}): {ready} of {wanted} pods ready"
    if state.phase is Phase.PAUSED:
        return RolloutProgress(False, Reason.ROLLOUT_PAUSED, f"paused (spec.rollout.paused); {progress}")
    if _is_inconclusive(policy, state, now):
        last = state.last_analysis
        detail = last.message if last is not None else "no analysis yet"
        message = f"{progress}; analysis inconclusive for {_seconds(now - state.step_started):g}s: {detail}"
        return RolloutProgress(False, Reason.ANALYSIS_INCONCLUSIVE, message)
    waiting = _waiting_for(policy, state, steps, now, ready >= wanted)
    return RolloutProgress(False, Reason.ROLLOUT_IN_PROGRESS, f"{progress}{waiting}")


def _waiting_for(policy: Rollout, state: State, steps: Sequence[RolloutStep], now: datetime, all_ready: bool) -> str:
    if not all_ready or state.step >= len(steps):
        return ""
    left = steps[state.step].pause_seconds - _seconds(now - state.step_started)
    if left > 0:
        return f"; pausing {left:g}s more"
    if policy.analysis is not None:
        last = state.last_analysis
        said = f" (last: {last.verdict}, {last.message})" if last is not None else ""
        return f"; waiting for a passing analysis{said}"
    return ""


def _analysing(policy: Rollout, state: State) -> bool:
    """Analysis runs through a canary's steps (the final 100% included), not while paused or once done."""
    return policy.analysis is not None and state.phase is Phase.PROGRESSING and state.strategy is Strategy.CANARY


def _requeue_after(policy: Rollout, state: State, now: datetime) -> float | None:
    if state.phase is not Phase.PROGRESSING:
        return None
    due: list[datetime] = []
    # With nothing to roll back to, no deadline: the revision's Deployment reports its own (no timer per object).
    if state.waiting_since is not None and state.stable is not None:
        due.append(state.waiting_since + timedelta(seconds=policy.progress_deadline_seconds))
    steps = _steps(policy, state)
    if state.step < len(steps):
        due.append(state.step_started + timedelta(seconds=steps[state.step].pause_seconds))
        if policy.analysis is not None and not state.inconclusive_reported:
            due.append(state.step_started + timedelta(seconds=policy.analysis.inconclusive_timeout_seconds))
    if _analysing(policy, state) and policy.analysis is not None:
        last = state.last_analysis
        since = last.ended if last is not None and last.ended >= state.step_started else state.step_started
        interval = timedelta(seconds=policy.analysis.interval_seconds)
        # Behind (no result came in time): one interval from now, not a busy loop.
        due.append(since + interval if since + interval > now else now + interval)
    pending = [moment for moment in due if moment > now]
    if not pending:
        return None
    return max(math.ceil(_seconds(min(pending) - now)), 1)
