"""The canary analysis' interval on a real event loop in real time: its timer is armed, it reads real HTTP
``/metrics`` endpoints (the runtime's own metrics classes) at both ends, judges, and hands the result back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from kubeserve.operator.analysis import Verdict
from kubeserve.operator.canary_analysis import CanaryAnalysis
from kubeserve.operator.spec import Analysis, Threshold
from kubeserve.runtime.metrics import ServerMetrics
from prometheus_client import generate_latest

KEY = ("ml", "mlp")


async def pod(answers: Callable[[ServerMetrics], None]) -> AsyncIterator[str]:
    """A pod's /metrics on 127.0.0.1, whose traffic (``answers``) happens between two scrapes."""
    metrics = ServerMetrics("mlp", "1")

    async def scrape(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        answers(metrics)  # counted by the next scrape
        return web.Response(body=body, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        await runner.cleanup()


def traffic(ok: int, failed: int) -> Callable[[ServerMetrics], None]:
    def answer(metrics: ServerMetrics) -> None:
        for status in [200] * ok + [500] * failed:
            metrics.answered(status)
            metrics.stage["total"].observe(0.004)
            metrics.queue_delay.observe(0.001)

    return answer


@pytest.fixture
async def pods() -> AsyncIterator[dict[str, str]]:
    canary, stable = pod(traffic(ok=10, failed=10)), pod(traffic(ok=20, failed=0))
    urls = {"canary": await anext(canary), "stable": await anext(stable)}
    yield urls
    for server in (canary, stable):
        await server.aclose()


async def test_an_interval_reads_both_revisions_judges_and_reports(pods):
    reported = asyncio.Event()
    analysis = CanaryAnalysis(on_result=lambda key, result: reported.set())
    # The shortest interval the CRD allows.
    policy = Analysis(interval_seconds=5, min_requests=5, error_ratio=Threshold(max=0.1))
    try:
        analysis.want(KEY, policy, "canary", "stable", lambda revision: [pods[revision]])
        await asyncio.wait_for(reported.wait(), timeout=30)
    finally:
        await analysis.close()

    result = analysis.result(KEY)
    assert result is not None and result.revision == "canary"
    assert result.verdict is Verdict.FAIL
    # The canary answered 10 of 20 with a 500 between the two reads; the stable revision none.
    assert result.measured["answers"] == 20 and result.measured["errorRatio"] == pytest.approx(0.5)
    assert "error ratio 0.5 > 0.1" in result.message
    assert result.ended > result.started


async def test_wanting_the_same_canary_again_does_not_restart_its_interval_and_stop_cancels_it(pods):
    reported = asyncio.Event()
    analysis = CanaryAnalysis(on_result=lambda key, result: reported.set())
    policy = Analysis(interval_seconds=3600, min_requests=5)
    try:
        analysis.want(KEY, policy, "canary", None, lambda revision: [pods[revision]])
        analysis.want(KEY, policy, "canary", None, lambda revision: [pods[revision]])
        analysis.stop(KEY)
    finally:
        await analysis.close()
    assert not reported.is_set() and analysis.result(KEY) is None
