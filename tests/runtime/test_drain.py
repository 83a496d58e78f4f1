"""The drain on SIGTERM as keep-alive clients see it (clients of a ClusterIP Service keep their connection
to one pod until the server closes it). Counted on the client side, per connection: a request sent on a
connection opened before the signal must be answered, never reset; only new connections may be refused,
and only once the listener has closed."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time

ROWS = 32  # a larger body keeps the server's event loop busier, so requests sit unread in the sockets
BODY = json.dumps(
    {"inputs": [{"name": "features", "shape": [ROWS, 32], "datatype": "FP32", "data": [0.5] * (ROWS * 32)}]}
).encode()
REQUEST = (
    f"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    f"Content-Length: {len(BODY)}\r\n\r\n"
).encode() + BODY


def http_request(method: str, path: str) -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n".encode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status_line = await reader.readuntil(b"\r\n")
    headers: dict[str, str] = {}
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, value = line.decode().split(":", 1)
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


class KeepAliveLoad:
    """Closed-loop clients, one connection each, sending the next request as soon as an answer arrives. After
    an answer with ``Connection: close`` a client reconnects (as a pool would) until a connect is refused."""

    def __init__(self, port: int, clients: int) -> None:
        self.port = port
        self.clients = clients
        self.signalled = False
        self.answered_before_signal = 0
        self.statuses: list[int] = []
        self.failures: list[str] = []  # requests on a connection opened before the signal that got no answer
        self.failures_on_late_connections: list[str] = []
        self.refused_before_signal = 0
        self.refused_after_signal = 0
        self.enough = asyncio.Event()

    async def run(self) -> None:
        await asyncio.gather(*(self._client() for _ in range(self.clients)))

    async def _client(self) -> None:
        while True:
            opened_before_signal = not self.signalled
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except (ConnectionRefusedError, ConnectionResetError):  # refused, or reset before it was accepted
                if self.signalled:
                    self.refused_after_signal += 1
                else:
                    self.refused_before_signal += 1
                return
            try:
                while True:
                    writer.write(REQUEST)
                    try:
                        status, headers, _ = await read_response(reader)
                    except (asyncio.IncompleteReadError, ConnectionError) as error:
                        when = "before" if opened_before_signal else "after"
                        failed = f"{type(error).__name__} on a connection opened {when} the signal"
                        (self.failures if opened_before_signal else self.failures_on_late_connections).append(failed)
                        return
                    self.statuses.append(status)
                    if not self.signalled:
                        self.answered_before_signal += 1
                        if self.answered_before_signal >= 20 * self.clients:
                            self.enough.set()
                    if headers.get("connection") == "close":
                        break
            finally:
                writer.close()


def test_sigterm_under_keep_alive_load_answers_every_request_sent_on_an_open_connection(start_runtime):
    # A race: one lucky run proves little, so three servers, each signalled mid-load.
    for _ in range(3):
        server = start_runtime("mlp", "--drain-grace-seconds", "5").wait_ready()  # ample: clients never idle
        load = KeepAliveLoad(server.port, 32)
        asyncio.run(server.sigterm_under(load))

        assert load.failures == []
        assert set(load.statuses) == {200}
        assert load.refused_before_signal == 0
        assert load.refused_after_signal >= 1  # the listener closed: reconnecting clients were refused
        assert server.wait() == 0
        stopped = server.wait_for_event("stopped")
        assert stopped["connections_closed_with_request_unread"] == 0
        assert stopped["refused"] == 0  # nobody was told 503 "shutting down"
        # Every answer the clients got, the server counts as answered; requests refused by a connection
        # opened just as the listener closed (never accepted) count nowhere.
        assert stopped["answered"] == stopped["accepted"] == len(load.statuses)


def test_sigterm_to_a_pod_of_workers_drains_every_worker_without_losing_a_request(start_runtime):
    # The supervisor passes the signal on; each worker drains the connections the kernel gave it.
    for _ in range(2):
        server = start_runtime("mlp", "--workers", "2", "--drain-grace-seconds", "5").wait_ready(workers=2)
        load = KeepAliveLoad(server.port, 32)
        asyncio.run(server.sigterm_under(load))

        assert load.failures == []
        assert set(load.statuses) == {200}
        assert load.refused_before_signal == 0
        assert server.wait() == 0
        stopped = [event for event in server.events if event.get("event") == "stopped" and event["worker"] in (0, 1)]
        assert len(stopped) == 2
        assert all(event["connections_closed_with_request_unread"] == event["refused"] == 0 for event in stopped)
        assert sum(event["answered"] for event in stopped) == len(load.statuses)


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


def test_after_sigterm_open_connections_are_served_and_told_to_close(start_runtime):
    server = start_runtime("mlp", "--drain-grace-seconds", "30").wait_ready()

    async def scenario() -> None:
        probes = [await _open(server.port) for _ in range(3)]
        for reader, writer in probes:  # pooled connections that have served a request, now idle
            writer.write(http_request("GET", "/v2/health/live"))
            assert (await read_response(reader))[0] == 200
        server.signal(signal.SIGTERM)
        await asyncio.to_thread(server.wait_for_event, "draining")

        # New connections are refused: the listener is closed.
        try:
            await _open(server.port)
            raise AssertionError("a new connection was accepted after SIGTERM")
        except ConnectionRefusedError:
            pass

        (ready_reader, ready_writer), (live_reader, live_writer), (infer_reader, infer_writer) = probes
        ready_writer.write(http_request("GET", "/v2/health/ready"))
        status, headers, body = await read_response(ready_reader)
        assert (status, headers["connection"]) == (503, "close")
        assert "draining" in json.loads(body)["reason"]

        live_writer.write(http_request("GET", "/v2/health/live"))
        status, headers, _ = await read_response(live_reader)
        assert (status, headers["connection"]) == (200, "close")

        infer_writer.write(REQUEST)
        status, headers, body = await read_response(infer_reader)
        assert (status, headers["connection"]) == (200, "close")
        assert json.loads(body)["outputs"][0]["shape"] == [ROWS, 10]
        for reader, writer in probes:
            assert await reader.read() == b""  # the server closed each after its answer
            writer.close()

    asyncio.run(scenario())
    assert server.wait() == 0  # the last connection closed: no need to wait for the 30 s grace
    stopped = server.wait_for_event("stopped")
    assert (stopped["answered"], stopped["refused"], stopped["connections_closed_idle"]) == (1, 0, 0)


def test_an_idle_connection_is_closed_after_the_grace_and_one_used_before_it_is_answered(start_runtime):
    server = start_runtime("mlp", "--drain-grace-seconds", "3").wait_ready()

    async def scenario() -> None:
        (idle_reader, idle_writer), (used_reader, used_writer) = [await _open(server.port) for _ in range(2)]
        for reader, writer in ((idle_reader, idle_writer), (used_reader, used_writer)):
            writer.write(http_request("GET", "/v2/health/live"))
            assert (await read_response(reader))[0] == 200
        server.signal(signal.SIGTERM)
        await asyncio.to_thread(server.wait_for_event, "draining")
        # Within the grace, a pooled client picks its idle connection for a request: it is served.
        used_writer.write(REQUEST)
        status, headers, _ = await read_response(used_reader)
        assert (status, headers["connection"]) == (200, "close")
        # The connection nobody uses is closed by the server once quiet for the grace: an orderly close
        # (end of stream), not a reset, and no request was lost on it.
        assert await idle_reader.read() == b""
        idle_writer.close()
        used_writer.close()

    asyncio.run(scenario())
    assert server.wait() == 0
    stopped = server.wait_for_event("stopped")
    assert stopped["connections_closed_idle"] == 1
    assert stopped["connections_closed_with_request_unread"] == 0


def test_a_client_that_connected_before_the_signal_and_sends_slowly_is_answered(start_runtime):
    server = start_runtime("mlp", "--drain-grace-seconds", "0.2").wait_ready()
    slow = socket.create_connection(("127.0.0.1", server.port))
    slow.sendall(REQUEST[:10])  # the request line has begun arriving
    server.signal(signal.SIGTERM)
    server.wait_for_event("draining")
    # The client is slow: it sends the rest well after the grace. Bytes of a request had arrived, so the
    # connection is never taken for idle.
    time.sleep(0.5)  # the scenario, not a synchronisation: the client is slower than the grace
    slow.sendall(REQUEST[10:])
    reader = slow.makefile("rb")
    status_line = reader.readline()
    assert status_line.startswith(b"HTTP/1.1 200")
    slow.close()
    assert server.wait() == 0
    assert server.wait_for_event("stopped")["connections_closed_idle"] == 0


def test_a_port_in_use_is_one_log_line_and_exit_4(start_runtime):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = start_runtime("mlp", "--port", str(port))
        assert server.wait() == 4
    failed = server.wait_for_event("listen_failed")
    assert (failed["host"], failed["port"]) == ("127.0.0.1", port)
    assert "in use" in failed["reason"]
    assert "Traceback" not in "".join(server.lines)


async def test_a_request_still_unread_in_the_kernel_keeps_its_connection_open(serve_in_process):
    """The race behind lost keep-alive requests, made deterministic: the request's bytes are in the socket
    and the event loop has not read them yet (it is running this test) when the drain looks for idle
    connections. That connection is not idle: it is answered, then closed."""
    server = await serve_in_process("mlp")
    tracker = server.state.connections
    reader, writer = await asyncio.open_connection("127.0.0.1", int(server.url.rsplit(":", 1)[1]))
    writer.write(http_request("GET", "/v2/health/live"))
    assert (await read_response(reader))[0] == 200  # a pooled connection, idle since its last answer

    server.state.draining = True
    writer.write(REQUEST)  # into the kernel now; the loop reads it only once this test yields
    loop = asyncio.get_running_loop()
    tracker.close_idle(since=loop.time() - 60, grace=0)
    assert tracker.closed_idle == 0

    status, headers, _ = await read_response(reader)
    assert (status, headers["connection"]) == (200, "close")
    assert await reader.read() == b""
    writer.close()
