"""A plan (``plan.Plan``) carried out against the API server, with the retry bookkeeping; the status written.

What is applied when:

- Every run: the revisions' replicas and the pruning the rollout decided, and the HTTPRoute when its weights changed
  (or it drifted).
- When the spec changed, a child drifted, or the last apply failed (``ApplyMemory.full``): the children too, what
  is no longer wanted first, and the autoscaler's starting point.
- A failure is retried with exponential back-off (never sooner than the API server's ``Retry-After``), and
  slowly when the API server refused (RBAC, an admission policy): a human has to act first. A retry skips the
  children the failed apply had applied already.
- Each run is counted (``kubeserve_operator_reconciles`` by result, the rollout's gauges) before the status is
  written.
- Then the status, only the fields that changed, and an Event for each new problem a user has to act on and each
  step of a rollout. Not while throttled: that would be one more request to a server that asked for fewer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from kubeserve.operator import status
from kubeserve.operator.cluster import Cluster, ClusterError
from kubeserve.operator.merge_patch import merge_patch
from kubeserve.operator.metrics import OperatorMetrics
from kubeserve.operator.object_ref import ObjectRef
from kubeserve.operator.plan import Plan
from kubeserve.operator.status import ApplyFailure, Reason

# An apply the API server refused (RBAC, an admission policy) is retried slowly: a human has to act first.
REJECTED_RETRY_SECONDS = 60.0
MAX_BACKOFF_SECONDS = 60.0
JITTER = 0.2

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ApplyMemory:
    """What applying remembers of one InferenceService between runs (kept small: there are thousands)."""

    full: bool = False  # apply the children at the next run, not only the replicas and the route
    not_before: float = 0.0  # loop time: no apply before (a retry's back-off)
    applied_generation: int | None = None  # applied in full, or judged invalid
    failure: ApplyFailure | None = None
    announced: str | None = None  # the apply error last posted as an Event
    written: dict[str, Any] | None = None  # the status as last written, until the watch shows it
    throttled: bool = False  # the API server asked the last apply to wait (429 Retry-After): no more requests now
    status_failures: int = 0  # status patches failed in a row (their back-off)
    route: dict[str, Any] | None = None  # the HTTPRoute as last applied (Gateway API routing), until it drifts
    # Children applied by an apply that then failed: its retry skips them (a throttled API server is not asked
    # twice for the same object); forgotten when the spec changes or a child drifts.
    applied: set[tuple[str, str]] = field(default_factory=set)

    def apply_in_full(self, *, now: bool = False) -> None:
        """The spec changed (``now``: without waiting out a back-off) or a child drifted: apply every child."""
        self.full = True
        self.applied.clear()
        if now:
            self.not_before = 0.0

    def route_drifted(self) -> None:
        """Someone changed or deleted the HTTPRoute: apply it at the next run."""
        self.route = None

    def current_status(self, indexed: Mapping[str, Any]) -> dict[str, Any]:
        """The status as last written: the indexed one, unless the watch has yet to show the last write."""
        if self.written is not None:
            if all(indexed.get(name) == value for name, value in self.written.items()):
                self.written = None  # caught up
            else:
                return self.written
        return dict(indexed)


async def apply_children(
    cluster: Cluster,
    manifests: Iterable[Mapping[str, Any]],
    absent: Iterable[ObjectRef],
    *,
    applied: set[tuple[str, str]],
) -> list[tuple[str, str]]:
    """Level-triggered: delete what must not exist, apply everything wanted; safe to repeat. The (kind, name) of
    each manifest sent.

    ``applied``: (kind, name) of those already applied by an earlier try that failed part way: skipped, and each
    applied now is added, so that a retry resumes where the failure was.
    """
    # What must go goes first: an admission webhook may refuse the new (KEDA's refuses a ScaledObject for a target an
    # HPA still scales).
    for ref in absent:
        await cluster.delete(ref)
    sent = []
    for manifest in manifests:
        done = (manifest["kind"], manifest["metadata"]["name"])
        if done in applied:
            continue
        await cluster.apply(manifest)
        sent.append(done)
        applied.add(done)
    return sent


class Applier:
    """Carries out plans through ``cluster``; one per operator."""

    def __init__(self, cluster: Cluster, metrics: OperatorMetrics) -> None:
        self._cluster, self._metrics = cluster, metrics

    async def apply(self, plan: Plan, memory: ApplyMemory) -> float | None:
        """Apply ``plan`` and write its status; the seconds until the InferenceService is to be looked at again
        (a retry, or something the rollout has due), or None."""
        retry_in = await self._apply_objects(plan, memory)
        self._count(plan, memory)
        if memory.throttled:
            return retry_in  # the status (ApplyFailed) is written with the retry
        try:
            await self._write_status(plan, memory)
            memory.status_failures = 0
        except ClusterError as error:
            where = "{namespace}/{name}".format(**plan.owner["metadata"])
            log.warning(str(error), extra={"event": "status_failed", "inferenceservice": where})
            if error.retryable:  # otherwise (the object went: 404) there is nothing left to write to
                memory.status_failures += 1
                delay = _jittered(_delay(error, memory.status_failures - 1))
                retry_in = min(retry_in if retry_in is not None else MAX_BACKOFF_SECONDS, delay)
        if plan.requeue_after is not None:
            retry_in = min(retry_in if retry_in is not None else math.inf, plan.requeue_after)
        return retry_in

    def _count(self, plan: Plan, memory: ApplyMemory) -> None:
        decision = plan.decision
        result = "invalid" if decision is None else "failed" if memory.failure is not None else "ok"
        self._metrics.reconciles.labels(result).inc()
        if decision is not None:
            metadata = plan.owner["metadata"]
            key = (metadata["namespace"], metadata["name"])
            self._metrics.rollout(key, decision.rollout.get("phase", ""), decision.revisions, decision.replicas)

    async def _apply_objects(self, plan: Plan, memory: ApplyMemory) -> float | None:
        """Unless backing off: the children (in full when asked), replicas, pruning, route and starting point. The
        seconds until the next try after a failure."""
        loop = asyncio.get_running_loop()
        if memory.not_before > loop.time():
            return memory.not_before - loop.time()
        full, memory.full = memory.full, False
        previous = memory.failure
        memory.throttled = False
        if full:
            memory.failure = None
        if plan.decision is not None:
            try:
                await self._converge(plan, memory, full=full)
            except ClusterError as error:
                return self._failed(plan, memory, error, previous)
        if plan.route is None:
            memory.route = None
        if full:
            memory.applied_generation = plan.owner["metadata"].get("generation")
            memory.announced = None
        return None

    async def _converge(self, plan: Plan, memory: ApplyMemory, *, full: bool) -> None:
        sent: list[tuple[str, str]] = []
        if full:
            sent = await apply_children(self._cluster, plan.children, plan.absent, applied=memory.applied)
            memory.applied.clear()
        namespace = plan.owner["metadata"]["namespace"]
        for scale in plan.scales:
            if ("Deployment", scale.deployment) not in sent:  # just applied with its replicas
                await self._cluster.scale_deployment(namespace, scale.deployment, scale.replicas)
        for ref in plan.prune:
            await self._cluster.delete(ref)
        if plan.route is not None and (full or plan.route != memory.route):
            for service in plan.route_services:
                await self._cluster.apply(service)
            if plan.grpc_route is not None:  # the same weights: it changes when the HTTPRoute does
                await self._cluster.apply(plan.grpc_route)
            await self._cluster.apply(plan.route)
            memory.route = plan.route
        if full and plan.starting_replicas is not None:
            metadata = plan.owner["metadata"]
            await self._cluster.scale(metadata["namespace"], metadata["name"], plan.starting_replicas)

    def _failed(self, plan: Plan, memory: ApplyMemory, error: ClusterError, previous: ApplyFailure | None) -> float:
        kind = "throttled" if error.retry_after is not None else "retryable" if error.retryable else "refused"
        self._metrics.apply_errors.labels(kind).inc()
        # Counted whatever triggered the apply: the status shows one count of failures in a row.
        attempt = previous.attempt + 1 if previous else 1
        delay = _delay(error, attempt - 1)
        memory.failure = ApplyFailure(str(error), attempt=attempt, retry_in=delay)
        # Spread: InferenceServices failing together (a throttled burst) must not all come back together.
        wait = _jittered(delay)
        memory.full, memory.not_before = True, asyncio.get_running_loop().time() + wait
        memory.throttled = error.retry_after is not None
        where = "{namespace}/{name}".format(**plan.owner["metadata"])
        log.warning(memory.failure.message, extra={"event": "apply_failed", "inferenceservice": where})
        # An Event once per distinct error; a retryable one only once it survived a retry (409s are routine), and
        # none for throttling, which is the API server's to manage, not a user's.
        announce = (attempt > 1 or not error.retryable) and not memory.throttled
        if announce and memory.announced != memory.failure.error:
            kopf.warn(plan.owner, reason=Reason.APPLY_FAILED, message=memory.failure.error)
            memory.announced = memory.failure.error
        return wait

    async def _write_status(self, plan: Plan, memory: ApplyMemory) -> None:
        """Patch only what changed from the status as last written, and post an Event for each new problem a user
        has to act on and each step of a rollout."""
        current = plan.observed.status
        fields = plan.status(memory.failure, memory.applied_generation, datetime.now(UTC))
        patch = status.changes(current, fields)
        if not patch:
            return
        metadata = plan.owner["metadata"]
        await self._cluster.patch_status(metadata["namespace"], metadata["name"], patch)
        memory.written = merge_patch(current, patch)  # as the API server now holds it
        for reason, message in status.news(current, fields):
            kopf.warn(plan.owner, reason=reason, message=message)
        for event in plan.events:
            kopf.event(plan.owner, type=event.type, reason=event.reason, message=event.message)


def backoff(retry: int) -> float:
    return min(2.0**retry, MAX_BACKOFF_SECONDS)


def _jittered(delay: float) -> float:
    """Up to a fifth more: retries of many InferenceServices spread out instead of arriving in a wave."""
    return delay * (1 + JITTER * random.random())


def _delay(error: ClusterError, retry: int) -> float:
    """Back off exponentially, never sooner than the API server's Retry-After."""
    delay = backoff(retry) if error.retryable else REJECTED_RETRY_SECONDS
    return max(delay, error.retry_after or 0.0)
