"""The canary analysis's scraping client (``canary_metrics``): against real runtime servers, and its arithmetic.

The servers are ``kubeserve-runtime serve`` processes on 127.0.0.1 with a real ONNX model (the bundled ``tiny``),
two of them standing for the two pods of one revision.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from kubeserve.operator.canary_metrics import (
    Counters,
    Scrape,
    histogram_quantile,
    measure,
    metrics_url,
    parse,
    scrape,
)
from kubeserve.runtime.metrics import LATENCY_BUCKETS
from kubeserve.runtime.samples import write_sample

RUNTIME = str(Path(sys.executable).with_name("kubeserve-runtime"))
INF = math.inf


class Server:
    """One ``kubeserve-runtime serve`` process; its JSON log lines are read (and so drained) by a thread."""

    def __init__(self, model: Path, *flags: str) -> None:
        args = [
            RUNTIME,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--grpc-port",
            "0",
            "--model-path",
            str(model),
            "--model-name",
            "tiny",
            *flags,
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.events: dict[str, dict] = {}
        self.lines: list[str] = []
        self._seen = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._seen:
                self.lines.append(line)
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                self.events.setdefault(event.get("event"), event)
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def wait_for(self, name: str) -> dict:
        with self._seen:
            self._seen.wait_for(lambda: name in self.events or self.process.poll() is not None, 60)
            assert name in self.events, "".join(self.lines)
            return self.events[name]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.wait_for('listening')['port']}"

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    """Two runtime pods of one revision; the second refuses what its one-deep queue cannot hold."""
    model = write_sample("tiny", tmp_path_factory.mktemp("models") / "tiny.onnx")
    servers = [Server(model, "--model-version", "2"), Server(model, "--model-version", "2", "--max-queue-size", "1")]
    try:
        for server in servers:
            server.wait_for("model_ready")
        yield servers
    finally:
        for server in servers:
            server.stop()


def _body(rows: int) -> str:
    return json.dumps({"inputs": [{"name": "input", "shape": [rows, 4], "datatype": "FP32", "data": [0.5] * 4 * rows}]})


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_an_interval_measured_on_real_pods_counts_what_the_clients_saw(pods):
    urls = [f"{server.url}/metrics" for server in pods]
    gone = metrics_url("127.0.0.1", _closed_port())
    codes: dict[str, int] = {}
    async with aiohttp.ClientSession() as session:
        # Traffic before the interval is not the interval's.
        for server in pods:
            assert (await session.post(f"{server.url}/v2/models/tiny/infer", data=_body(1))).status == 200
        start = await scrape([*urls, gone], session=session, within=30)  # however busy the machine

        async def call(server: Server, body: str) -> None:
            async with session.post(f"{server.url}/v2/models/tiny/infer", data=body) as response:
                kind = f"{response.status // 100}xx"
                codes[kind] = codes.get(kind, 0) + 1

        # 200s, 400s, and a burst at the one-deep queue, which answers some 503s (how many depends on timing).
        await asyncio.gather(*(call(pods[0], _body(2)) for _ in range(20)))
        await asyncio.gather(*(call(pods[0], "{broken") for _ in range(3)))
        await asyncio.gather(*(call(pods[1], _body(32)) for _ in range(40)))
        end = await scrape([*urls, gone], session=session, within=30)

    assert start[gone].counters is None and "ClientConnectorError" in (start[gone].error or "")
    result = measure(start, end)
    answers = sum(codes.values())
    assert result.answers == answers == 63
    assert result.errors == codes.get("5xx", 0)
    assert result.error_ratio == pytest.approx(codes.get("5xx", 0) / answers)
    assert result.pods == 2
    assert result.unreachable == (f"{gone}: {end[gone].error}",)
    # Every answered 200 was timed and queued; their p99 lies within the runtime's buckets.
    assert result.p99_seconds is not None and 0 < result.p99_seconds <= LATENCY_BUCKETS[-1]
    assert result.mean_queue_delay_seconds is not None and result.mean_queue_delay_seconds >= 0
    assert result.values()["answers"] == 63


async def test_a_pod_that_does_not_answer_in_time_is_reported_not_raised():
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        url = metrics_url("127.0.0.1", port)
        (result,) = (await scrape([url], within=0.05)).values()
    assert result == Scrape(url, None, "no answer within 0.05s")


def test_metrics_urls_bracket_ipv6():
    assert metrics_url("10.1.2.3", 8080) == "http://10.1.2.3:8080/metrics"
    assert metrics_url("fd00::1", 8080) == "http://[fd00::1]:8080/metrics"


# -- the arithmetic -------------------------------------------------------------------------------------------------

EXPOSITION = """\
# HELP kubeserve_requests_total Inference requests answered, by HTTP status code.
# TYPE kubeserve_requests_total counter
kubeserve_requests_total{code="200",model="m",version="1"} 90.0
kubeserve_requests_total{code="404",model="m",version="1"} 2.0
kubeserve_requests_total{code="500",model="m",version="1"} 3.0
kubeserve_requests_total{code="503",model="m",version="1"} 5.0
# HELP kubeserve_request_duration_seconds Time.
# TYPE kubeserve_request_duration_seconds histogram
kubeserve_request_duration_seconds_bucket{le="0.1",model="m",stage="total",version="1"} 50.0
kubeserve_request_duration_seconds_bucket{le="0.2",model="m",stage="total",version="1"} 80.0
kubeserve_request_duration_seconds_bucket{le="+Inf",model="m",stage="total",version="1"} 90.0
kubeserve_request_duration_seconds_count{model="m",stage="total",version="1"} 90.0
kubeserve_request_duration_seconds_sum{model="m",stage="total",version="1"} 9.0
kubeserve_request_duration_seconds_bucket{le="0.1",model="m",stage="queue",version="1"} 90.0
kubeserve_request_duration_seconds_bucket{le="+Inf",model="m",stage="queue",version="1"} 90.0
# HELP kubeserve_queue_delay_seconds Queue.
# TYPE kubeserve_queue_delay_seconds histogram
kubeserve_queue_delay_seconds_bucket{le="+Inf",model="m",version="1"} 92.0
kubeserve_queue_delay_seconds_count{model="m",version="1"} 92.0
kubeserve_queue_delay_seconds_sum{model="m",version="1"} 4.6
"""


def test_the_exposition_parses_into_the_counters_the_analysis_reads():
    counters = parse(EXPOSITION)
    assert counters.answers == {"2xx": 90, "4xx": 2, "5xx": 8}
    assert counters.duration_buckets == {0.1: 50, 0.2: 80, INF: 90}  # stage="total" only
    assert (counters.queue_delay_sum, counters.queue_delay_count) == (4.6, 92)


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        # rank 50 of 100 falls in (0.1, 0.2] holding 40 after 30 below: 0.1 + 0.1 * 20/40
        (0.5, {0.1: 30, 0.2: 70, 0.4: 100, INF: 100}, 0.15),
        # rank 99 in (0.2, 0.4] holding 30 after 70: 0.2 + 0.2 * 29/30
        (0.99, {0.1: 30, 0.2: 70, 0.4: 100, INF: 100}, 0.2 + 0.2 * 29 / 30),
        # the first bucket interpolates from 0
        (0.5, {0.1: 10, INF: 10}, 0.05),
        # a rank in +Inf answers the highest finite bound
        (0.99, {0.1: 50, 0.2: 90, INF: 100}, 0.2),
        # empty buckets on the way are skipped
        (0.5, {0.1: 0, 0.2: 0, 0.4: 4, INF: 4}, 0.3),
        (0.99, {0.1: 0, INF: 0}, None),
    ],
)
def test_histogram_quantile_interpolates_as_promql_does(q, buckets, expected):
    result = histogram_quantile(q, buckets)
    assert result == (None if expected is None else pytest.approx(expected))


def test_a_histogram_without_its_inf_bucket_is_refused():
    with pytest.raises(ValueError, match=r"\+Inf"):
        histogram_quantile(0.5, {0.1: 3})


def _pod(ok: float, errors: float, buckets: dict[float, float], queue: tuple[float, float]) -> Counters:
    return Counters({"2xx": ok, "5xx": errors}, buckets, queue[0], queue[1])


def test_an_interval_is_the_difference_summed_over_pods_and_a_restarted_pod_counts_from_zero():
    start = {
        "a": Scrape("a", _pod(100, 0, {0.1: 100, 1.0: 100, INF: 100}, (1.0, 100))),
        "b": Scrape("b", _pod(500, 50, {0.1: 400, 1.0: 500, INF: 500}, (9.0, 550))),  # restarts in between
    }
    end = {
        "a": Scrape("a", _pod(140, 10, {0.1: 120, 1.0: 140, INF: 140}, (3.0, 150))),  # +40 ok, +10 errors
        "b": Scrape("b", _pod(30, 0, {0.1: 30, 1.0: 30, INF: 30}, (0.5, 30))),  # since its restart
        "c": Scrape("c", _pod(10, 10, {0.1: 0, 1.0: 10, INF: 10}, (0.5, 20))),  # new: from 0
    }
    result = measure(start, end)
    assert (result.answers, result.errors, result.pods) == (40 + 10 + 30 + 20, 10 + 10, 3)
    assert result.error_ratio == pytest.approx(20 / 100)
    # buckets summed: 0.1 -> 20+30+0 = 50, 1.0 -> 40+30+10 = 80; rank 79.2 in (0.1, 1.0]
    assert result.p99_seconds == pytest.approx(0.1 + 0.9 * (79.2 - 50) / 30)
    assert result.mean_queue_delay_seconds == pytest.approx((2.0 + 0.5 + 0.5) / (50 + 30 + 20))
    assert result.unreachable == ()


def test_no_traffic_measures_nothing_rather_than_zero():
    same = {"a": Scrape("a", _pod(5, 0, {0.1: 5, INF: 5}, (0.1, 5)))}
    result = measure(same, same)
    assert (result.answers, result.error_ratio, result.p99_seconds, result.mean_queue_delay_seconds) == (
        0,
        None,
        None,
        None,
    )
    assert result.values() == {"answers": 0}


def test_pods_unreadable_at_the_end_or_gone_are_reported():
    start = {"a": Scrape("a", _pod(1, 0, {INF: 1}, (0, 1))), "b": Scrape("b", _pod(1, 0, {INF: 1}, (0, 1)))}
    end = {"a": Scrape("a", None, "HTTP 500")}
    assert measure(start, end).unreachable == ("a: HTTP 500", "b: not scraped at the end")
