"""``workers``: several server processes behind one port, seen from outside as one pod (one readiness, one
/metrics, one set of statistics, one drain, one exit code)."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from kubeserve.runtime.config import RuntimeSettings
from kubeserve.runtime.cpus import available_cpus
from kubeserve.runtime.metrics import ServerMetrics
from kubeserve.runtime.server.peers import answer_peers
from kubeserve.runtime.server.state import LoadedModel, ServerState
from kubeserve.runtime.statistics import ModelStatistics, merge_model_stats
from kubeserve.runtime.workers import WorkerContext, WorkerState, worker_settings
from prometheus_client.parser import text_string_to_metric_families

WORKERS = 2
CLIENTS = 16  # connections: the kernel hashes each to a worker, so all 16 on one has odds of 2 in 65,536
REQUESTS_PER_CLIENT = 8
FEATURES = {"inputs": [{"name": "features", "shape": [1, 32], "datatype": "FP32", "data": [0.25] * 32}]}


# -- the pure parts ----------------------------------------------------------------------------------------


def _settings(**values: object) -> RuntimeSettings:
    return RuntimeSettings.model_validate({"model_path": "m.onnx", "model_name": "m", **values})


def test_each_worker_gets_an_equal_share_of_the_cpus_for_onnx_runtime_unless_threads_are_set():
    assert worker_settings(_settings(workers=4), cpus=8, port=8080).intra_op_num_threads == 2
    assert worker_settings(_settings(workers=4), cpus=2, port=8080).intra_op_num_threads == 1
    assert worker_settings(_settings(workers=2, intra_op_num_threads=3), cpus=8, port=0).intra_op_num_threads == 3
    assert worker_settings(_settings(workers=2, port=0), cpus=8, port=41234).port == 41234


async def test_a_worker_is_ready_only_when_every_worker_is(tmp_path: Path):
    states = [WorkerState.LOADING, WorkerState.LOADING, WorkerState.LOADING]
    state = ServerState(
        _settings(workers=3), ServerMetrics("m", "1"), worker=WorkerContext(0, 3, tmp_path, states, [0.0] * 3)
    )
    state.loaded = LoadedModel(model=None, batcher=None)  # type: ignore[arg-type]  # readiness only
    state.publish()
    assert states[0] == WorkerState.READY
    assert not state.ready
    assert state.not_ready_reason == "worker 1 of 3 is loading the model"
    states[1] = WorkerState.READY
    states[2] = WorkerState.FAILED
    assert state.not_ready_reason == "worker 2 of 3 failed to load the model"
    states[2] = WorkerState.READY
    assert state.ready
    state.draining = True
    state.publish()
    assert (states[0], state.ready) == (WorkerState.DRAINING, False)


async def test_a_worker_loads_its_client_for_the_others_statistics_when_it_starts(tmp_path: Path, monkeypatch):
    """Not at the first scrape: the import would block the event loop while it serves requests."""
    state = ServerState(
        _settings(workers=2), ServerMetrics("m", "1"), worker=WorkerContext(0, 2, tmp_path, [0, 0], [0.0] * 2)
    )
    monkeypatch.delitem(sys.modules, "aiohttp")  # put back as it was after the test
    server = await answer_peers(state)
    try:
        assert "aiohttp" in sys.modules
    finally:
        server.close()


def test_statistics_of_several_workers_sum_as_one_models():
    first, second = ModelStatistics(), ModelStatistics()
    first.request_succeeded(rows=2, total=0.004, queue=0.001, compute_input=0.0, compute_infer=0.002, compute_output=0)
    first.batch_computed(rows=2, compute_input=0.0, compute_infer=0.002, compute_output=0.0)
    second.request_succeeded(rows=1, total=0.003, queue=0.001, compute_input=0.0, compute_infer=0.001, compute_output=0)
    second.batch_computed(rows=1, compute_input=0.0, compute_infer=0.001, compute_output=0.0)
    second.request_failed(total=0.001)
    merged = merge_model_stats([first.as_json("m", "1"), second.as_json("m", "1")])
    assert (merged["inference_count"], merged["execution_count"]) == (3, 2)
    assert merged["inference_stats"]["success"] == {"count": 2, "ns": 7_000_000}
    assert merged["inference_stats"]["fail"]["count"] == 1
    assert [batch["batch_size"] for batch in merged["batch_stats"]] == [1, 2]
    assert merged["last_inference"] == max(first.last_inference_ms, second.last_inference_ms)


# -- real processes ---------------------------------------------------------------------------------------


async def _load(url: str) -> list[int]:
    """CLIENTS keep-alive connections, each sending REQUESTS_PER_CLIENT requests: the statuses seen."""
    statuses: list[int] = []

    async def client() -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            for _ in range(REQUESTS_PER_CLIENT):
                async with session.post(f"{url}/v2/models/mlp/infer", json=FEATURES) as response:
                    await response.read()
                    statuses.append(response.status)

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return statuses


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


def _sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()):
                return sample.value
    raise AssertionError(f"no {name} {labels} in /metrics")


def test_workers_share_the_port_and_report_as_one_pod(start_runtime):
    server = start_runtime("mlp", "--workers", str(WORKERS)).wait_ready(WORKERS)
    started = server.wait_for_event("workers_started")
    assert started["workers"] == WORKERS and len(started["pids"]) == WORKERS

    statuses = asyncio.run(_load(server.url))
    sent = CLIENTS * REQUESTS_PER_CLIENT
    assert statuses == [200] * sent

    # Whichever worker answers, it speaks for the pod: every scrape and every stats call sees all requests.
    for _ in range(4):
        status, ready = asyncio.run(_get(f"{server.url}/v2/health/ready"))
        assert (status, ready) == (200, '{"ready":true}')
        status, text = asyncio.run(_get(f"{server.url}/metrics"))
        assert status == 200
        assert _sample(text, "kubeserve_requests_total", code="200") == sent
        assert _sample(text, "kubeserve_request_duration_seconds_count", stage="total") == sent
        assert _sample(text, "kubeserve_model_ready") == 1
        assert _sample(text, "kubeserve_requests_in_flight") == 0
        status, stats = asyncio.run(_get(f"{server.url}/v2/models/mlp/stats"))
        assert status == 200
        assert f'"inference_count":{sent},' in stats

    status, config = asyncio.run(_get(f"{server.url}/v2/models/mlp/config"))
    assert '"count":2' in config  # one instance in each worker: two batches compute at once in the pod

    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    stopped = [event for event in server.events if event.get("event") == "stopped" and event["worker"] != "supervisor"]
    assert sorted(event["worker"] for event in stopped) == list(range(WORKERS))
    # The kernel spread the connections: every worker answered some of them, and together all of them.
    assert all(event["answered"] > 0 for event in stopped)
    assert sum(event["answered"] for event in stopped) == sent


def test_a_model_that_fails_to_load_stops_every_worker_with_exit_3(start_runtime, tmp_path: Path):
    message = tmp_path / "termination-log"
    message.touch()
    server = start_runtime(
        "broken",
        "--workers",
        str(WORKERS),
        "--load-failure-exit-seconds",
        "0",
        "--termination-message-path",
        str(message),
    )
    assert server.wait() == 3
    assert message.read_text().startswith("model failed to load: onnxruntime cannot load")


def _wait_gone(pid: int, timeout: float = 30) -> bool:
    """Whether process ``pid`` (not our child) has exited within ``timeout``: its pidfd turns readable."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def test_workers_above_one_on_a_gpu_are_refused_before_anything_starts():
    for device in ("cuda", "tensorrt"):
        with pytest.raises(ValueError, match="workers above 1 on a GPU are not built yet"):
            _settings(workers=2, device=device)
    assert _settings(workers=1, device="cuda").workers == 1


def test_a_worker_whose_event_loop_stops_is_killed_and_takes_the_pod_down(start_runtime):
    # Real time: the heartbeat's timer and the supervisor's watch, with a short stall allowance (beats come every
    # second: 3 s leaves a running worker's beat two seconds late before it is taken for stalled).
    server = start_runtime("mlp", "--workers", str(WORKERS), "--worker-stall-seconds", "3").wait_ready(WORKERS)
    stalled, survivor = server.wait_for_event("workers_started")["pids"]
    os.kill(stalled, signal.SIGSTOP)  # a loop that never runs again, as a deadlock would leave it
    assert server.wait() == 128 + signal.SIGKILL
    assert server.wait_for_event("worker_stalled")["pid"] == stalled
    assert _wait_gone(survivor)


def test_a_worker_killed_takes_the_pod_down_so_that_kubernetes_restarts_it(start_runtime):
    server = start_runtime("mlp", "--workers", str(WORKERS)).wait_ready(WORKERS)
    victim, survivor = server.wait_for_event("workers_started")["pids"]
    os.kill(victim, signal.SIGKILL)  # as the OOM killer would
    assert server.wait() == 128 + signal.SIGKILL
    assert server.wait_for_event("worker_lost")["pid"] == victim
    assert _wait_gone(survivor)


def test_workers_do_not_outlive_a_killed_supervisor(start_runtime):
    server = start_runtime("mlp", "--workers", str(WORKERS)).wait_ready(WORKERS)
    pids = server.wait_for_event("workers_started")["pids"]
    server.signal(signal.SIGKILL)
    server.wait()
    assert all(_wait_gone(pid) for pid in pids)


def test_a_port_in_use_stops_the_supervisor_with_exit_4(start_runtime):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = start_runtime("mlp", "--workers", str(WORKERS), "--port", str(port))
        assert server.wait() == 4
    assert server.wait_for_event("listen_failed")["port"] == port


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_before_the_workers_load_stops_them_cleanly(start_runtime, signum):
    server = start_runtime("mlp", "--workers", str(WORKERS))
    server.wait_for_event("workers_started")
    server.signal(signum)
    assert server.wait() == 0
    assert server.wait_for_event("stopping_workers")["signal"] == signal.Signals(signum).name


def test_one_server_gives_onnx_runtime_the_cpus_it_may_run_on():
    """Not ORT's own default, which counts the machine's cores and pins its threads to them, out of a taskset."""
    code = (
        "import os; from kubeserve.runtime.config import RuntimeSettings;"
        "from kubeserve.runtime.model import session_options;"
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))});"
        "print(session_options(RuntimeSettings(model_path='m.onnx', model_name='m')).intra_op_num_threads,"
        "      session_options(RuntimeSettings(model_path='m.onnx', model_name='m', intra_op_num_threads=3))"
        "      .intra_op_num_threads)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONSAFEPATH": "1"},
    )
    assert result.stdout.split() == ["1", "3"]


def test_the_cpus_a_worker_shares_are_capped_by_the_pods_cpu_limit(tmp_path: Path):
    cpu_max = tmp_path / "cpu.max"
    affinity = len(os.sched_getaffinity(0))
    cpu_max.write_text("max 100000\n")  # no limit
    assert available_cpus(cpu_max) == affinity
    cpu_max.write_text("50000 100000\n")  # half a core: still one
    assert available_cpus(cpu_max) == 1
    assert available_cpus(tmp_path / "absent") == affinity  # cgroup v1, or not Linux
    cpu_max.write_text(f"{(affinity + 8) * 100000} 100000\n")  # a limit above the node's cores changes nothing
    assert available_cpus(cpu_max) == affinity
