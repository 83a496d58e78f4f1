"""The server's life as Kubernetes sees it: a drain on SIGTERM that loses nothing accepted, and a model
that cannot load reported (logs, /ready, termination message) before a non-zero exit."""

from __future__ import annotations

import http.client
import json
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from kubeserve.runtime.cli import EXIT_BAD_CONFIG
from kubeserve.runtime.server.lifecycle import EXIT_MODEL_LOAD_FAILED
from prometheus_client.parser import text_string_to_metric_families

GOOD = json.dumps({"inputs": [{"name": "features", "shape": [1, 32], "datatype": "FP32", "data": [0.5] * 32}]})


def _gauge(url: str, name: str) -> float:
    for family in text_string_to_metric_families(requests.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not exported")


def _until(predicate, attempts: int = 5000) -> None:
    """Ask again (each ask is a round trip to the server) until the condition holds."""
    for _ in range(attempts):
        if predicate():
            return
    raise AssertionError("condition never held")


def _start_slow_request(port: int, body: bytes, sent: int) -> http.client.HTTPConnection:
    """A request whose body never arrives whole, on a connection the server has surely accepted: one request
    was answered on it first."""
    connection = http.client.HTTPConnection("127.0.0.1", port)
    connection.request("POST", "/v2/models/mlp/infer", body=body)
    assert connection.getresponse().read()
    head = (
        f"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    assert connection.sock is not None
    connection.sock.sendall(head + body[:sent])
    return connection


def test_sigterm_with_a_full_queue_answers_every_queued_request(start_runtime):
    # Requests wait for a batch that would take a minute to fill; SIGTERM sends it at once.
    server = start_runtime("mlp", "--max-batch-size", "64", "--max-queue-delay-microseconds", "60000000")
    server.wait_ready()
    url = server.url
    count = 20
    with ThreadPoolExecutor(count) as pool:
        calls = [pool.submit(requests.post, f"{url}/v2/models/mlp/infer", data=GOOD) for _ in range(count)]
        _until(lambda: _gauge(url, "kubeserve_queue_depth") == count)
        server.signal(signal.SIGTERM)
        responses = [call.result(timeout=60) for call in calls]
    assert [r.status_code for r in responses] == [200] * count
    assert all(r.headers["Connection"] == "close" for r in responses)
    assert server.wait() == 0


def test_a_drain_that_times_out_still_exits(start_runtime):
    server = start_runtime("mlp", "--drain-timeout-seconds", "0.2").wait_ready()
    body = GOOD.encode()
    stuck = _start_slow_request(server.port, body, sent=5)  # never sends the rest
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert server.wait_for_event("drain_timeout")["connections"] == 1
    assert server.wait_for_event("stopped")["connections_closed_with_request_unread"] == 1
    stuck.close()


def test_a_model_that_cannot_load_says_why_then_exits_3(start_runtime, tmp_path):
    message = tmp_path / "termination-log"
    message.write_text("")
    server = start_runtime("broken", "--load-failure-exit-seconds", "600", "--termination-message-path", str(message))
    failure = server.wait_for_event("model_load_failed")
    assert "onnxruntime cannot load" in failure["reason"]
    ready = requests.get(f"{server.url}/v2/health/ready")
    assert ready.status_code == 503
    assert ready.json()["reason"].startswith("model failed to load: onnxruntime cannot load")
    model_ready = requests.get(f"{server.url}/v2/models/broken/ready").json()
    assert model_ready["ready"] is False
    assert "failed to load" in model_ready["reason"]
    assert requests.get(f"{server.url}/v2/health/live").status_code == 200
    assert message.read_text().startswith("model failed to load: onnxruntime cannot load")
    server.signal(signal.SIGTERM)
    assert server.wait() == EXIT_MODEL_LOAD_FAILED


def test_a_missing_model_file_exits_3_by_itself(start_runtime, tmp_path):
    server = start_runtime(
        None, "--model-path", str(tmp_path / "absent.onnx"), "--model-name", "absent",
        "--load-failure-exit-seconds", "0",
    )  # fmt: skip
    assert server.wait() == EXIT_MODEL_LOAD_FAILED
    assert "does not exist" in server.wait_for_event("model_load_failed")["reason"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model-name", "m"], "model_path (--model-path or KUBESERVE_MODEL_PATH): Field required"),
        (["--model-path", "m.onnx", "--model-name", "m", "--max-batch-size", "-1"], "--max-batch-size: Input"),
        (["--model-path", "m.onnx", "--model-name", "m", "--port", "http"], "--port: Input should be a valid integer"),
        (["--model-path", "m.onnx", "--model-name", "bad name"], "--model-name: String should match pattern"),
        (["--model-path", "m.onnx", "--model-name", "m", "--max-batch-size", "4", "--preferred-batch-size", "8"],
         "preferred_batch_size 8 must be between 1 and max_batch_size (4)"),
        (["--model-path", "m.onnx", "--model-name", "m", "--device", "tpu"], "argument --device: invalid choice"),
    ],
)  # fmt: skip
def test_invalid_settings_exit_2_with_a_clear_message(start_runtime, flags, message):
    server = start_runtime(None, *flags)
    assert server.wait() == EXIT_BAD_CONFIG
    output = "".join(server.lines)
    assert message in output
    assert "Traceback" not in output


def test_a_bad_config_file_exits_2(start_runtime, tmp_path):
    config = tmp_path / "runtime.yaml"
    config.write_text("model_path: m.onnx\nmodel_name: m\nmax_batch: 8\n")
    server = start_runtime(None, "--config", str(config))
    assert server.wait() == EXIT_BAD_CONFIG
    assert "unknown settings: max_batch" in "".join(server.lines)


def test_settings_come_from_file_env_and_flags_in_that_order(start_runtime, tmp_path, models):
    config = tmp_path / "runtime.yaml"
    config.write_text(
        f"model_path: {models['mlp']}\nmodel_name: mlp\nmax_batch_size: 4\nmax_queue_size: 7\nmodel_version: '3'\n"
    )
    server = start_runtime(
        None, "--config", str(config), "--max-queue-size", "9",
        env={"KUBESERVE_MAX_BATCH_SIZE": "6", "KUBESERVE_MAX_QUEUE_SIZE": "8"},
    ).wait_ready()  # fmt: skip
    config_seen = requests.get(f"{server.url}/v2/models/mlp/versions/3/config").json()
    assert config_seen["max_batch_size"] == 6  # env over file
    assert config_seen["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 9  # flag over env


def test_structured_logs_are_one_json_object_per_line(start_runtime):
    server = start_runtime("mlp").wait_ready()
    requests.post(f"{server.url}/v2/models/mlp/infer", data=GOOD)
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert server.lines
    for line in server.lines:
        event = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(event)
    ready = server.wait_for_event("model_ready")
    assert ready["providers"] == ["CPUExecutionProvider"]
    # No access log line per request unless asked for.
    assert not any(event.get("logger") == "kubeserve.access" for event in server.events)


def test_sigterm_under_load_answers_every_request_the_server_accepted(start_runtime):
    """Closed-loop clients (a new connection per request) keep sending through SIGTERM. Every request the
    server accepted is answered 200: the server's own count of accepted requests equals the answers the
    clients got. (A request still in the kernel's accept backlog when the listener closes is reset without
    being read; in Kubernetes the preStop pause and the readiness flip keep traffic away by then.)"""
    server = start_runtime("mlp").wait_ready()
    url = f"{server.url}/v2/models/mlp/infer"
    answered: list[int] = []
    started = threading.Event()

    def client() -> None:
        for _ in range(300):
            try:
                response = requests.post(url, data=GOOD, headers={"Connection": "close"}, timeout=30)
            except requests.ConnectionError:
                return  # refused or reset: the server stopped, and never read this request
            answered.append(response.status_code)
            if len(answered) >= 100:
                started.set()

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    assert started.wait(30)
    server.signal(signal.SIGTERM)
    for thread in threads:
        thread.join(60)
    assert server.wait() == 0
    stopped = server.wait_for_event("stopped")
    assert stopped["unanswered"] == 0
    assert set(answered) == {200}
    assert stopped["accepted"] == len(answered)
