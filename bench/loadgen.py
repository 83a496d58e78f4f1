"""A closed-loop HTTP load generator, lean enough to share a small machine with the server it measures.

Each of ``--concurrency`` keep-alive connections sends the same pre-built request, waits for the response,
and sends again. Responses are parsed with httptools (the C parser uvicorn uses). After ``--warmup``
seconds it measures for ``--duration`` seconds: requests/s, latency percentiles, and (with
``--server-pid``) the server's CPU-seconds over exactly that window, read from /proc for its process tree.
With ``--processes N`` the connections are shared between N processes, for a server faster than one
core of Python can drive (``workers`` on many cores). Prints one JSON object. Targets 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httptools
import uvloop

# PYTHONSAFEPATH keeps the script's folder off sys.path (the repository root holds `operator/`); add bench/ only.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from processes import tree_cpu_seconds


class Connection(asyncio.Protocol):
    """One keep-alive connection: send, wait for the whole response, repeat."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("the server closed the connection"))

    async def exchange(self, request: bytes) -> int:
        assert self.transport is not None
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.done


def build_request(args: argparse.Namespace, body: bytes) -> tuple[str, int, bytes]:
    """The host, port and bytes of the one request every connection sends."""
    url = urlsplit(args.url)
    if url.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("the load generator only targets this machine (127.0.0.1)")
    headers = [f"POST {url.path} HTTP/1.1", f"Host: {url.netloc}", f"Content-Length: {len(body)}"]
    headers += [f"{name}: {value}" for name, value in (h.split(":", 1) for h in args.header)]
    assert url.hostname is not None and url.port is not None
    return url.hostname, url.port, ("\r\n".join(headers) + "\r\n\r\n").encode() + body


async def drive(
    host: str, port: int, request: bytes, concurrency: int, window_start: float, window_end: float
) -> tuple[list[float], dict[int, int]]:
    """``concurrency`` connections in a closed loop until ``window_end``: the latencies and statuses of the
    requests sent within the window (``time.perf_counter``, which every process of this machine shares)."""
    loop = asyncio.get_running_loop()
    connections = [(await loop.create_connection(Connection, host, port))[1] for _ in range(concurrency)]
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def client(connection: Connection) -> None:
        while True:
            sent = time.perf_counter()
            if sent >= window_end:
                return
            status = await connection.exchange(request)
            received = time.perf_counter()
            if sent >= window_start:
                latencies.append(received - sent)
                statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(client(c) for c in connections))
    for connection in connections:
        assert connection.transport is not None
        connection.transport.close()
    return latencies, statuses


def _drive_process(
    host: str, port: int, request: bytes, concurrency: int, window_start: float, window_end: float
) -> tuple[list[float], dict[int, int]]:
    return uvloop.run(drive(host, port, request, concurrency, window_start, window_end))


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.perf_counter()))


def run(args: argparse.Namespace, body: bytes) -> dict:
    host, port, request = build_request(args, body)
    # The window opens after the warm-up, which also covers starting the processes and opening the connections.
    window_start = time.perf_counter() + args.warmup
    window_end = window_start + args.duration
    shares = [
        args.concurrency // args.processes + (i < args.concurrency % args.processes) for i in range(args.processes)
    ]
    cpu: dict[str, float] = {}
    with multiprocessing.get_context("fork").Pool(args.processes) as pool:
        parts = pool.starmap_async(
            _drive_process, [(host, port, request, share, window_start, window_end) for share in shares if share]
        )
        if args.server_pid:
            _sleep_until(window_start)
            cpu["start"] = tree_cpu_seconds(args.server_pid)
            _sleep_until(window_end)
            cpu["end"] = tree_cpu_seconds(args.server_pid)
        results = parts.get()

    latencies = [latency for part, _ in results for latency in part]
    statuses: dict[int, int] = {}
    for _, part in results:
        for status, n in part.items():
            statuses[status] = statuses.get(status, 0) + n
    return summary(latencies, statuses, args.duration, cpu)


def summary(latencies: list[float], statuses: dict, duration: float, cpu: dict[str, float]) -> dict:
    """The printed result: requests/s over ``duration``, latency percentiles, and (``cpu``: the server's CPU-seconds
    at the window's ``start`` and ``end``) its CPU per request. bench/grpc_load.py prints the same."""
    latencies = sorted(latencies)
    count = len(latencies)

    def percentile(q: float) -> float:
        return latencies[min(count - 1, int(q * count))] if count else float("nan")

    result = {
        "requests": count,
        "statuses": statuses,
        "requests_per_second": count / duration,
        "p50_ms": percentile(0.50) * 1e3,
        "p99_ms": percentile(0.99) * 1e3,
    }
    if cpu:
        result["server_cpu_us_per_request"] = (cpu["end"] - cpu["start"]) / max(count, 1) * 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT/path")
    parser.add_argument("--body", required=True, help="file holding the request body")
    parser.add_argument("--header", action="append", default=[], help="NAME: VALUE (repeatable)")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--server-pid", type=int)
    parser.add_argument(
        "--processes", type=int, default=1, help="processes sharing the connections, for servers one can't keep busy"
    )
    args = parser.parse_args()
    print(json.dumps(run(args, Path(args.body).read_bytes())))


if __name__ == "__main__":
    main()
