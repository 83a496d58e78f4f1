"""The operator's own metrics: what a rollout is at, per InferenceService and revision, and nothing left of one that
is gone (the server side is checked with the real operator process in test_cli)."""

from __future__ import annotations

import asyncio

import pytest
from kubeserve.operator.metrics import OperatorMetrics
from kubeserve.operator.workqueue import WorkQueue
from prometheus_client.parser import text_string_to_metric_families

KEY = ("ml", "mlp")


def samples(metrics: OperatorMetrics, name: str) -> dict[tuple[str, ...], float]:
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    order = ("namespace", "inferenceservice", "revision", "phase", "state")
    return {tuple(s.labels[k] for k in order if k in s.labels): s.value for s in families[name].samples}


def test_a_rollout_shows_its_phase_weights_and_replicas_and_a_pruned_revision_goes():
    metrics = OperatorMetrics()
    canary = [
        {"name": "2-bbb", "weight": 25, "readyReplicas": 1},
        {"name": "1-aaa", "weight": 75, "readyReplicas": 3},
    ]
    metrics.rollout(KEY, "Progressing", canary, {"2-bbb": 1, "1-aaa": 3})
    assert samples(metrics, "kubeserve_operator_rollout_phase")[("ml", "mlp", "Progressing")] == 1
    assert samples(metrics, "kubeserve_operator_rollout_phase")[("ml", "mlp", "Succeeded")] == 0
    assert samples(metrics, "kubeserve_operator_canary_weight") == {
        ("ml", "mlp", "2-bbb"): 25,
        ("ml", "mlp", "1-aaa"): 75,
    }
    assert samples(metrics, "kubeserve_operator_revision_replicas")[("ml", "mlp", "1-aaa", "desired")] == 3

    metrics.rollout(KEY, "Succeeded", [{"name": "2-bbb", "weight": 100, "readyReplicas": 4}], {"2-bbb": 4})
    assert samples(metrics, "kubeserve_operator_canary_weight") == {("ml", "mlp", "2-bbb"): 100}

    metrics.forget(KEY)
    assert samples(metrics, "kubeserve_operator_canary_weight") == {}
    assert samples(metrics, "kubeserve_operator_rollout_phase") == {}


@pytest.mark.looptime
async def test_the_work_queue_reports_how_long_each_key_waited():
    waits: list[float] = []
    done: list[str] = []
    all_done = asyncio.Event()

    async def process(key: str) -> None:
        done.append(key)
        if len(done) == 3:
            all_done.set()

    queue: WorkQueue[str] = WorkQueue(process, workers=1, on_wait=waits.append)
    queue.add("a")
    queue.add("b")
    queue.add_after("c", 5)
    await asyncio.wait_for(all_done.wait(), timeout=60)
    await queue.stop()
    # "b" waited for "a" to be done; "c" was added 5 s later and taken at once.
    assert done == ["a", "b", "c"] and len(waits) == 3 and all(wait >= 0 for wait in waits)
