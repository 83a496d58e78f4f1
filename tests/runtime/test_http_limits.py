"""The HTTP layer's limits against hostile clients (``server.http``, docs/http-limits.md): framing (tiny chunks,
chunk-size lines without end, HTTP/1.0 with Transfer-Encoding, Host), exhaustion (bodies held across the process,
repeated header lines), slow clients (a head's deadline, a body's minimum rate, on a real loop and real time) and
paths (an encoded slash). Every request goes out as raw bytes from a socket and every answer is read by h11.

The memory cases run the real server in a subprocess, alone and with two workers, with a normal client beside the
attacker: the server's peak resident memory (its process tree's, from /proc) must stay within what the limits
allow, and every one of the normal client's requests must be answered. How long the normal client waited is
measured by ``make bench`` (bench/http_attacks.py), not asserted here."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import http_attacks  # bench/, put on sys.path above
from wire import (  # bench/, put on sys.path above
    INFER,
    Client,
    assert_error,
    assert_inferred,
    chunked,
    features,
    get,
    infer,
    infer_body,
    request,
    until,
)

MIB = 1024 * 1024


def chunked_head(path: str = INFER, version: str = "1.1", **headers: str) -> bytes:
    return request("POST", path, headers={"Transfer-Encoding": "chunked", **headers}, version=version)


def pieces(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


# -- chunked framing ------------------------------------------------------------------------------


async def test_tiny_chunks_are_refused_once_their_framing_outweighs_their_data(serve_in_process):
    from kubeserve.runtime.server.http import CHUNK_FRAMING_ALLOWANCE

    server = await serve_in_process("mlp")
    outcome = await http_attacks.one(server.url, chunked_head(), http_attacks.repeated(b"2\r\nzz\r\n", 4 * MIB))
    (status,), (error,) = outcome.statuses, outcome.errors
    assert status == 400
    assert error.startswith(f"the chunked body's framing (chunk sizes, extensions, trailer) exceeds its data by more "
                            f"than {CHUNK_FRAMING_ALLOWANCE} bytes")  # fmt: skip
    await until(lambda: len(server.state.connections) == 0)
    assert server.state.body_bytes_held == 0
    assert not server.gate.batches


async def test_many_small_chunks_carrying_more_than_their_framing_are_served(serve_in_process, reference):
    """The allowance is against framing that outweighs data: a body sent 16 bytes a chunk (6 bytes of framing each)
    is an ordinary request, however many chunks it takes."""
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    x = features(1)
    body = infer_body(x)
    padded = body[:-1] + b" " * (4 * 64 * 1024) + body[-1:]  # JSON's whitespace: the same request, 16k chunks
    client.send(chunked_head() + chunked(*pieces(padded, 16)))
    assert_inferred(await client.answer("POST"), x, reference)
    assert client.kept_alive
    await client.close()


@pytest.mark.parametrize(
    ("start", "pattern"),
    [(b"5;a=", b"b"), (b"", b"0")],
    ids=["chunk extension without end", "chunk size of zeros without end"],
)
async def test_a_chunk_size_line_without_end_is_refused(serve_in_process, start, pattern):
    server = await serve_in_process("mlp")
    outcome = await http_attacks.one(server.url, chunked_head() + start, http_attacks.repeated(pattern, 8 * MIB))
    assert outcome.statuses == [400]
    assert outcome.errors[0].startswith("the chunked body's framing")
    assert outcome.sent < 8 * MIB  # answered long before the attacker was done
    await until(lambda: len(server.state.connections) == 0)


async def test_a_short_chunk_extension_is_ignored(serve_in_process, reference):
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    x = features(2)
    body = infer_body(x)
    client.send(chunked_head() + b"%x;name=value;flag\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    assert_inferred(await client.answer("POST"), x, reference)
    await client.close()


async def test_http10_with_transfer_encoding_is_served_then_closed(serve_in_process, reference):
    """RFC 9112 §6.1: the framing of an HTTP/1.0 message with Transfer-Encoding cannot be trusted; a request
    pipelined behind it is not served."""
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    x = features(3)
    client.send(chunked_head(version="1.0", Connection="keep-alive") + chunked(infer_body(x)) + get("/v2/health/live"))
    answer = await client.answer("POST", close=True)
    assert_inferred(answer, x, reference)
    assert answer.headers["connection"] == "close"
    assert await client.closed_by_server()
    await client.close()


# -- the head ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hosts", "expected"),
    [((), "an HTTP/1.1 request needs exactly one Host header"), (("a", "b"), "... exactly one Host header, not 2")],
    ids=["none", "two"],
)
async def test_an_http11_request_needs_exactly_one_host(serve_in_process, hosts, expected):
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    lines = "".join(f"Host: {host}\r\n" for host in hosts)
    client.send(get("/v2/health/live") + f"GET /v2/health/live HTTP/1.1\r\n{lines}\r\n".encode())
    assert (await client.answer()).status == 200
    answer = await client.answer()
    assert_error(answer, 400, expected.replace("... ", "an HTTP/1.1 request needs "))
    assert answer.headers["connection"] == "close"
    assert await client.closed_by_server()
    await client.close()


async def test_an_http10_request_without_host_is_served(serve_in_process):
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    client.send(b"GET /v2/health/live HTTP/1.0\r\n\r\n")
    answer = await client.answer(close=True)
    assert (answer.status, answer.json()) == (200, {"live": True})
    await client.close()


async def test_repeated_header_lines_are_joined_in_order(serve_in_process, reference):
    """Thousands of lines of one header (as many as the head's limit takes) make one value, in their order: the
    answer is compressed with the first coding the joined Accept-Encoding accepts."""
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    x = features(4)
    body = infer_body(x)
    lines = "Accept-Encoding: x-unknown\r\n" * 2000 + "Accept-Encoding: deflate\r\nAccept-Encoding: gzip\r\n"
    head = f"POST {INFER} HTTP/1.1\r\nHost: test\r\n{lines}Content-Length: {len(body)}\r\n\r\n"
    client.send(head.encode() + body)
    answer = await client.answer("POST")
    assert (answer.status, answer.headers["content-encoding"]) == (200, "deflate")
    await client.close()


async def test_100_continue_is_not_sent_to_http10(serve_in_process, reference):
    """RFC 9110 §10.1.1: an HTTP/1.0 request's expectation is ignored."""
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    x = features(5)
    body = infer_body(x)
    headers = {"Expect": "100-continue", "Content-Length": str(len(body))}
    client.send(request("POST", INFER, headers=headers, version="1.0"))
    await until(lambda: any(c.request_arriving for c in server.state.connections))  # its head is read
    client.send(body)
    answer = await client.answer("POST", close=True)
    assert answer.informational == []
    assert_inferred(answer, x, reference)
    await client.close()


# -- paths --------------------------------------------------------------------------------------------


async def test_an_encoded_slash_never_separates_segments(serve_in_process):
    """``%2F`` stays inside its segment: ``/v2/models/mlp%2Finfer`` is the metadata endpoint of a model called
    ``mlp%2Finfer`` (which takes no POST, and is not served here), never the model's inference. Other escapes are
    decoded (``ml%70`` is ``mlp``)."""
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    body = infer_body(features(6))
    for escaped in ("%2F", "%2f"):
        client.send(request("POST", f"/v2/models/mlp{escaped}infer", body))
        assert_error(await client.answer("POST"), 405, "method POST is not allowed on /v2/models/mlp%2Finfer")
    client.send(get("/v2/models/mlp%2Finfer"))
    assert_error(await client.answer(), 404, "Request for unknown model: 'mlp%2Finfer' is not found")
    client.send(get("/v2/models/ml%70/ready"))
    assert (await client.answer()).status == 200
    assert not server.gate.batches
    await client.close()


# -- bodies held across the process --------------------------------------------------------------------


async def test_bodies_past_the_process_wide_bound_get_503_and_the_rest_are_served(serve_in_process, reference):
    limit = 64 * 1024
    server = await serve_in_process("mlp", max_request_bytes=limit, max_buffered_request_bytes=2 * limit)
    x = features(7)
    body = infer_body(x)
    padded = body[:-1] + b" " * (limit - len(body)) + body[-1:]
    head = request("POST", INFER, headers={"Content-Length": str(limit)})
    held = [await Client.connect(server.url) for _ in range(2)]
    for client in held:
        client.send(head + padded[:-100])  # all but the last 100 bytes, then nothing
    await until(lambda: server.state.body_bytes_held == 2 * (limit - 100))  # 200 bytes short of the bound

    refused = await Client.connect(server.url)
    refused.send(infer(features(8)))
    answer = await refused.answer("POST")
    assert_error(answer, 503, f"the server holds max_buffered_request_bytes ({2 * limit} bytes) of request bodies")
    assert (answer.headers["retry-after"], answer.headers["connection"]) == ("1", "close")
    assert await refused.closed_by_server()
    await refused.close()

    for client in held:  # the bodies held are whole requests, answered as any
        client.send(padded[-100:])
        assert_inferred(await client.answer("POST"), x, reference)
        await client.close()
    assert server.state.body_bytes_held == 0
    again = await Client.connect(server.url)
    again.send(infer(features(9)))
    assert_inferred(await again.answer("POST"), features(9), reference)
    await again.close()
    exposition = (await asyncio.to_thread(__import__("requests").get, server.url + "/metrics")).text
    assert 'kubeserve_http_refusals_total{model="mlp",reason="buffers_full",version="1"} 1.0' in exposition
    assert 'kubeserve_http_buffered_request_bytes{model="mlp",version="1"} 0.0' in exposition


async def test_the_bytes_held_are_let_go_whatever_ends_the_body(serve_in_process):
    """A body refused halfway, or whose client goes, no longer counts against the bound."""
    server = await serve_in_process("mlp", max_request_bytes=4096)
    gone = await Client.connect(server.url)
    gone.send(request("POST", INFER, headers={"Content-Length": "4000"}) + b" " * 2000)
    await until(lambda: server.state.body_bytes_held == 2000)
    gone.writer.transport.abort()
    await until(lambda: server.state.body_bytes_held == 0)

    refused = await Client.connect(server.url)
    refused.send(chunked_head() + b"%x\r\n%s\r\n" % (3000, b" " * 3000))
    await until(lambda: server.state.body_bytes_held == 3000)
    refused.send(b"%x\r\n%s\r\n" % (3000, b" " * 3000))  # past max_request_bytes: 413
    assert (await refused.answer("POST")).status == 413
    assert server.state.body_bytes_held == 0
    await refused.close()


# -- slow clients, on a real loop and real time ------------------------------------------------------


async def trickle(client: Client, data: bytes, every: float) -> None:
    """Send ``data`` a byte every ``every`` seconds (until the server stops reading and the test cancels this)."""
    for index in range(len(data)):
        client.send(data[index : index + 1])
        await asyncio.sleep(every)


async def test_a_head_that_does_not_arrive_in_time_is_408(serve_in_process, reference):
    """A byte every 50 ms keeps the connection from being idle; the head's deadline ends it all the same, while a
    normal client on another connection is served."""
    server = await serve_in_process("mlp", request_head_timeout_seconds=0.5)
    slow = await Client.connect(server.url)
    sending = asyncio.create_task(trickle(slow, get("/v2/health/live", Padding="p" * 1000), every=0.05))
    normal = await Client.connect(server.url)
    x = features(10)
    normal.send(infer(x))
    assert_inferred(await normal.answer("POST"), x, reference)

    answer = await slow.answer()
    sending.cancel()
    assert_error(answer, 408, "the request's head did not arrive within 0.5 s")
    assert answer.headers["connection"] == "close"
    assert server.state.connections.timed_out == 1
    for client in (slow, normal):
        await client.close()


async def test_a_body_slower_than_the_minimum_rate_is_408(serve_in_process):
    server = await serve_in_process("mlp", min_request_body_bytes_per_second=1000, request_body_rate_window_seconds=0.5)
    slow = await Client.connect(server.url)
    slow.send(request("POST", INFER, headers={"Content-Length": "10000"}) + b" " * 4000)  # a fast start...
    sending = asyncio.create_task(trickle(slow, b" " * 6000, every=0.05))  # ...then 20 bytes/s
    answer = await slow.answer("POST")
    sending.cancel()
    assert_error(answer, 408, "the request's body arrived slower than 1000 bytes/s")
    assert server.state.body_bytes_held == 0
    await slow.close()


async def test_a_body_the_server_holds_up_is_not_timed(serve_in_process, reference):
    """A client waiting for its 100 Continue (behind a request that computes) sends nothing, and is not late."""
    server = await serve_in_process(
        "mlp", request_head_timeout_seconds=0.5, min_request_body_bytes_per_second=1000,
        request_body_rate_window_seconds=0.5,
    )  # fmt: skip
    client = await Client.connect(server.url)
    x1, x2 = features(11), features(12)
    server.gate.close()
    client.send(infer(x1))
    await server.gate.wait_entered()
    body = infer_body(x2)
    client.send(request("POST", INFER, headers={"Expect": "100-continue", "Content-Length": str(len(body))}))
    await asyncio.sleep(1.5)  # three windows, and three head deadlines
    server.gate.open()
    assert_inferred(await client.answer("POST"), x1, reference)
    client.told("POST")
    interim = await client.event()
    assert interim.status_code == 100
    client.send(body)
    assert_inferred(await client.answer("POST"), x2, reference)
    assert server.state.connections.timed_out == 0
    await client.close()


# -- memory, against the real server -------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_no_attack_raises_the_servers_memory_past_its_bounds(start_runtime, workers):
    """Tiny chunks (16 MiB of body in 2-byte chunks once took a server from 91 MB to 1.2 GB), endless chunk-size
    lines, a gzip bomb, and 8 connections stalling with 24 MiB of body each: the peak resident memory of the
    server's processes grows by no more than the limits allow (``max_request_bytes`` for the one inflated body,
    ``max_buffered_request_bytes`` per worker for bodies held, and some slack), the attackers get 400, 408, 413 or
    503, and a normal client beside them has every request answered."""
    server = start_runtime("mlp", "--workers", str(workers), "--request-body-rate-window-seconds", "1")
    server.wait_ready(workers)
    pid = server.process.pid

    async def attack_beside_a_normal_client(attack: http_attacks.Attack) -> tuple[http_attacks.Outcome, int]:
        http_attacks.reset_peaks(pid)
        before = http_attacks.tree_rss(pid)
        stop = asyncio.Event()
        beside = asyncio.create_task(http_attacks.normal_client(server.url, stop))
        outcome = await attack(server.url, 0.0)
        stop.set()
        assert await beside  # every request answered 200 (normal_client asserts it)
        return outcome, http_attacks.tree_peak(pid) - before

    slack = 32 * MIB
    for name in ("tiny chunks", "endless chunk extension", "endless chunk size"):
        attack = http_attacks.ATTACKS[name].run
        outcome, growth = asyncio.run(attack_beside_a_normal_client(attack))
        assert outcome.statuses == [400], (name, outcome)
        assert growth < slack, (name, growth / MIB)

    # Inflated into one buffer of at most max_request_bytes (64 MiB), in one worker.
    outcome, growth = asyncio.run(attack_beside_a_normal_client(http_attacks.ATTACKS["gzip bomb"].run))
    assert outcome.statuses == [413], outcome
    assert growth < 64 * MIB + slack, growth / MIB

    # At most max_buffered_request_bytes (64 MiB) of bodies held in each worker.
    outcome, growth = asyncio.run(attack_beside_a_normal_client(http_attacks.ATTACKS["stalled bodies"].run))
    assert set(outcome.statuses) <= {408, 503} and 408 in outcome.statuses, outcome
    assert growth < workers * 64 * MIB + slack, growth / MIB
