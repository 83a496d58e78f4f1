"""The HTTP/1.1 layer on the wire (``server.http``): keep-alive, pipelining, closing, request bodies and their
limits, malformed requests, HEAD, routing errors, compression, half-closed and vanished clients, draining
and flow control. Requests go out as raw bytes; every answer is parsed by h11, an independent and strict
HTTP/1.1 implementation, so these tests also prove the answers are well-formed."""

from __future__ import annotations

import asyncio
import gzip
import socket
import struct
import sys
import zlib
from pathlib import Path

import h11
import numpy as np
import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from wire import (  # bench/, put on sys.path above
    INFER,
    Answer,
    Client,
    assert_error,
    assert_inferred,
    chunked,
    features,
    get,
    infer,
    infer_body,
    probabilities,
    request,
    until,
)

# The smallest max_request_bytes the settings take: a one-row mlp request fits, two rows do not.
LIMIT = 1024


# -- connections ----------------------------------------------------------------------------------


async def test_keep_alive_answers_every_request_on_one_connection(serve_in_process, reference):
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    x = features(1)
    client.send(infer(x))
    first = await client.answer("POST")
    client.send(get("/v2/health/ready"))
    second = await client.answer()

    assert_inferred(first, x, reference)
    assert (second.status, second.json()) == (200, {"ready": True})
    for answer in (first, second):
        assert int(answer.headers["content-length"]) == len(answer.body)
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["date"].endswith(" GMT")
        assert answer.headers["server"] == "kubeserve"
        assert "connection" not in answer.headers
    assert client.kept_alive
    client.send(get("/v2/health/live"))  # still open
    assert (await client.answer()).status == 200
    await client.close()


async def test_pipelined_requests_are_answered_in_order(serve_in_process, reference):
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    x1, x2 = features(1), features(2)
    client.send(infer(x1) + get("/v2/health/ready") + infer(x2))  # one write, before reading anything

    first, ready, last = await client.answer("POST"), await client.answer(), await client.answer("POST")
    assert_inferred(first, x1, reference)
    assert ready.json() == {"ready": True}
    assert_inferred(last, x2, reference)
    assert not np.allclose(probabilities(first), probabilities(last))
    await client.close()


async def test_connection_close_from_the_client_is_honoured(serve_in_process):
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    client.send(get("/v2/health/live", Connection="close"))
    answer = await client.answer(close=True)
    assert (answer.status, answer.headers["connection"]) == (200, "close")
    assert await client.closed_by_server()
    await client.close()


async def test_requests_sent_after_a_close_are_dropped_and_forgotten(serve_in_process, reference):
    """A request pipelined behind ``Connection: close`` is never answered; nor may the server go on counting
    it as on its way (a lone request would then never be computed at once: ``DynamicBatcher.infer``)."""
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    x = features(3)
    client.send(get("/v2/health/live", Connection="close") + infer(x))
    answer = await client.answer(close=True)
    assert (answer.status, answer.headers["connection"]) == (200, "close")
    assert await client.closed_by_server()
    await client.close()
    await until(lambda: len(server.state.connections) == 0)
    assert server.state.arriving == 0
    assert server.state.accepted == 0  # the inference request never started

    again = await Client.connect(server.url)
    again.send(infer(x))
    assert_inferred(await again.answer("POST"), x, reference)
    await again.close()


async def test_http10_closes_unless_asked_to_keep_alive(serve_in_process):
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    client.send(request("GET", "/v2/health/live", version="1.0"))
    answer = await client.answer(close=True)
    assert (answer.status, answer.json(), answer.headers["connection"]) == (200, {"live": True}, "close")
    assert await client.closed_by_server()
    await client.close()

    client = await Client.connect(server.url)
    client.send(request("GET", "/v2/health/live", headers={"Connection": "keep-alive"}, version="1.0"))
    answer = await client.answer()
    assert (answer.status, answer.headers["connection"]) == (200, "keep-alive")
    client.send(request("GET", "/v2/health/ready", headers={"Connection": "keep-alive"}, version="1.0"))
    assert (await client.answer()).json() == {"ready": True}
    await client.close()


# -- request bodies -------------------------------------------------------------------------------


async def test_a_chunked_body_arriving_in_pieces(serve_in_process, reference):
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    x = features(3)
    body = infer_body(x)
    client.send(request("POST", INFER, headers={"Transfer-Encoding": "chunked"}))
    pieces = [body[:10], body[10:100], body[100:]]
    for piece in pieces:
        client.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        await client.writer.drain()
    client.send(b"0\r\n\r\n")
    assert_inferred(await client.answer("POST"), x, reference)
    await client.close()


async def test_expect_100_continue(serve_in_process, reference):
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    x = features(4)
    body = infer_body(x)
    client.send(request("POST", INFER, headers={"Expect": "100-continue", "Content-Length": str(len(body))}))
    client.told("POST")
    interim = await client.event()  # before the body is sent
    assert isinstance(interim, h11.InformationalResponse) and interim.status_code == 100
    client.send(body)
    answer = await client.answer("POST")
    assert answer.informational == []
    assert_inferred(answer, x, reference)
    await client.close()


async def test_expect_100_continue_with_a_body_too_large_is_413_without_continue(serve_in_process):
    server = await serve_in_process("mlp", max_request_bytes=LIMIT)
    client = await Client.connect(server.url)
    client.send(request("POST", INFER, headers={"Expect": "100-continue", "Content-Length": str(LIMIT + 1)}))
    answer = await client.answer("POST")
    assert answer.informational == []
    assert_error(answer, 413, f"request body exceeds max_request_bytes ({LIMIT} bytes)")
    assert answer.headers["connection"] == "close"
    assert await client.closed_by_server()
    await client.close()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_body_too_large_is_413_and_closes_after_earlier_answers(serve_in_process, reference, framing):
    server = await serve_in_process("mlp", max_request_bytes=LIMIT)
    client = await Client.connect(server.url)
    x = features(5)
    if framing == "content-length":
        too_large = request("POST", INFER, b"x" * (LIMIT + 1))
    else:  # no length to refuse it by: the chunks grow past the limit
        too_large = request("POST", INFER, headers={"Transfer-Encoding": "chunked"}) + chunked(*[b"x" * 400] * 3)
    client.send(infer(x) + too_large)

    assert_inferred(await client.answer("POST"), x, reference)
    refused = await client.answer("POST")
    assert_error(refused, 413, f"request body exceeds max_request_bytes ({LIMIT} bytes)")
    assert refused.headers["connection"] == "close"
    assert await client.closed_by_server()
    await client.close()


async def test_a_stock_client_sending_a_body_too_large_reads_the_413(serve_in_process):
    """The server answers at the headers and closes without reading the body; the client, still sending,
    must see the 413 rather than a broken connection."""
    limit = 1024 * 1024
    server = await serve_in_process("mlp", max_request_bytes=limit)
    body = b"x" * (4 * limit)
    answers = await asyncio.gather(
        *(asyncio.to_thread(requests.post, server.url + INFER, data=body, timeout=30) for _ in range(4))
    )
    for answer in answers:
        assert answer.status_code == 413
        assert answer.json() == {"error": f"request body exceeds max_request_bytes ({limit} bytes)"}
        assert answer.headers["Connection"] == "close"


@pytest.mark.parametrize(
    "malformed",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\nno colon here\r\n\r\n",
        # Framed two ways at once: the shape of request smuggling.
        b"POST /v2/health/live HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
    ],
    ids=["request line", "header line", "length and chunked"],
)
async def test_a_malformed_request_is_400_then_closed(serve_in_process, malformed):
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    client.send(get("/v2/health/live") + malformed)
    assert (await client.answer()).status == 200
    answer = await client.answer()
    assert_error(answer, 400, "malformed HTTP request")
    assert answer.headers["connection"] == "close"
    assert await client.closed_by_server()
    await client.close()


async def test_an_upgrade_is_answered_as_http11_then_closed(serve_in_process):
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    client.send(get("/v2/health/live", Connection="Upgrade", Upgrade="websocket") + b"another protocol")
    answer = await client.answer(close=True)
    assert (answer.status, answer.json(), answer.headers["connection"]) == (200, {"live": True}, "close")
    assert await client.closed_by_server()
    await client.close()


async def test_100_continue_for_a_pipelined_request_waits_its_turn(serve_in_process, reference):
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    x1, x2 = features(12), features(13)
    server.gate.close()
    client.send(infer(x1))
    await server.gate.wait_entered()
    body = infer_body(x2)
    client.send(request("POST", INFER, headers={"Expect": "100-continue", "Content-Length": str(len(body))}))
    (connection,) = server.state.connections
    await until(lambda: connection.request_arriving)  # the server has read the second request's headers
    server.gate.open()

    first = await client.answer("POST")
    assert first.informational == []  # a 100 here answers the request that sent no Expect
    assert_inferred(first, x1, reference)
    client.send(body)
    assert_inferred(await client.answer("POST"), x2, reference)
    await client.close()


# -- routing --------------------------------------------------------------------------------------


async def test_head_is_get_without_the_body(serve_in_process):
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    client.send(get("/v2/health/ready"))
    got = await client.answer()
    client.send(request("HEAD", "/v2/health/ready"))
    head = await client.answer("HEAD")
    assert (head.status, head.body) == (200, b"")
    assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.body))
    client.send(get("/v2/health/live"))  # no stray body bytes precede this answer
    assert (await client.answer()).json() == {"live": True}
    await client.close()


async def test_unknown_paths_wrong_methods_and_percent_encoding(serve_in_process):
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    client.send(get("/v2/nowhere") + request("POST", "/v2/health/ready", b"{}") + get("/v2/models/ml%70/ready"))

    assert_error(await client.answer(), 404, "no such endpoint: GET /v2/nowhere")
    not_allowed = await client.answer("POST")
    assert_error(not_allowed, 405, "method POST is not allowed on /v2/health/ready")
    assert {method.strip() for method in not_allowed.headers["allow"].split(",")} == {"GET", "HEAD"}
    decoded = await client.answer()
    assert (decoded.status, decoded.json()) == (200, {"name": "mlp", "ready": True})
    assert client.kept_alive  # errors made by the application leave the connection open
    await client.close()


# -- compression (tests/runtime/test_triton_examples.py has the rest) --------------------------------


@pytest.mark.parametrize(
    ("accept", "coding", "decode"),
    [
        ("gzip", "gzip", gzip.decompress),
        ("gzip;q=0, deflate", "deflate", zlib.decompress),
        ("identity", None, lambda body: body),
    ],
)
async def test_answers_compressed_as_the_client_accepts(serve_in_process, reference, accept, coding, decode):
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    x = features(6)
    client.send(infer(x, **{"Accept-Encoding": accept}))
    answer = await client.answer("POST")
    assert answer.status == 200
    assert answer.headers.get("content-encoding") == coding
    if coding is not None:
        assert answer.headers["vary"] == "Accept-Encoding"
    assert_inferred(Answer(200, answer.headers, decode(answer.body)), x, reference)
    await client.close()


async def test_a_request_body_inflating_past_the_limit_is_413(serve_in_process):
    server = await serve_in_process("mlp", max_request_bytes=LIMIT)
    client = await Client.connect(server.url)
    bomb = gzip.compress(infer_body(features(7)) + b" " * 10 * LIMIT)
    assert len(bomb) < LIMIT
    client.send(request("POST", INFER, bomb, {"Content-Encoding": "gzip"}))
    assert_error(
        await client.answer("POST"), 413, f"request body exceeds max_request_bytes ({LIMIT} bytes) once inflated"
    )
    await client.close()


async def test_an_unknown_content_encoding_is_400(serve_in_process):
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    client.send(request("POST", INFER, infer_body(features(8)), {"Content-Encoding": "br"}))
    assert_error(await client.answer("POST"), 400, "unsupported Content-Encoding: br")
    await client.close()


# -- clients that leave --------------------------------------------------------------------------


async def test_a_half_closed_client_still_gets_its_answer(serve_in_process, reference):
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    x = features(9)
    client.send(infer(x))
    client.writer.write_eof()  # shutdown(SHUT_WR)
    answer = await client.answer("POST")
    assert_inferred(answer, x, reference)
    assert answer.headers["connection"] == "close"
    assert await client.closed_by_server()
    await client.close()


async def test_a_half_closed_client_gets_every_pipelined_answer(serve_in_process, reference):
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    x1, x2 = features(14), features(15)
    server.gate.close()
    client.send(infer(x1) + infer(x2))
    client.writer.write_eof()
    await server.gate.wait_entered()
    (connection,) = server.state.connections
    # The server has seen the half-close (nothing it sends shows that yet): no clock decides the order.
    await until(lambda: connection._eof)
    server.gate.open()

    first = await client.answer("POST")
    assert_inferred(first, x1, reference)
    assert "connection" not in first.headers  # the second is still owed
    last = await client.answer("POST")
    assert_inferred(last, x2, reference)
    assert last.headers["connection"] == "close"
    assert await client.closed_by_server()
    await client.close()


async def test_a_client_gone_while_its_request_computes_costs_nobody_else(serve_in_process, reference):
    server = await serve_in_process("mlp")
    gone = await Client.connect(server.url)
    server.gate.close()
    gone.send(infer(features(10)))
    await server.gate.wait_entered()
    await gone.close()
    server.gate.open()

    client = await Client.connect(server.url)
    x = features(11)
    client.send(infer(x))
    assert_inferred(await client.answer("POST"), x, reference)
    client.send(get("/v2/health/live"))
    assert (await client.answer()).status == 200
    await client.close()


# -- draining and flow control --------------------------------------------------------------------


async def test_draining_closes_after_what_has_arrived(serve_in_process):
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    server.state.draining = True  # what the drain does first
    client.send(get("/v2/health/live") + get("/"))
    first = await client.answer()
    last = await client.answer(close=True)
    assert (first.status, first.json()) == (200, {"live": True})
    assert "connection" not in first.headers
    assert (last.status, last.json(), last.headers["connection"]) == (200, {"status": "alive"}, "close")
    assert await client.closed_by_server()
    await client.close()


async def test_many_pipelined_requests_are_all_answered_in_order(serve_in_process):
    """More than MAX_PENDING (32) requests, and more bytes than one read takes (asyncio reads 256 KiB at a
    time): reading pauses and resumes, and nothing is lost or reordered."""
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    paths = {"/v2/health/live": {"live": True}, "/v2/health/ready": {"ready": True}, "/": {"status": "alive"}}
    order = [list(paths)[index % 3] for index in range(100)]
    client.send(b"".join(get(path, Padding="p" * 4000) for path in order))
    for path in order:
        answer = await client.answer()
        assert (answer.status, answer.json()) == (200, paths[path])
    assert client.kept_alive
    await client.close()


async def test_the_access_log_has_one_line_per_request_when_asked(serve_in_process, caplog):
    server = await serve_in_process("mlp", access_log=True)
    client = await Client.connect(server.url)
    with caplog.at_level("INFO", logger="kubeserve.access"):
        client.send(get("/v2/health/live") + get("/nowhere"))
        assert (await client.answer()).status == 200
        assert (await client.answer()).status == 404
    await client.close()
    lines = [record for record in caplog.records if record.name == "kubeserve.access"]
    assert [(r.event, r.method, r.path, r.status) for r in lines] == [  # type: ignore[attr-defined]
        ("request", "GET", "/v2/health/live", 200),
        ("request", "GET", "/nowhere", 404),
    ]
    assert all(r.bytes > 0 and r.seconds >= 0 for r in lines)  # type: ignore[attr-defined]


async def test_no_access_log_unless_asked(serve_in_process, caplog):
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    with caplog.at_level("INFO", logger="kubeserve.access"):
        client.send(get("/v2/health/live"))
        assert (await client.answer()).status == 200
    await client.close()
    assert not [record for record in caplog.records if record.name == "kubeserve.access"]


# -- found in review ------------------------------------------------------------------------------


async def test_a_head_past_its_limit_is_431_then_closed(serve_in_process):
    """Request line and headers are bounded (``MAX_HEAD_BYTES``): a client cannot grow the server's memory, or its
    time spent joining repeated headers, without end."""
    from kubeserve.runtime.server.http import MAX_HEAD_BYTES

    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    client.send(get("/v2/health/live"))
    assert (await client.answer()).status == 200
    padding = {f"X-Pad-{i}": "y" * 1000 for i in range(MAX_HEAD_BYTES // 1000 + 1)}
    client.send(request("GET", "/v2/health/live", headers=padding))
    assert_error(await client.answer(), 431, f"the request line and headers exceed {MAX_HEAD_BYTES} bytes")
    assert await client.closed_by_server()
    await client.close()


async def test_bodies_larger_than_the_head_limit_on_one_connection(serve_in_process, reference):
    """Only the head is bounded by ``MAX_HEAD_BYTES``: the read that ends a large body is no part of the next head
    (counting it so once refused the third 245 KB request on a connection with a 431)."""
    from kubeserve.runtime.server.http import MAX_HEAD_BYTES

    server = await serve_in_process("mlp", max_request_bytes=4 * MAX_HEAD_BYTES)
    client = await Client.connect(server.url)
    for seed in range(5):
        x = features(seed)
        body = infer_body(x)
        padded = body[:-1] + b" " * (2 * MAX_HEAD_BYTES) + body[-1:]  # JSON's whitespace: the same request
        # The head first (read alone: the 100 says so), then the whole body, which the server reads at once.
        client.send(request("POST", INFER, headers={"Expect": "100-continue", "Content-Length": str(len(padded))}))
        client.told("POST")
        interim = await client.event()
        assert isinstance(interim, h11.InformationalResponse) and interim.status_code == 100
        client.send(padded)
        assert_inferred(await client.answer("POST"), x, reference)
        assert client.kept_alive
    await client.close()


async def test_no_100_continue_once_the_body_came_without_waiting(serve_in_process, reference):
    """A client that sent its body at once is owed no interim answer, least of all after its final one."""
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    x1, x2 = features(21), features(22)
    server.gate.close()
    client.send(infer(x1))
    await server.gate.wait_entered()
    client.send(infer(x2, Expect="100-continue"))
    (connection,) = server.state.connections
    await until(lambda: connection.in_flight == 2)  # the second has arrived whole behind the first
    server.gate.open()
    first, second = await client.answer("POST"), await client.answer("POST")
    assert_inferred(first, x1, reference)
    assert_inferred(second, x2, reference)
    client.send(get("/v2/health/live"))
    third = await client.answer()
    assert (first.informational, second.informational, third.informational) == ([], [], [])
    await client.close()


async def test_requests_behind_one_whose_client_left_are_not_computed(serve_in_process):
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    server.gate.close()
    client.send(infer(features(31)) + infer(features(32)) + infer(features(33)))
    await server.gate.wait_entered()
    (connection,) = server.state.connections
    await until(lambda: connection.in_flight == 3)
    # Gone for good (a reset), not half-closed: a client that only ends its side still gets every answer.
    client.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.writer.transport.abort()
    await until(lambda: len(server.state.connections) == 0)
    server.gate.open()
    await until(lambda: server.state.in_flight == 0)
    assert len(server.gate.batches) == 1  # the one computing when the client left; the two behind it dropped
    assert (server.state.accepted, server.state.arriving) == (1, 0)


async def test_a_chunked_bodys_trailer_does_not_change_the_request(serve_in_process, reference):
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    x = features(41)
    body = infer_body(x)
    trailer = b"%x\r\n%s\r\n0\r\nContent-Encoding: gzip\r\n\r\n" % (len(body), body)
    client.send(request("POST", INFER, headers={"Transfer-Encoding": "chunked", "Trailer": "Content-Encoding"}))
    client.send(trailer)
    assert_inferred(await client.answer("POST"), x, reference)
    await client.close()


async def test_a_trailer_without_end_is_431_then_closed(serve_in_process):
    """A chunked body's trailer counts with the head (``MAX_HEAD_BYTES``), also while it is still arriving: the
    parser holds an unfinished trailer line, which must not grow without end."""
    from kubeserve.runtime.server.http import MAX_HEAD_BYTES

    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    client.send(request("POST", INFER, headers={"Transfer-Encoding": "chunked"}) + b"2\r\n{}\r\n0\r\nX-Pad: ")
    await until(lambda: any(connection.request_arriving for connection in server.state.connections))
    client.send(b"y" * (MAX_HEAD_BYTES + 1))  # read after the last chunk: all of it trailer, with no end
    assert_error(await client.answer("POST"), 431, f"the request line and headers exceed {MAX_HEAD_BYTES} bytes")
    assert await client.closed_by_server()
    await client.close()


async def test_an_absolute_form_target_is_served_as_its_path(serve_in_process):
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    client.send(b"GET http://test/v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n")
    answer = await client.answer()
    assert (answer.status, answer.json()) == (200, {"live": True})
    await client.close()


async def test_data_after_a_compressed_body_is_400(serve_in_process):
    server = await serve_in_process("mlp")
    client = await Client.connect(server.url)
    body = gzip.compress(infer_body(features(51))) + b"more"
    client.send(request("POST", INFER, body, headers={"Content-Encoding": "gzip", "Content-Length": str(len(body))}))
    assert_error(await client.answer("POST"), 400, "the request body has 4 bytes after its compressed data")
    await client.close()


async def test_after_a_refusal_the_server_reads_on_until_the_client_closes(serve_in_process):
    """Closing at once, with the client's bytes unread, would reset the connection: the server ends its side and
    reads on (throwing the bytes away) until the client is done."""
    server = await serve_in_process("mlp", max_request_bytes=LIMIT)
    client = await Client.connect(server.url)
    client.send(request("POST", INFER, headers={"Content-Length": str(LIMIT * 4)}) + b"x" * LIMIT)
    assert_error(await client.answer("POST"), 413, "request body exceeds max_request_bytes")
    assert await client.closed_by_server()  # its side: the connection is still open for the client's bytes
    (connection,) = server.state.connections
    client.send(b"x" * LIMIT)  # read and thrown away
    client.writer.write_eof()
    await until(lambda: len(server.state.connections) == 0)
    assert connection.in_flight == 0
    await client.close()


async def test_after_a_refusal_a_silent_client_is_closed_after_the_linger(serve_in_process):
    """On a real loop and real time: the linger's timer is armed, and closes a client that neither sends nor
    closes (LINGER_SECONDS)."""
    server = await serve_in_process("mlp", max_request_bytes=LIMIT)
    client = await Client.connect(server.url)
    client.send(request("POST", INFER, headers={"Content-Length": str(LIMIT * 4)}))
    assert_error(await client.answer("POST"), 413, "request body exceeds max_request_bytes")
    assert await client.closed_by_server()
    await until(lambda: len(server.state.connections) == 0)
    await client.close()


async def test_idle_connections_are_closed_after_the_idle_timeout(serve_in_process, reference):
    """On a real loop and real time: a connection with nothing being answered and nothing received for
    ``idle_timeout_seconds`` is closed, one whose request stopped arriving halfway after a 408; one whose request
    computes for longer stays open, and answers."""
    server = await serve_in_process("mlp", idle_timeout_seconds=0.2)
    server.gate.close()
    computing = await Client.connect(server.url)
    x = features(7)
    computing.send(infer(x))
    await server.gate.wait_entered()

    idle = await Client.connect(server.url)
    idle.send(get("/v2/health/live"))
    assert (await idle.answer()).status == 200
    stalled = await Client.connect(server.url)
    stalled.send(request("POST", INFER, headers={"Content-Length": "100"}) + b'{"inputs": ')
    assert_error(await stalled.answer("POST"), 408, "the request did not arrive whole: nothing came for 0.2 s")
    assert await stalled.closed_by_server()
    await stalled.close()  # the server reads on after a refusal until the client is done
    assert await idle.closed_by_server()

    # Both timed out after the request being computed was read: only what it waits for keeps it open.
    assert server.state.connections.timed_out == 2
    await until(lambda: len(server.state.connections) == 1)
    server.gate.open()
    assert_inferred(await computing.answer("POST"), x, reference)
    assert computing.kept_alive
    assert await computing.closed_by_server()  # and once answered, it is idle too
    assert server.state.connections.timed_out == 3
    for client in (computing, idle):
        await client.close()


async def test_an_answer_the_client_is_slow_to_take_keeps_its_connection(serve_in_process, reference):
    """On a real loop and real time: a connection whose answer still waits in the server's buffers is not idle,
    however long the client takes to read it; once taken, the connection is idle, and closed in its turn."""
    server = await serve_in_process("mlp", idle_timeout_seconds=0.2, max_batch_size=2048)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window from the start
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
    slow = Client(*await asyncio.open_connection(sock=sock))
    await until(lambda: len(server.state.connections) == 1)
    (connection,) = server.state.connections
    assert connection.transport is not None
    connection.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    x = features(8, rows=2048)  # an answer of about 400 KB, past the kernel's buffers (both made small)
    slow.send(infer(x))
    await until(lambda: connection.in_flight == 0 and connection.writing)

    other = await Client.connect(server.url)  # idle from now: once it is closed, the slow one has waited as long
    assert await other.closed_by_server()
    assert server.state.connections.timed_out == 1
    assert connection in list(server.state.connections)

    assert_inferred(await slow.answer("POST"), x, reference)
    assert slow.kept_alive
    assert await slow.closed_by_server()
    assert server.state.connections.timed_out == 2
    for client in (slow, other):
        await client.close()
