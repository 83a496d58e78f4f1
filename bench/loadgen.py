"""A closed-loop HTTP load generator, lean enough to share a small machine with the server it measures.

Each of ``--concurrency`` keep-alive connections sends the same pre-built request, waits for the response,
and sends again. Responses are parsed with httptools (the C parser uvicorn uses). After ``--warmup``
seconds it measures for ``--duration`` seconds: requests/s, latency percentiles, and (with
``--server-pid``) the server's CPU-seconds over exactly that window, read from /proc for its process tree.
Prints one JSON object. Targets 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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


async def run(args: argparse.Namespace, body: bytes) -> dict:
    url = urlsplit(args.url)
    if url.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("the load generator only targets this machine (127.0.0.1)")
    headers = [f"POST {url.path} HTTP/1.1", f"Host: {url.netloc}", f"Content-Length: {len(body)}"]
    headers += [f"{name}: {value}" for name, value in (h.split(":", 1) for h in args.header)]
    request = ("\r\n".join(headers) + "\r\n\r\n").encode() + body

    loop = asyncio.get_running_loop()
    connections = [
        (await loop.create_connection(Connection, url.hostname, url.port))[1] for _ in range(args.concurrency)
    ]
    started = time.perf_counter()
    window_start = started + args.warmup
    window_end = window_start + args.duration
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    cpu: dict[str, float] = {}

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

    async def mark_window() -> None:
        await asyncio.sleep(args.warmup)
        if args.server_pid:
            cpu["start"] = tree_cpu_seconds(args.server_pid)
        await asyncio.sleep(args.duration)
        if args.server_pid:
            cpu["end"] = tree_cpu_seconds(args.server_pid)

    await asyncio.gather(mark_window(), *(client(c) for c in connections))
    for connection in connections:
        assert connection.transport is not None
        connection.transport.close()

    latencies.sort()
    count = len(latencies)

    def percentile(q: float) -> float:
        return latencies[min(count - 1, int(q * count))] if count else float("nan")

    result = {
        "requests": count,
        "statuses": statuses,
        "requests_per_second": count / args.duration,
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
    args = parser.parse_args()
    print(json.dumps(uvloop.run(run(args, Path(args.body).read_bytes()))))


if __name__ == "__main__":
    main()
