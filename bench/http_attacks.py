"""Hostile clients against the runtime's HTTP layer, from 127.0.0.1, each bounded in bytes and time, with a normal
client beside it: what the attacker's answer was (read by h11), how the server's memory grew (the peak resident
memory of its process tree, from /proc), and the normal client's latency meanwhile.

    python bench/http_attacks.py [--workers N] [--seconds S]

``make bench`` runs it against the runtime with the sample's settings (the defaults) and prints the table;
tests/runtime/test_http_limits.py runs the same attacks and asserts on the answers and the memory, not on time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# PYTHONSAFEPATH keeps the script's folder off sys.path (the repository root holds `operator/`); add bench/ only.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kubeserve.runtime.config import RuntimeSettings
from processes import process_tree, status_bytes
from wire import INFER, Client, features, get, infer, request

MIB = 1024 * 1024
# Writes go out in pieces of this size, so that no attack builds its bytes in memory first.
PIECE = 64 * 1024
# The attacker's socket's send buffer (SO_SNDBUF).
SEND_BUFFER = 64 * 1024
# Only against a hang: an attack that gets no answer in this long is over.
ATTACK_TIMEOUT = 60.0
# The runtime's defaults, which the slow attacks outlast.
HEAD_TIMEOUT: float = RuntimeSettings.model_fields["request_head_timeout_seconds"].default
BODY_WINDOW: float = RuntimeSettings.model_fields["request_body_rate_window_seconds"].default


@dataclass
class Outcome:
    """What the attacker saw: each connection's answer status (None: closed with no answer), and bytes sent."""

    statuses: list[int | None]
    errors: list[str]
    sent: int = 0

    @property
    def summary(self) -> str:
        counts: dict[str, int] = {}
        for status in self.statuses:
            key = "no answer" if status is None else str(status)
            counts[key] = counts.get(key, 0) + 1
        return ", ".join(f"{count}x {key}" if count > 1 else key for key, count in sorted(counts.items()))


def repeated(pattern: bytes, total: int) -> Iterator[bytes]:
    """``pattern`` over and over, ``total`` bytes at most, in pieces of about ``PIECE``."""
    piece = pattern * max(1, PIECE // len(pattern))
    for _ in range(max(1, total // len(piece))):
        yield piece


async def send_and_read(
    url: str, head: bytes, stream: Iterable[bytes] = (), method: str = "POST", pace: float = 0.0
) -> tuple[int | None, str, int]:
    """Send ``head``, then ``stream`` (one piece every ``pace`` seconds) until the server answers or closes: the
    answer's status (None: none came), its error, and the bytes sent."""
    # A small send buffer keeps what is on its way small: past the server's linger after a refusal, bytes still
    # arriving make it reset the connection, which can take the answer with it.
    client = await Client.connect(url, read_timeout=ATTACK_TIMEOUT, send_buffer=SEND_BUFFER)
    sent = 0

    async def pump() -> None:
        nonlocal sent
        client.send(head)
        sent += len(head)
        for piece in stream:
            # Yield each time (the answer is read meanwhile), and stop once it comes.
            await asyncio.sleep(pace)
            if client.received:
                return
            client.send(piece)
            await client.writer.drain()
            sent += len(piece)

    pumping = asyncio.create_task(pump())
    status, error = None, ""
    try:
        answer = await client.answer(method)
        status = answer.status
        with contextlib.suppress(ValueError, KeyError, TypeError):
            error = answer.json()["error"]
    except (AssertionError, TimeoutError, ConnectionError):
        pass  # no answer: the server closed, or never answered
    finally:
        pumping.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await pumping
        client.writer.transport.abort()
    return status, error, sent


async def one(url: str, head: bytes, stream: Iterable[bytes] = (), pace: float = 0.0) -> Outcome:
    status, error, sent = await send_and_read(url, head, stream, pace=pace)
    return Outcome([status], [error], sent)


def chunked_head(path: str = "/v2/health/live") -> bytes:
    return request("POST", path, headers={"Transfer-Encoding": "chunked"})


async def tiny_chunks(url: str, seconds: float) -> Outcome:
    """16 MiB of body in 2-byte chunks (56 MiB on the wire)."""
    return await one(url, chunked_head(), repeated(b"2\r\nzz\r\n", 8 * 1024 * 1024 * 7))


async def endless_chunk_extension(url: str, seconds: float) -> Outcome:
    """A chunk-size line whose extension never ends: ``5;a=bbbb...``, up to 64 MiB."""
    return await one(url, chunked_head() + b"5;a=", repeated(b"b", 64 * MIB))


async def endless_chunk_size(url: str, seconds: float) -> Outcome:
    """A chunk size of leading zeros that never ends, up to 64 MiB."""
    return await one(url, chunked_head(), repeated(b"0", 64 * MIB))


async def huge_head(url: str, seconds: float) -> Outcome:
    """One header line of 1 MiB."""
    return await one(url, b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\nX-Big: ", repeated(b"a", MIB))


@functools.cache
def bomb() -> bytes:
    """1 GiB of zeros as one gzip member: about 1 MiB. Made once, before it is measured (it takes a while)."""
    encoder = zlib.compressobj(9, wbits=16 + zlib.MAX_WBITS)
    zeros = bytes(MIB)
    return b"".join(encoder.compress(zeros) for _ in range(1024)) + encoder.flush()


async def gzip_bomb(url: str, seconds: float) -> Outcome:
    """``bomb()`` as an inference request's body."""
    body = bomb()
    head = request("POST", INFER, headers={"Content-Encoding": "gzip", "Content-Length": str(len(body))})
    return await one(url, head + body)


async def duplicate_headers(url: str, seconds: float) -> Outcome:
    """Requests of 10,000 repeated header lines each (as many as the head's limit takes), one after another on one
    connection, for ``seconds``."""
    lines = b"a: b\r\n" * 10_000
    message = b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n" + lines + b"\r\n"
    client = await Client.connect(url)
    statuses: list[int | None] = []
    stop = time.monotonic() + seconds
    sent = 0
    while time.monotonic() < stop:
        client.send(message)
        sent += len(message)
        statuses.append((await client.answer()).status)
    await client.close()
    return Outcome(statuses, [], sent)


async def stalled_bodies(url: str, seconds: float) -> Outcome:
    """8 connections each send 24 MiB of a 64 MiB body, then nothing more."""
    head = request("POST", INFER, headers={"Content-Length": str(64 * MIB)})
    results = await asyncio.gather(*(send_and_read(url, head, repeated(b" ", 24 * MIB)) for _ in range(8)))
    return Outcome([r[0] for r in results], [r[1] for r in results], sum(r[2] for r in results))


async def slow_heads(url: str, seconds: float) -> Outcome:
    """200 connections each sending a request head one byte a second (slowloris), until answered (the head's
    deadline) or for ``seconds``, whichever is longer."""
    seconds = max(seconds, HEAD_TIMEOUT + 5)
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"s" * 10_000

    async def slow() -> tuple[int | None, str, int]:
        async with asyncio.timeout(seconds):
            return await send_and_read(url, head[:1], (head[i : i + 1] for i in range(1, len(head))), pace=1.0)

    results = []
    for result in await asyncio.gather(*(slow() for _ in range(200)), return_exceptions=True):
        results.append(result if isinstance(result, tuple) else (None, "held until the attacker stopped", 0))
    return Outcome([r[0] for r in results], [r[1] for r in results], sum(r[2] for r in results))


async def slow_bodies(url: str, seconds: float) -> Outcome:
    """200 connections each sending a 64 KiB body ten bytes a second, until answered (the body's minimum rate) or
    for ``seconds``, whichever is longer."""
    seconds = max(seconds, BODY_WINDOW + 5)
    head = request("POST", INFER, headers={"Content-Length": str(64 * 1024)})

    async def slow() -> tuple[int | None, str, int]:
        async with asyncio.timeout(seconds):
            return await send_and_read(url, head, (b" " * 10 for _ in range(6553)), pace=1.0)

    results = []
    for result in await asyncio.gather(*(slow() for _ in range(200)), return_exceptions=True):
        results.append(result if isinstance(result, tuple) else (None, "held until the attacker stopped", 0))
    return Outcome([r[0] for r in results], [r[1] for r in results], sum(r[2] for r in results))


@dataclass(frozen=True)
class Attack:
    run: Callable[[str, float], Awaitable[Outcome]]
    expected: tuple[int, ...]  # the statuses the attacker gets from a server with the default settings
    prepare: Callable[[], object] = lambda: None  # made before the measure starts


ATTACKS: dict[str, Attack] = {
    "tiny chunks": Attack(tiny_chunks, (400,)),
    "endless chunk extension": Attack(endless_chunk_extension, (400,)),
    "endless chunk size": Attack(endless_chunk_size, (400,)),
    "huge head": Attack(huge_head, (431,)),
    "gzip bomb": Attack(gzip_bomb, (413,), bomb),
    "duplicate headers": Attack(duplicate_headers, (200,)),
    "stalled bodies": Attack(stalled_bodies, (408, 503)),
    "slow heads": Attack(slow_heads, (408,)),
    "slow bodies": Attack(slow_bodies, (408,)),
}


# -- measuring -----------------------------------------------------------------------------------


def tree_rss(pid: int) -> int:
    return sum(status_bytes(p, "VmRSS") for p in process_tree(pid))


def reset_peaks(pid: int) -> None:
    """Start each process's peak resident memory (VmHWM) again from its current (Linux's clear_refs)."""
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            Path(f"/proc/{p}/clear_refs").write_text("5")


def tree_peak(pid: int) -> int:
    return sum(status_bytes(p, "VmHWM") for p in process_tree(pid))


async def normal_client(url: str, stop: asyncio.Event) -> list[float]:
    """One keep-alive connection sending one-row inference requests one after another until ``stop`` (one at
    least): the seconds each took, as the client saw them. Each must be answered 200 in the end.

    A request that finds the server's body budget (``max_buffered_request_bytes``) full is answered 503 with
    Retry-After and its connection closed, as documented: the caller waits as told, reconnects and sends it again,
    as a well-behaved client does, and the wait counts in its latency. Whether that happens depends on how the
    attacker's bytes and this request interleave, not on what the server decides."""
    client = await Client.connect(url)
    latencies = []
    seed = 0
    while not (seed and stop.is_set()):
        seed += 1
        started = time.perf_counter()
        client.send(infer(features(seed % 100)))
        answer = await client.answer("POST")
        while answer.status == 503 and "retry-after" in answer.headers:
            await client.close()
            await asyncio.sleep(float(answer.headers["retry-after"]))
            client = await Client.connect(url)
            client.send(infer(features(seed % 100)))
            answer = await client.answer("POST")
        latencies.append(time.perf_counter() - started)
        assert answer.status == 200, answer.body
        await asyncio.sleep(0.005)  # a steady caller, not a load generator
    await client.close()
    return latencies


@dataclass(frozen=True)
class Row:
    attack: str
    expected: str
    outcome: str
    as_expected: bool  # every answer the attacker got was one it should
    sent_mib: float
    rss_before_mib: float
    rss_peak_mib: float
    requests: int
    p50_ms: float
    p99_ms: float
    max_ms: float


async def measure(name: str, url: str, pid: int, seconds: float) -> Row:
    """Run one attack with a normal client beside it, for ``seconds`` at least."""
    attack = ATTACKS[name]
    attack.prepare()
    # The server settles first: what the last attack's connections held is let go.
    await asyncio.sleep(0.5)
    probe = await Client.connect(url)
    probe.send(get("/v2/health/ready"))
    await probe.answer()
    await probe.close()
    reset_peaks(pid)
    before = tree_rss(pid)
    stop = asyncio.Event()
    beside = asyncio.create_task(normal_client(url, stop))
    started = time.monotonic()
    outcome = await attack.run(url, seconds)
    await asyncio.sleep(max(0.0, seconds - (time.monotonic() - started)))
    stop.set()
    latencies = sorted(await beside)
    peak = tree_peak(pid)
    return Row(
        name,
        " or ".join(map(str, attack.expected)),
        outcome.summary,
        set(outcome.statuses) <= set(attack.expected),
        outcome.sent / MIB,
        before / MIB,
        peak / MIB,
        len(latencies),
        statistics.median(latencies) * 1e3,
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3,
        latencies[-1] * 1e3,
    )


def render(rows: list[Row], workers: int) -> str:
    lines = [
        f"Hostile clients against the runtime ({workers} worker{'s' if workers > 1 else ''}, default settings), a "
        "normal client beside each sending one-row inference requests one after another:",
        "",
        "| attack | attacker's answers | expected | attacker sent | server RSS before → peak | normal client: "
        "requests, p50 / p99 / max |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.attack} | {r.outcome} | {r.expected} | {r.sent_mib:,.1f} MiB | {r.rss_before_mib:,.0f} → "
            f"{r.rss_peak_mib:,.0f} MiB | {r.requests:,}, {r.p50_ms:.2f} / {r.p99_ms:.2f} / {r.max_ms:.1f} ms |"
        )
    return "\n".join(lines)


async def measure_all(url: str, pid: int, seconds: float, names: list[str]) -> list[Row]:
    rows = []
    for name in names:
        row = await measure(name, url, pid, seconds)
        print(f"{row.attack}: {row.outcome}; RSS {row.rss_before_mib:.0f} -> {row.rss_peak_mib:.0f} MiB; "
              f"normal client p99 {row.p99_ms:.2f} ms, max {row.max_ms:.1f} ms", flush=True)  # fmt: skip
        rows.append(row)
    return rows


# The normal client's p99 beside each attack must stay under this (a make bench floor, not a test).
P99_FLOOR_MS = 50.0


def floor(rows: list[Row], workers: int) -> tuple[str, bool, str]:
    """Whether the normal client's p99 stayed under ``P99_FLOOR_MS`` beside every attack, and each attacker got
    what it should."""
    worst = max(rows, key=lambda r: r.p99_ms)
    answered = all(r.as_expected for r in rows)
    return (
        f"beside every attack on {workers} worker{'s' if workers > 1 else ''}, a normal client's p99 under "
        f"{P99_FLOOR_MS:g} ms, and each attacker answered as expected",
        worst.p99_ms < P99_FLOOR_MS and answered,
        f"worst p99 {worst.p99_ms:.2f} ms ({worst.attack}); answers as expected: {'yes' if answered else 'no'}",
    )


def run(workers: int, seconds: float, names: list[str]) -> list[Row]:
    """The attacks against the runtime serving the sample MLP with the default settings and ``workers``."""
    from kubeserve.runtime.samples import write_sample
    from server import RunningServer

    work = Path(tempfile.mkdtemp(prefix="kubeserve-attacks-"))
    model = write_sample("mlp", work / "mlp.onnx")
    with RunningServer(model, "mlp", workers=workers) as server:
        return asyncio.run(measure_all(server.url, server.pid, seconds, names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0, help="the least each attack (and its measure) lasts")
    parser.add_argument("--attack", action="append", choices=sorted(ATTACKS), help="only these (default: all)")
    args = parser.parse_args()
    rows = run(args.workers, args.seconds, args.attack or list(ATTACKS))
    name, passed, detail = floor(rows, args.workers)
    print(f"{render(rows, args.workers)}\n\n- {'PASS' if passed else 'BELOW'} {name}: {detail}")


if __name__ == "__main__":
    main()
