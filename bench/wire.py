"""An HTTP/1.1 client for hostile and exact requests: requests go out as raw bytes, and every answer is parsed by h11,
an independent and strict HTTP/1.1 implementation, so that what is counted is what a client sees (and proves the
answers well-formed). Used by the HTTP layer's tests and by bench/http_attacks.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import h11
import numpy as np

INFER = "/v2/models/mlp/infer"
# Only against a hang: nothing waits on a clock for anything to happen.
READ_TIMEOUT = 30


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names lower-case
    body: bytes
    informational: list[int] = field(default_factory=list)  # 1xx statuses that came before it

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """One connection to the server. Requests are written as raw bytes; h11 is told of each (its method, and
    whether the client asked to close) only so that it knows how to frame the answer it then parses."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, read_timeout: float = READ_TIMEOUT
    ) -> None:
        self.reader = reader
        self.read_timeout = read_timeout  # the longest wait for the next event
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)
        self.received = 0  # bytes read from the server
        self._told = False

    @classmethod
    async def connect(cls, url: str, read_timeout: float = READ_TIMEOUT, send_buffer: int | None = None) -> Client:
        """A connection to ``http://host:port``; ``send_buffer`` sets the kernel's (SO_SNDBUF) before connecting."""
        address = urlsplit(url)
        sock = socket.socket()
        if send_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (address.hostname, address.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer, read_timeout)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def told(self, method: str = "GET", close: bool = False) -> None:
        """Tell h11 that a request went out (once per answer, before reading it)."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        headers = [("Host", "test"), *([("Connection", "close")] if close else [])]
        self.h11.send(h11.Request(method=method, target="/", headers=headers))
        self.h11.send(h11.EndOfMessage())
        self._told = True

    async def event(self) -> Any:
        """h11's next event, reading from the socket as it needs."""
        async with asyncio.timeout(self.read_timeout):
            while True:
                event = self.h11.next_event()
                if event is not h11.NEED_DATA:
                    return event
                try:
                    data = await self.reader.read(65536)
                except ConnectionResetError:
                    data = b""  # the end of the stream, as far as answers go
                self.received += len(data)
                self.h11.receive_data(data)  # b"" is the end of the stream

    async def answer(self, method: str = "GET", close: bool = False) -> Answer:
        """The next whole answer, any 1xx before it included."""
        if not self._told:
            self.told(method, close)
        self._told = False
        informational: list[int] = []
        event = await self.event()
        while isinstance(event, h11.InformationalResponse):
            informational.append(event.status_code)
            event = await self.event()
        assert isinstance(event, h11.Response), event
        body = b""
        while not isinstance(chunk := await self.event(), h11.EndOfMessage):
            assert isinstance(chunk, h11.Data), chunk
            body += chunk.data
        headers = {name.decode(): value.decode() for name, value in event.headers}
        return Answer(event.status_code, headers, body, informational)

    async def closed_by_server(self) -> bool:
        """Whether the server closed the connection after its last answer, with nothing more sent."""
        return isinstance(await self.event(), h11.ConnectionClosed)

    @property
    def kept_alive(self) -> bool:
        """h11 read the last answer as one that keeps the connection open."""
        return self.h11.their_state is h11.DONE and self.h11.our_state is h11.DONE

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):  # the server had closed it already
            await self.writer.wait_closed()


def request(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None, version: str = "1.1"
) -> bytes:
    """A raw request: Host, then ``headers``, then Content-Length when there is a body."""
    lines = [f"{method} {path} HTTP/{version}", "Host: test"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body and not any(name.lower() in ("content-length", "transfer-encoding") for name in headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def get(path: str, **headers: str) -> bytes:
    return request("GET", path, headers=headers)


def chunked(*chunks: bytes) -> bytes:
    """A chunked body, its last chunk included."""
    return b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"


def features(seed: int, rows: int = 1) -> np.ndarray:
    """Inputs for the sample mlp (``features`` FP32 [rows, 32]) exact in JSON, different for each seed."""
    return (np.random.default_rng(seed).integers(-64, 64, size=(rows, 32)) / 8).astype(np.float32)


def infer_body(x: np.ndarray) -> bytes:
    document = {
        "inputs": [{"name": "features", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
    }
    return json.dumps(document, separators=(",", ":")).encode()


def infer(x: np.ndarray, **headers: str) -> bytes:
    """A raw inference request for the sample mlp."""
    return request("POST", INFER, infer_body(x), headers)


def assert_error(answer: Answer, status: int, starts: str) -> None:
    assert answer.status == status, (answer.status, answer.body)
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["error"].startswith(starts), answer.json()


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the event loop until ``condition`` holds (the server's side has got that far)."""
    give_up = asyncio.get_running_loop().time() + READ_TIMEOUT
    while not condition():
        assert asyncio.get_running_loop().time() < give_up, "the server never got there"
        await asyncio.sleep(0)


def probabilities(answer: Answer) -> np.ndarray:
    """The sample mlp's output in a 200 answer."""
    assert answer.status == 200, answer.body
    (output,) = answer.json()["outputs"]
    assert output["name"] == "probabilities"
    return np.array(output["data"], dtype=np.float32).reshape(output["shape"])


Reference = Callable[[str, dict[str, np.ndarray]], list[np.ndarray]]


def assert_inferred(answer: Answer, x: np.ndarray, reference: Reference) -> None:
    """``answer`` is the sample mlp's 200 for ``x``, as in-process ONNX Runtime (``reference``) computes it."""
    np.testing.assert_allclose(probabilities(answer), reference("mlp", {"features": x})[0], rtol=1e-5, atol=1e-7)
