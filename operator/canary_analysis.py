"""Canary analysis, one interval at a time per InferenceService: read the canary's (and the stable revision's)
ready pods' ``/metrics``, wait ``intervalSeconds``, read them again, and judge the difference.

The rollout asks for it (``Decision.analyze``); the result waits here until the next reconciliation hands it to the
rollout, which counts each result once. Only InferenceServices that are rolling out have a timer, and only while
they are. Nothing here is kept across an operator restart: a new interval simply starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from kubeserve.operator.analysis import AnalysisResult, judge
from kubeserve.operator.canary_metrics import measure, scrape
from kubeserve.operator.spec import Analysis

Key = tuple[str, str]  # namespace, name
# The metrics URLs of a revision's ready pods, read when a scrape starts (pods come and go during an interval).
PodUrls = Callable[[str], list[str]]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Run:
    canary: str
    stable: str | None
    task: asyncio.Task[None]


class CanaryAnalysis:
    """Runs analysis intervals; ``on_result(key, result)`` is called when one has a result (from the event loop)."""

    def __init__(
        self, on_result: Callable[[Key, AnalysisResult], None], now: Callable[[], datetime] | None = None
    ) -> None:
        self._on_result = on_result
        self._now = now or (lambda: datetime.now(UTC))  # the clock the rollout reads too
        self._runs: dict[Key, _Run] = {}
        self._results: dict[Key, AnalysisResult] = {}
        self._session: aiohttp.ClientSession | None = None

    def want(self, key: Key, analysis: Analysis, canary: str, stable: str | None, pod_urls: PodUrls) -> None:
        """Keep an interval of ``canary`` running (against ``stable``): start one unless one already runs."""
        run = self._runs.get(key)
        if run is not None and not run.task.done() and (run.canary, run.stable) == (canary, stable):
            return
        self.stop(key)
        task = asyncio.create_task(self._interval(key, analysis, canary, stable, pod_urls), name=f"analysis {key}")
        self._runs[key] = _Run(canary, stable, task)

    def result(self, key: Key) -> AnalysisResult | None:
        """The latest judged interval (the rollout ignores one it has counted already)."""
        return self._results.get(key)

    def stop(self, key: Key) -> None:
        """No analysis wanted any more (the rollout moved on, or the InferenceService went)."""
        run = self._runs.pop(key, None)
        if run is not None:
            run.task.cancel()

    def forget(self, key: Key) -> None:
        self.stop(key)
        self._results.pop(key, None)

    async def close(self) -> None:
        runs = list(self._runs.values())
        self._runs.clear()
        for run in runs:
            run.task.cancel()
        for run in runs:
            with contextlib.suppress(asyncio.CancelledError):
                await run.task
        if self._session is not None:
            await self._session.close()

    async def _interval(self, key: Key, analysis: Analysis, canary: str, stable: str | None, pod_urls: PodUrls) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        session = self._session
        started = self._now()
        canary_start = await scrape(pod_urls(canary), session=session)
        stable_start = await scrape(pod_urls(stable), session=session) if stable else None
        await asyncio.sleep(analysis.interval_seconds)
        canary_end = await scrape(pod_urls(canary), session=session)
        stable_end = await scrape(pod_urls(stable), session=session) if stable else None
        ended = self._now()
        both = stable_start is not None and stable_end is not None
        stable_measurement = measure(stable_start, stable_end) if both else None
        result = judge(
            analysis,
            measure(canary_start, canary_end),
            stable_measurement,
            revision=canary,
            started=started,
            ended=ended,
        )
        self._results[key] = result
        log.info(
            f"analysis of revision {canary}: {result.verdict}: {result.message}",
            extra={"event": "canary_analysis", "inferenceservice": "/".join(key), "verdict": str(result.verdict)},
        )
        self._on_result(key, result)
