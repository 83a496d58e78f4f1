"""The reconciler: InferenceServices' keys in one work queue, driven by watch events only.

- An InferenceService created, changed or found at start: apply its children.
- One of its children changed or deleted by someone else (drift): apply its children again.
- Its Deployment or pods changed: work out its status again, and write it only when it changed.

- Each run also asks the rollout (``rollout.decide``) how to split the replica total between the revisions, scales
  them and prunes old ones; while a canary rolls out, the queue comes back when its step is due, and the canary's
  analysis (``canary_analysis``) runs its intervals.

Per key, the queue collapses bursts into one run and never runs two at once, so one InferenceService's status has
one writer; its workers bound the API requests in flight. Nothing runs on a timer but the retries of failures and
the steps and analyses of rollouts in progress.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from kubeserve.operator import drift, manifests, naming, rollout
from kubeserve.operator.canary_analysis import CanaryAnalysis
from kubeserve.operator.canary_metrics import metrics_url
from kubeserve.operator.cluster import Cluster, ClusterError
from kubeserve.operator.manifests.http_route import http_route
from kubeserve.operator.manifests.service import revision_service
from kubeserve.operator.merge_patch import merge_patch, patch_to
from kubeserve.operator.metrics import OperatorMetrics
from kubeserve.operator.object_ref import ObjectRef
from kubeserve.operator.pod_diagnosis import is_ready
from kubeserve.operator.reconcile import Assessment, apply_children, assess, status_fields
from kubeserve.operator.revision_set import LiveRevision, live_revisions, policy, wanted_revision
from kubeserve.operator.settings import OperatorSettings
from kubeserve.operator.status import MEMORY_CONDITION, ApplyFailure, Reason
from kubeserve.operator.workqueue import WorkQueue

Key = tuple[str, str]  # namespace, name

# Requests in flight at most (one per worker): enough to create a thousand InferenceServices' children in
# seconds, few enough that the API server's fairness queues see one modest client.
WORKERS = 16
# Rendered children kept for drift checks and status: rendering costs about a millisecond (the runtime's config
# file), and one owner's events come close together; 256 renderings are a few MiB.
PLAN_CACHE_SIZE = 256
# An apply the API server refused (RBAC, an admission policy) is retried slowly: a human has to act first.
REJECTED_RETRY_SECONDS = 60.0
MAX_BACKOFF_SECONDS = 60.0
JITTER = 0.2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Rendered:
    assessment: Assessment
    plan: manifests.Children | None  # None for an invalid spec


@dataclass(frozen=True)
class _Rollout:
    """One InferenceService's revisions as the cluster shows them, and what the rollout decided over them."""

    policy: rollout.Policy  # the spec's rollout settings
    revisions: list[LiveRevision]
    wanted: str  # the wanted revision's name
    adopted: LiveRevision | None  # a Deployment from before revisions that already is the wanted revision
    decision: rollout.Decision


@dataclass(slots=True)
class _Owner:
    """What the operator remembers of one InferenceService between events (kept small: there are thousands)."""

    apply_wanted: bool = False
    not_before: float = 0.0  # loop time: no apply before (a retry's back-off)
    acted_generation: int | None = None  # applied, or judged invalid
    failure: ApplyFailure | None = None
    announced: str | None = None  # the apply error last posted as an Event
    written: dict[str, Any] | None = None  # the status as last written, until the watch shows it
    throttled: bool = False  # the API server asked the last apply to wait (429 Retry-After): no more requests now
    status_failures: int = 0  # status patches failed in a row (their back-off)
    route: dict[str, Any] | None = None  # the HTTPRoute as last applied (Gateway API routing), until it drifts
    # Children applied by an apply that then failed: its retry skips them (a throttled API server is not asked
    # twice for the same object); forgotten when the spec changes or a child drifts.
    applied: set[tuple[str, str]] = field(default_factory=set)
    analysis_counted: datetime | None = None  # the end of the last analysis interval counted in the metrics


class Controller:
    """Reads the operator's indexes (kopf's, live), writes through ``cluster``; one per operator."""

    def __init__(
        self,
        cluster: Cluster,
        settings: OperatorSettings,
        *,
        owners: kopf.Index[Key, dict[str, Any]],
        deployments: kopf.Index[Key, dict[str, Any]],
        pods: kopf.Index[Key, dict[str, Any]],
        autoscalers: kopf.Index[Key, dict[str, Any]],
        workers: int = WORKERS,
        metrics: OperatorMetrics | None = None,
    ) -> None:
        self._cluster, self._settings = cluster, settings
        self._owners, self._deployments, self._pods = owners, deployments, pods
        self._autoscalers = autoscalers
        self._state: dict[Key, _Owner] = {}
        self._rendered: OrderedDict[tuple[Any, ...], _Rendered] = OrderedDict()
        # The children (kind, namespace, name) that exist, as their watch events show: an HPA no longer wanted is
        # deleted only when there is one, not at every apply.
        # (kind, namespace, name) of each child that exists, as its watch events show it, and the InferenceService its
        # label names: only an object of the InferenceService's own is ever deleted.
        self._present: dict[tuple[str, str, str], str] = {}
        self.metrics = metrics or OperatorMetrics()
        self._queue: WorkQueue[Key] = WorkQueue(
            self._process, workers=workers, on_wait=self.metrics.workqueue_delay.observe
        )
        # Rollouts read the time from the event loop's monotonic clock, anchored to the wall clock once: a wall
        # clock that jumps cannot shorten a pause, and a test's fake loop clock drives them too. So do analyses.
        self._epoch = (datetime.now(UTC), asyncio.get_running_loop().time())
        self._analysis = CanaryAnalysis(on_result=self.runtime_changed, now=self._now)

    async def stop(self) -> None:
        await self._queue.stop()
        await self._analysis.close()

    def reconcile(self, key: Key) -> None:
        """The InferenceService was created, changed, or found at start: apply its children now."""
        state = self._state.setdefault(key, _Owner())
        state.apply_wanted, state.not_before = True, 0.0
        state.applied.clear()
        self._queue.add(key)

    def forget(self, key: Key) -> None:
        """The InferenceService is gone."""
        self._state.pop(key, None)
        self._queue.cancel(key)
        self._analysis.forget(key)
        self.metrics.forget(key)

    def child_changed(self, key: Key, event_type: str | None, kind: str, child: Mapping[str, Any]) -> None:
        """A child (any of the four kinds) was added, changed or deleted: repair it if it drifted."""
        ref = (kind, key[0], (child.get("metadata") or {}).get("name", ""))
        if event_type == drift.DELETED:
            self._present.pop(ref, None)
        else:
            self._present[ref] = key[1]
        owner = self._owner(key)
        if owner is None or owner["metadata"].get("deletionTimestamp"):
            return  # the garbage collector takes the children of an InferenceService that is gone or going
        state = self._state.get(key)
        if kind == "HTTPRoute" and state is not None and state.route is not None:
            # Its weights are the rollout's, not the spec's: compared with the one last applied.
            if event_type == drift.DELETED or not drift.contains(child, state.route):
                state.route = None
                self._queue.add(key)
            return
        plan = self._render(owner).plan
        if plan is None:
            return  # an invalid spec: nothing is applied, so nothing is repaired
        if drift.needs_repair(event_type, kind, child, plan):
            repair = self._state.setdefault(key, _Owner())
            repair.apply_wanted = True
            repair.applied.clear()
            self._queue.add(key)

    def runtime_changed(self, key: Key) -> None:
        """A runtime Deployment, pod or HPA changed: the status may have."""
        if key in self._owners:
            self._queue.add(key)

    def _render(self, owner: Mapping[str, Any]) -> _Rendered:
        """The spec judged and its children rendered, from the cache when it is there."""
        metadata = owner["metadata"]
        # They depend on the spec (its generation), the name, namespace and uid, and nothing else.
        identity = (metadata["namespace"], metadata["name"], metadata.get("uid"), metadata.get("generation"))
        rendered = self._rendered.get(identity)
        if rendered is not None:
            self._rendered.move_to_end(identity)
            return rendered
        assessment = assess(owner, self._settings)
        plan = None if assessment.isvc is None else manifests.children(assessment.isvc, self._settings)
        rendered = self._rendered[identity] = _Rendered(assessment, plan)
        if len(self._rendered) > PLAN_CACHE_SIZE:
            self._rendered.popitem(last=False)
        return rendered

    def _owner(self, key: Key) -> dict[str, Any] | None:
        return next(iter(self._owners.get(key, ())), None)

    async def _process(self, key: Key) -> float | None:
        owner = self._owner(key)
        if owner is None or owner["metadata"].get("deletionTimestamp"):
            self.forget(key)
            return None
        state = self._state.setdefault(key, _Owner())
        rendered = self._render(owner)
        current = self._current_status(owner, state)
        progress = self._decide(key, rendered, state, current)
        retry_in = await self._apply(owner, rendered, state, progress)
        result = "invalid" if rendered.plan is None else "failed" if state.failure is not None else "ok"
        self.metrics.reconciles.labels(result).inc()
        if progress is not None:
            decision = progress.decision
            self.metrics.rollout(key, decision.rollout.get("phase", ""), decision.revisions, decision.replicas)
        if state.throttled:
            # Throttled: the status (ApplyFailed) would be one more request to a server that asked for fewer; it is
            # written with the retry.
            return retry_in
        try:
            await self._write_status(key, owner, rendered, state, progress, current)
            state.status_failures = 0
        except ClusterError as error:
            log.warning(str(error), extra={"event": "status_failed", "inferenceservice": "/".join(key)})
            if error.retryable:  # otherwise (the object went: 404) there is nothing left to write to
                state.status_failures += 1
                delay = _jittered(_delay(error, state.status_failures - 1))
                retry_in = min(retry_in if retry_in is not None else MAX_BACKOFF_SECONDS, delay)
        if progress is not None:
            self._follow_analysis(key, progress)
            due = progress.decision.requeue_after
            if due is not None:
                retry_in = min(retry_in if retry_in is not None else math.inf, due)
        return retry_in

    def _decide(self, key: Key, rendered: _Rendered, state: _Owner, current: Mapping[str, Any]) -> _Rollout | None:
        """The rollout's decision for the revisions the cluster shows now (``current``: the status as last written);
        None for an invalid spec."""
        isvc, plan = rendered.assessment.isvc, rendered.plan
        if isvc is None or plan is None:
            return None
        revisions = live_revisions(isvc.name, self._deployments.get(key, ()))
        wanted, adopted = wanted_revision(plan, revisions)
        result = self._analysis.result(key)
        if result is not None and result.ended != state.analysis_counted:
            self.metrics.analyses.labels(*key, str(result.verdict)).inc()
            state.analysis_counted = result.ended
        settings = policy(isvc.spec.rollout)
        decision = rollout.decide(
            settings,
            rollout.Wanted(wanted, plan.version),
            [revision.as_rollout_revision() for revision in revisions],
            total=isvc.replicas,
            previous=current.get("rollout"),
            analysis=result,
            now=self._now(),
        )
        return _Rollout(settings, revisions, wanted, adopted, decision)

    def _now(self) -> datetime:
        wall, monotonic = self._epoch
        return wall + timedelta(seconds=asyncio.get_running_loop().time() - monotonic)

    async def _apply(
        self, owner: Mapping[str, Any], rendered: _Rendered, state: _Owner, progress: _Rollout | None
    ) -> float | None:
        """Apply the children when asked to, then give each revision the replicas the rollout decided and delete
        the revisions it prunes; unless backing off. The seconds until the next try, or None when done."""
        loop = asyncio.get_running_loop()
        if state.not_before > loop.time():
            return state.not_before - loop.time()
        full, state.apply_wanted = state.apply_wanted, False
        previous = state.failure
        state.throttled = False
        if full:
            state.failure = None
        if rendered.plan is not None and progress is not None:
            try:
                await self._converge(owner["metadata"]["namespace"], rendered.plan, progress, state, full=full)
                await self._route(rendered, progress, state, full=full)
                if full:
                    await self._start_autoscaling(rendered)
            except ClusterError as error:
                kind = "throttled" if error.retry_after is not None else "retryable" if error.retryable else "refused"
                self.metrics.apply_errors.labels(kind).inc()
                # Counted whatever triggered the apply: the status shows one count of failures in a row.
                attempt = previous.attempt + 1 if previous else 1
                delay = _delay(error, attempt - 1)
                state.failure = ApplyFailure(str(error), attempt=attempt, retry_in=delay)
                # Spread: InferenceServices failing together (a throttled burst) must not all come back together.
                wait = _jittered(delay)
                state.apply_wanted, state.not_before = True, loop.time() + wait
                state.throttled = error.retry_after is not None
                where = "{namespace}/{name}".format(**owner["metadata"])
                log.warning(state.failure.message, extra={"event": "apply_failed", "inferenceservice": where})
                # An Event once per distinct error; a retryable one only once it survived a retry (409s are routine),
                # and none for throttling, which is the API server's to manage, not a user's.
                announce = (attempt > 1 or not error.retryable) and not state.throttled
                if announce and state.announced != state.failure.error:
                    kopf.warn(owner, reason=Reason.APPLY_FAILED, message=state.failure.error)
                    state.announced = state.failure.error
                return wait
        if full:
            state.acted_generation = owner["metadata"].get("generation")
            state.announced = None
        return None

    async def _converge(
        self, namespace: str, plan: manifests.Children, progress: _Rollout, state: _Owner, *, full: bool
    ) -> None:
        decision, wanted = progress.decision, progress.wanted
        isvc_name = plan.manifests[0]["metadata"]["labels"][naming.LABEL_ISVC]
        owned = self._owns(isvc_name)
        sent_deployment = False
        if full:
            replicas = decision.replicas.get(wanted, 0)
            children = plan.with_replicas(replicas, adopted=progress.adopted is not None)
            deployment = next(
                (("Deployment", m["metadata"]["name"]) for m in children if m["kind"] == "Deployment"), None
            )
            sent_deployment = deployment is not None and deployment not in state.applied
            await apply_children(self._cluster, children, plan.absent, present=owned, applied=state.applied)
            state.applied.clear()
        for revision in progress.revisions:
            want = decision.replicas.get(revision.name)
            just_applied = sent_deployment and revision.name == wanted and progress.adopted is None
            if want is None or revision.name in decision.delete or just_applied or revision.replicas == want:
                continue
            await self._cluster.scale_deployment(namespace, revision.deployment, want)
        by_name = {revision.name: revision for revision in progress.revisions}
        for name in decision.delete:
            legacy = by_name[name].legacy if name in by_name else False
            for ref in manifests.revision_objects(namespace, isvc_name, name, legacy=legacy):
                if ref.kind == "Deployment" or owned(ref):
                    await self._cluster.delete(ref)

    async def _route(self, rendered: _Rendered, progress: _Rollout, state: _Owner, *, full: bool) -> None:
        """With Gateway API routing, the HTTPRoute with the rollout's weights, applied when they change (or the
        children are applied, or it drifted)."""
        isvc = rendered.assessment.isvc
        routing = isvc.spec.rollout.traffic_routing if isvc is not None else None
        if isvc is None or routing is None:
            state.route = None
            return
        route = http_route(isvc, routing.gateway_api, progress.decision.route)
        if full or route != state.route:
            # A Deployment from before revisions has no Service of its own: the route needs one to send it requests.
            for legacy in (r for r in progress.revisions if r.legacy and r.name in progress.decision.route):
                await self._cluster.apply(revision_service(isvc, legacy.name))
            await self._cluster.apply(route)
            state.route = route

    def _follow_analysis(self, key: Key, progress: _Rollout) -> None:
        """Keep the canary's analysis running while the rollout asks for one, and only then."""
        decision, analysis = progress.decision, progress.policy.analysis
        if decision.analyze is None or analysis is None:
            self._analysis.stop(key)
            return
        self._analysis.want(
            key, analysis, decision.analyze, decision.stable, lambda revision: self._urls(key, revision)
        )

    def _urls(self, key: Key, revision: str) -> list[str]:
        """The metrics URLs of a revision's ready pods, as the pod index shows them now."""
        urls = []
        for pod in self._pods.get(key, ()):
            labels = (pod.get("metadata") or {}).get("labels") or {}
            address = (pod.get("status") or {}).get("podIP")
            if labels.get(naming.LABEL_REVISION) == revision and address and is_ready(pod):
                urls.append(metrics_url(address, naming.HTTP_PORT))
        return urls

    async def _start_autoscaling(self, rendered: _Rendered) -> None:
        """With autoscaling and no spec.replicas, write the starting point (minReplicas) through the scale
        subresource: an HPA reads an unset spec.replicas as 0, and does not scale a target at 0."""
        isvc = rendered.assessment.isvc
        autoscaling = isvc.spec.autoscaling if isvc is not None else None
        if isvc is None or autoscaling is None:
            return
        # Also at 0 under an HPA (after KEDA scaled to zero, say): an HPA would leave it there for ever.
        parked = isvc.spec.replicas == 0 and autoscaling.engine == "hpa"
        if isvc.spec.replicas is None or parked:
            await self._cluster.scale(isvc.namespace, isvc.name, autoscaling.min_replicas)

    def _owns(self, isvc_name: str) -> Callable[[ObjectRef], bool]:
        """Whether an object exists and is this InferenceService's (another's of the same name is not to delete)."""
        return lambda ref: self._present.get((ref.kind, ref.namespace, ref.name)) == isvc_name

    async def _write_status(
        self,
        key: Key,
        owner: Mapping[str, Any],
        rendered: _Rendered,
        state: _Owner,
        progress: _Rollout | None,
        current: Mapping[str, Any],
    ) -> None:
        """Patch only what changed from ``current`` (the status as last written), and post an Event for each new
        problem a user has to act on and each step of a rollout."""
        plan = rendered.plan
        fields = status_fields(
            owner,
            rendered.assessment,
            deployments=self._deployments.get(key, ()),
            pods=self._pods.get(key, ()),
            autoscalers=self._autoscalers.get(key, ()),
            apply_failure=state.failure,
            spec_config_hash=plan.config_hash if plan is not None else None,
            url=plan.url if plan is not None else None,
            revision=progress.wanted if progress is not None else None,
            decision=progress.decision if progress is not None else None,
        )
        if state.failure is None and state.acted_generation is not None:
            fields["observedGeneration"] = state.acted_generation
        # Compared as the API server holds it (a merge patch's nulls remove keys), or it would differ for ever.
        changed = {name: value for name, value in fields.items() if current.get(name) != merge_patch(None, value)}
        if not changed:
            return
        patch = {name: patch_to(current.get(name), value) for name, value in changed.items()}
        await self._cluster.patch_status(key[0], key[1], patch)
        state.written = merge_patch(current, patch)  # as the API server now holds it
        for reason, message in _news(current, fields):
            kopf.warn(owner, reason=reason, message=message)
        for event in progress.decision.events if progress is not None else ():
            kopf.event(owner, type=event.type, reason=event.reason, message=event.message)

    @staticmethod
    def _current_status(owner: Mapping[str, Any], state: _Owner) -> dict[str, Any]:
        """The status as last written: the indexed one, unless the watch has yet to show the operator's last write."""
        indexed = dict(owner.get("status") or {})
        if state.written is not None:
            if all(indexed.get(name) == value for name, value in state.written.items()):
                state.written = None  # caught up
            else:
                return state.written
        return indexed


def _news(current: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(reason, message) of each problem the new status shows and the current one does not.

    A failed apply is announced where it happens, once per distinct error, not once per retry.
    """
    news = []
    before, after = _condition(current, "Ready"), _condition(new, "Ready")
    seen = (before.get("reason"), before.get("message")) == (after.get("reason"), after.get("message"))
    if after.get("reason") == Reason.INVALID_SPEC and not seen:
        news.append((after["reason"], after["message"]))
    failure, previous = new.get("lastFailure"), current.get("lastFailure")
    if failure and failure != previous:
        news.append((failure["reason"], failure["message"]))
    # A memory limit below the estimate: announced once, when it appears (or its numbers change).
    memory, memory_before = _condition(new, MEMORY_CONDITION), _condition(current, MEMORY_CONDITION)
    if memory.get("reason") == Reason.MEMORY_LIMIT_TOO_LOW and memory.get("message") != memory_before.get("message"):
        news.append((memory["reason"], memory["message"]))
    return news


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})


def backoff(retry: int) -> float:
    return min(2.0**retry, MAX_BACKOFF_SECONDS)


def _jittered(delay: float) -> float:
    """Up to a fifth more: retries of many InferenceServices spread out instead of arriving in a wave."""
    return delay * (1 + JITTER * random.random())


def _delay(error: ClusterError, retry: int) -> float:
    """Back off exponentially, never sooner than the API server's Retry-After."""
    delay = backoff(retry) if error.retryable else REJECTED_RETRY_SECONDS
    return max(delay, error.retry_after or 0.0)
