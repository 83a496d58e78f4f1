"""The loop between ``plan`` and ``apply``: InferenceServices' keys in one work queue, driven by watch events only.

- An InferenceService created, changed or found at start: apply its children in full.
- One of its children changed or deleted by someone else (drift): apply its children in full again.
- Its Deployments, pods or HPA changed: plan again (the rollout may move on, the status may change).

Each run observes (the indexes kopf keeps live, the status as last written, the canary's latest analysis, the
time), plans (``plan.plan``, pure), applies (``apply.Applier``), keeps the canary's analysis running while the plan
wants one, and comes back when the apply or the rollout asks to.

Per key, the queue collapses bursts into one run and never runs two at once, so one InferenceService's status has
one writer; its workers bound the API requests in flight. Nothing runs on a timer but the retries of failures and
the steps and analyses of rollouts in progress.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from kubeserve.operator import drift, naming
from kubeserve.operator.analysis import AnalysisResult
from kubeserve.operator.apply import Applier, ApplyMemory
from kubeserve.operator.canary_analysis import CanaryAnalysis
from kubeserve.operator.canary_metrics import metrics_url
from kubeserve.operator.cluster import Cluster
from kubeserve.operator.metrics import OperatorMetrics
from kubeserve.operator.plan import Observed, Plan, RenderCache, plan
from kubeserve.operator.pod_diagnosis import is_ready
from kubeserve.operator.settings import OperatorSettings
from kubeserve.operator.workqueue import WorkQueue

Key = tuple[str, str]  # namespace, name

# Requests in flight at most (one per worker): enough to create a thousand InferenceServices' children in
# seconds, few enough that the API server's fairness queues see one modest client.
WORKERS = 16


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
        self._owners, self._deployments, self._pods = owners, deployments, pods
        self._autoscalers = autoscalers
        self._render = RenderCache(settings)
        self._memory: dict[Key, ApplyMemory] = {}
        # (kind, namespace, name) of each child that exists, as its watch events show it, and the InferenceService its
        # label names: only an object of the InferenceService's own is ever deleted.
        self._present: dict[tuple[str, str, str], str] = {}
        # The (kind, name) of the children each InferenceService's label was last seen on.
        self._children: dict[Key, set[tuple[str, str]]] = {}
        self.metrics = metrics or OperatorMetrics()
        self._applier = Applier(cluster, self.metrics)
        self._queue: WorkQueue[Key] = WorkQueue(
            self._process, workers=workers, on_wait=self.metrics.workqueue_delay.observe
        )
        # Rollouts read the time from the event loop's monotonic clock, anchored to the wall clock once: a wall
        # clock that jumps cannot shorten a pause, and a test's fake loop clock drives them too. So do analyses.
        self._epoch = (datetime.now(UTC), asyncio.get_running_loop().time())
        self._analysis = CanaryAnalysis(on_result=self._analysed, now=self._now)

    async def stop(self) -> None:
        await self._queue.stop()
        await self._analysis.close()

    def spec_changed(self, key: Key) -> None:
        """The InferenceService was created, changed, or found at start: apply its children now."""
        self._memory.setdefault(key, ApplyMemory()).apply_in_full(now=True)
        self._queue.add(key)

    def forget(self, key: Key) -> None:
        """The InferenceService is gone."""
        self._memory.pop(key, None)
        self._children.pop(key, None)
        self._queue.cancel(key)
        self._analysis.forget(key)
        self.metrics.forget(key)

    def child_changed(self, key: Key, event_type: str | None, kind: str, child: Mapping[str, Any]) -> None:
        """A child (any kind ``handlers.CHILDREN`` watches) was added, changed or deleted: repair it if it drifted."""
        name = (child.get("metadata") or {}).get("name", "")
        ref = (kind, key[0], name)
        if event_type == drift.DELETED:
            self._present.pop(ref, None)
        else:
            self._present[ref] = key[1]
            self._children.setdefault(key, set()).add((kind, name))
        owner = self._owner(key)
        if owner is None or owner["metadata"].get("deletionTimestamp"):
            return  # the garbage collector takes the children of an InferenceService that is gone or going
        memory = self._memory.setdefault(key, ApplyMemory())
        repair = drift.repair(event_type, kind, child, self._render(owner).children, memory.route)
        if repair is drift.Repair.ROUTE:
            memory.route_drifted()
            self._queue.add(key)
        elif repair is drift.Repair.CHILDREN:
            memory.apply_in_full()
            self._queue.add(key)

    def runtime_changed(self, key: Key) -> None:
        """A runtime Deployment, pod or HPA changed: plan again."""
        if key in self._owners:
            self._queue.add(key)

    def _analysed(self, key: Key, result: AnalysisResult) -> None:
        """An analysis interval has a result: counted, and handed to the rollout at the next run."""
        self.metrics.analyses.labels(*key, str(result.verdict)).inc()
        self.runtime_changed(key)

    async def _process(self, key: Key) -> float | None:
        owner = self._owner(key)
        if owner is None or owner["metadata"].get("deletionTimestamp"):
            self.forget(key)
            return None
        memory = self._memory.setdefault(key, ApplyMemory())
        observed = Observed(
            deployments=list(self._deployments.get(key, ())),
            pods=list(self._pods.get(key, ())),
            autoscalers=list(self._autoscalers.get(key, ())),
            status=memory.current_status(owner.get("status") or {}),
            present=self._present_children(key),
        )
        planned = plan(owner, observed, self._analysis.result(key), self._now(), renderer=self._render)
        retry_in = await self._applier.apply(planned, memory)
        if not memory.throttled:  # else its status waits: an analysis started now could replace a result not written
            self._follow_analysis(key, planned)
        return retry_in

    def _present_children(self, key: Key) -> frozenset[tuple[str, str]]:
        """(kind, name) of the children that exist and are this InferenceService's (as their label says now)."""
        seen = self._children.get(key, set())
        # Forgotten here: deleted since, or labelled for another InferenceService.
        seen -= {(kind, name) for kind, name in seen if self._present.get((kind, key[0], name)) != key[1]}
        return frozenset(seen)

    def _follow_analysis(self, key: Key, planned: Plan) -> None:
        """Keep the canary's analysis running while the plan asks for one, and only then."""
        wanted = planned.analysis
        if wanted is None:
            self._analysis.stop(key)
            return
        self._analysis.want(
            key, wanted.analysis, wanted.canary, wanted.stable, lambda revision: self._urls(key, revision)
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

    def _owner(self, key: Key) -> dict[str, Any] | None:
        return next(iter(self._owners.get(key, ())), None)

    def _now(self) -> datetime:
        wall, monotonic = self._epoch
        return wall + timedelta(seconds=asyncio.get_running_loop().time() - monotonic)
