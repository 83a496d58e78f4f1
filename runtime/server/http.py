"""HTTP/1.1 on a connection: requests parsed with httptools, handed to the application one at a time and
answered in the order they came (pipelining included), keep-alive by default.

Why not aiohttp's server: on the bench's tiny model aiohttp alone cost 65-170 µs of CPU per request, more
than the runtime's whole request path; this protocol costs 22-41 (``bench/http_layer.py``, docs/benchmarks.md).

What it does beside parsing:

- bodies are read whole before the handler runs, into one buffer that never moves, up to
  ``max_request_bytes``: a larger one (by its ``Content-Length``, or as chunks arrive) is answered 413 at once;
- the bodies held by the process's connections (arriving, or read and waiting their turn) are bounded together by
  ``max_buffered_request_bytes``: the body that would pass it is answered 503 with ``Retry-After``, so that the
  pod's memory is never at its clients' mercy;
- a chunked body's framing (chunk-size lines, extensions, trailer) may outweigh the data it carries by at most
  ``CHUNK_FRAMING_ALLOWANCE``: past it, 400 (tiny chunks cost the server far more than they carry, and a chunk-size
  line without end would be read forever);
- a request's head must arrive whole within ``request_head_timeout_seconds``, and its body at
  ``min_request_body_bytes_per_second`` at least over each span of ``request_body_rate_window_seconds``: else 408
  (``server.connections`` looks);
- an HTTP/1.1 request without ``Host``, or with two, is answered 400 (RFC 9112 §3.2); an HTTP/1.0 request with
  ``Transfer-Encoding`` is served, then the connection closed, since its framing cannot be trusted (§6.1);
- percent-encoding in the path is decoded before routing, except an encoded slash (``%2F``), which never
  separates segments (a path-based rule in front of the server sees the segments the server routes on);
- after a refusal the connection is closed gently: the server ends its side and reads on, throwing away, for up
  to ``LINGER_SECONDS`` or ``LINGER_BYTES`` or until the client closes (closing with its bytes unread would reset
  the connection, and the reset can reach the client before the refusal does);
- ``Expect: 100-continue`` is answered ``100 Continue`` when the request is next in line, or 413 (and the
  client sends no body); an HTTP/1.0 request's expectation is ignored (RFC 9110 §10.1.1);
- a malformed request is answered 400 and the connection closed; so is a request line and headers (with a chunked
  body's trailer) over ``MAX_HEAD_BYTES`` (431); an ``Upgrade`` request is answered as HTTP/1.1 and the connection
  closed;
- an answer carries ``Connection: close`` when the client asked for it, or when the server is draining and
  nothing more has arrived on the connection; the connection closes once it is written;
- reading pauses while ``MAX_PENDING`` requests (or ``max_request_bytes`` of their bodies) wait on one
  connection, and answering pauses while the transport's buffer is full;
- a client that half-closes its side still gets the answers to what it sent; requests waiting behind the one
  being answered when a client goes away are dropped, not computed;
- a connection idle for ``idle_timeout_seconds`` is closed (``server.connections``); one whose request stopped
  arriving halfway is answered 408 first;
- TCP keep-alive probes find peers that vanished without closing.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import mmap
import re
import socket
import time
from collections import deque
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import httptools
from kubeserve.runtime.server.connections import ConnectionTracker, Deadlines, TrackedConnection
from kubeserve.runtime.server.messages import Request, Response
from kubeserve.runtime.server.responses import json_response
from kubeserve.runtime.server.unavailable import RETRY_AFTER_SECONDS

if TYPE_CHECKING:
    from kubeserve.runtime.server.application import Application

log = logging.getLogger(__name__)

# Requests received on one connection and not answered yet, past which it is not read from.
MAX_PENDING = 32
# A request line and headers together (aiohttp allowed 8190 bytes a line): past it, 431 and the connection closed.
MAX_HEAD_BYTES = 64 * 1024
# A chunked body's framing (chunk-size lines, their extensions, CRLFs, trailer) may exceed the data it carries by
# this much (Node.js bounds chunk extensions at 16 KiB, CVE-2024-22019): past it, 400.
CHUNK_FRAMING_ALLOWANCE = 64 * 1024
# After a refusal, how long and how much the server reads on before it closes (aiohttp lingered 10 s).
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024
# Bodies up to this size go out in one write with their head; larger ones as a second buffer, not copied.
JOIN_BODY_BYTES = 16 * 1024
SERVER = "kubeserve"
_STATUS_LINES = {status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n" for status in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_ENCODED_SLASH = re.compile("%2f", re.IGNORECASE)


class Refusal(enum.StrEnum):
    """Why the HTTP layer answered a request itself, before any handler: ``kubeserve_http_refusals_total``'s
    reasons."""

    MALFORMED = "malformed"  # 400: not HTTP/1.x as RFC 9112 frames it
    MISSING_HOST = "missing_host"  # 400: an HTTP/1.1 request without exactly one Host
    CHUNK_FRAMING = "chunk_framing"  # 400: chunk framing outweighs the data past CHUNK_FRAMING_ALLOWANCE
    HEAD_TOO_LARGE = "head_too_large"  # 431: past MAX_HEAD_BYTES
    BODY_TOO_LARGE = "body_too_large"  # 413: past max_request_bytes
    BUFFERS_FULL = "buffers_full"  # 503: past max_buffered_request_bytes, across the process
    HEAD_TIMEOUT = "head_timeout"  # 408: the head took longer than request_head_timeout_seconds
    BODY_TOO_SLOW = "body_too_slow"  # 408: the body came slower than min_request_body_bytes_per_second
    STALLED = "stalled"  # 408: nothing came for idle_timeout_seconds, halfway through a request


def decode_path(path: str) -> str:
    """``path`` percent-decoded, but for encoded slashes: ``%2F`` stays as it is, inside its segment."""
    return "%2F".join(unquote(part) for part in _ENCODED_SLASH.split(path))


class _Date:
    """The ``Date`` header's value, formatted once a second."""

    second = 0
    value = ""

    @classmethod
    def now(cls) -> str:
        second = int(time.time())
        if second != cls.second:
            cls.second, cls.value = second, formatdate(second, usegmt=True)
        return cls.value


def head(response: Response, length: int, keep_alive: bool, http10: bool) -> bytes:
    """The status line and headers of ``response``, whose body is ``length`` bytes."""
    lines = [
        _STATUS_LINES.get(response.status) or f"HTTP/1.1 {response.status} \r\n",
        f"Content-Type: {response.content_type}\r\nContent-Length: {length}\r\nDate: {_Date.now()}\r\n"
        f"Server: {SERVER}\r\n",
    ]
    if response.coding is not None:
        lines.append(f"Content-Encoding: {response.coding}\r\nVary: Accept-Encoding\r\n")
    for name, value in response.headers.items():
        lines.append(f"{name}: {value}\r\n")
    if not keep_alive:
        lines.append("Connection: close\r\n")
    elif http10:
        lines.append("Connection: keep-alive\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


class HttpConnection(TrackedConnection):
    """One client connection speaking HTTP/1.x to ``app``."""

    def __init__(self, app: Application, tracker: ConnectionTracker) -> None:
        super().__init__(tracker)
        self._app = app
        self._limit = app.max_request_bytes
        self._parser = httptools.HttpRequestParser(self)
        self._loop = tracker.loop
        # What to answer, in order: a request for the application, or a refusal made here (400, 408, 413, 431, 503).
        self._pending: deque[Request | Response] = deque()
        self._answering: asyncio.Task[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._reading = True
        self._closing = False  # no more requests: the connection closes after what is pending
        self._close_after = False  # the request being read is the last: its framing cannot be trusted
        self._continue_owed = False  # a request waits for "100 Continue" until those before it are answered
        self._eof = False
        self._lingering = 0  # bytes still to be read and thrown away before closing, after a refusal
        self._linger_timer: asyncio.TimerHandle | None = None
        self._pending_bytes = 0  # of the waiting requests' bodies
        # The request being parsed: its head (request line and headers) is read while _in_head, a chunked body's
        # trailer (after its last chunk) while _in_trailer; _head_bytes counts what the parser gave of both,
        # _head_read the reads it has not finished them in (the parser buffers those).
        self._in_head = True
        self._in_trailer = False
        self._head_bytes = 0
        self._head_read = 0
        self._boundary = False
        # A read holding none of a message's edges (its start, the end of its head, its end) is all body: what of it
        # is not data is framing (_framing), which CHUNK_FRAMING_ALLOWANCE bounds.
        self._edge_in_read = False
        self._data_in_read = 0
        self._framing = 0
        # When the head began to arrive, and since when (with how much of it then) the body's rate is measured, on
        # the loop's clock: request_head_timeout_seconds and min_request_body_bytes_per_second.
        self._head_since = 0.0
        self._body_since = 0.0
        self._body_base = 0
        self._url = b""
        self._fields: list[tuple[bytes, bytes]] = []  # the head's header lines, as the parser gives them
        self._headers: dict[str, str] = {}
        self._body = b""  # the body's first piece
        self._buffer: mmap.mmap | None = None  # the whole body, once a second piece came
        self._expected = 0  # the body's Content-Length, 0 when chunked
        self._size = 0
        self._held = 0  # of the body being read, counted in the process's buffered bytes

    # -- the transport's calls ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            if self._lingering:
                self._lingering -= len(data)
                if self._lingering <= 0:
                    self.close()
            return
        self.last_activity = self._loop.time()
        self._boundary = False
        self._edge_in_read = False
        self._data_in_read = 0
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Answered as HTTP/1.1; whatever follows is another protocol, which this server does not speak.
            self._stop_reading()
        except httptools.HttpParserError as error:
            if not self._closing:
                reason = str(error) or type(error).__name__
                self._refuse(Refusal.MALFORMED, 400, f"malformed HTTP request: {reason}")
        else:
            if self._closing:
                return
            if self._in_head or self._in_trailer:
                # A head (or trailer) the parser has not finished: all of this read is part of it, unless it began
                # in it, or a request ended there (then what the parser holds is at most this read).
                self._head_read = 0 if self._boundary else self._head_read + len(data)
                if self._head_read > MAX_HEAD_BYTES:
                    self._refuse_head()
                    return
            if not self._in_head and not self._edge_in_read:
                self._framing += len(data) - self._data_in_read
                if self._framing > self._size + CHUNK_FRAMING_ALLOWANCE:
                    message = (
                        f"the chunked body's framing (chunk sizes, extensions, trailer) exceeds its data by more "
                        f"than {CHUNK_FRAMING_ALLOWANCE} bytes: send fewer, larger chunks"
                    )
                    self._refuse(Refusal.CHUNK_FRAMING, 400, message)

    def eof_received(self) -> bool:
        self._eof = True
        if self._lingering:
            return False  # the client is done sending: close
        # Something to answer: keep the transport open to write it, and close after the last answer.
        return self._answering is not None or bool(self._pending)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._closing = True
        self._drop_body()
        self._drop_pending()  # nobody to answer: not computed (the one being answered finishes)
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self.last_activity = self._loop.time()  # the client is taking its answer: not idle
        self._writable.set()

    # -- httptools' callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._edge_in_read = True
        if self._closing:
            return  # a request after the last one this connection answers
        self._in_head = True
        self._boundary = True
        self._head_bytes = 0
        self._head_since = self.last_activity
        self.request_arriving = True
        self._url = b""
        self._fields = []
        self._body, self._buffer = b"", None
        self._size = 0
        self._framing = 0

    def on_url(self, url: bytes) -> None:
        if self._closing:
            return
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse_head()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._closing:
            return
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse_head()
        elif self._in_head:  # not a chunked body's trailer, bounded with the head and otherwise ignored
            self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_read = 0
        self._edge_in_read = True
        self._body_since = self.last_activity
        self._body_base = 0
        if self._closing:
            return
        # Decoded and joined once, here: a value per line joined by concatenation is quadratic in repeated lines.
        headers: dict[str, str] = {}
        repeated: dict[str, list[str]] = {}
        for name, value in self._fields:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            previous = headers.setdefault(key, text)
            if previous is not text:  # the name came before
                repeated.setdefault(key, [previous]).append(text)
        for key, values in repeated.items():
            headers[key] = ", ".join(values)
        self._headers = headers
        hosts = len(repeated["host"]) if "host" in repeated else int("host" in headers)
        http10 = self._parser.get_http_version() == "1.0"
        if hosts != 1 and not http10:
            message = "an HTTP/1.1 request needs exactly one Host header" + (f", not {hosts}" if hosts else "")
            self._refuse(Refusal.MISSING_HOST, 400, message)
            return
        if http10 and "transfer-encoding" in headers:
            self._close_after = True  # RFC 9112 §6.1: served, then closed
        length = headers.get("content-length")
        self._expected = int(length) if length is not None and length.isdigit() else 0
        if self._expected > self._limit:
            self._refuse_too_large()
            return
        if headers.get("expect", "").lower() == "100-continue" and not http10:
            if not self.in_flight:
                self._send_continue()
            else:
                self._continue_owed = True  # after the answers owed before it (in_flight counts them)

    def on_chunk_header(self) -> None:
        # The last chunk (size 0) has no body: a trailer may follow it. Any other chunk's body clears this.
        self._in_trailer = True
        self._boundary = True

    def on_chunk_complete(self) -> None:
        self._in_trailer = False

    def on_body(self, body: bytes) -> None:
        self._in_trailer = False
        self._continue_owed = False  # the client sends without waiting for it
        size = len(body)
        self._data_in_read += size
        if self._closing:
            return
        self._size += size
        if self._size > self._limit:
            self._refuse_too_large()
            return
        if not self._app.hold(size):
            self._refuse_buffers_full()
            return
        self._held += size
        if self._buffer is not None:
            self._buffer.write(body)
        elif not self._body:
            self._body = body  # most bodies come in one piece: kept as they are
        else:
            # One buffer for the whole body (a bytes object per chunk would cost ~50 bytes each beside the data),
            # reserved at its largest and filled in place: the kernel gives it memory only as it is written, and it
            # never moves (a buffer that grows can be copied, twice the body at once).
            self._buffer = mmap.mmap(-1, self._expected or self._limit)
            self._buffer.write(self._body)
            self._buffer.write(body)

    def on_message_complete(self) -> None:
        self._in_head = True  # what follows is the next request's head
        self._boundary = True
        self._edge_in_read = True
        self._continue_owed = False
        if self._closing:
            return
        target = self._url.decode("latin-1")
        if not target.startswith("/"):  # absolute-form (http://host/path), which servers must accept too
            parts = urlsplit(target)
            target = f"{parts.path or '/'}?{parts.query}" if parts.query else parts.path or "/"
        path, _, query = target.partition("?")
        if "%" in path:
            path = decode_path(path)
        parser = self._parser
        request = Request(
            parser.get_method().decode("latin-1"),
            path,
            query,
            self._headers,
            self._body if self._buffer is None else memoryview(self._buffer)[: self._size],
            keep_alive=parser.should_keep_alive() and not parser.should_upgrade() and not self._close_after,
            version=parser.get_http_version(),
        )
        self._body, self._buffer = b"", None
        self._held = 0  # the waiting request's now, until it is handled
        self._app.received()
        self._enqueue(request)
        if self._close_after:
            self._stop_reading()

    # -- answering ----------------------------------------------------------------------------------

    def _enqueue(self, item: Request | Response) -> None:
        self.request_received()
        self._pending.append(item)
        self._pending_bytes += len(item.body)
        if len(self._pending) >= MAX_PENDING or self._pending_bytes > self._limit:
            self._pause_reading()
        if self._answering is None:
            self._answering = self._loop.create_task(self._answer_pending())

    async def _answer_pending(self) -> None:
        try:
            while self._pending:
                item = self._pending.popleft()
                self._pending_bytes -= len(item.body)
                if isinstance(item, Response):  # a refusal made here: the connection closes after it
                    self._write(item, None, keep_alive=False)
                    self.request_answered()
                    self._close_gently()
                    return
                self._app.release(len(item.body))  # the handler's from here on
                response = await self._app.handle(item)
                # The last answer on a connection the client half-closed, or that a draining server ends
                # (unless more has arrived on it, read or still in the kernel).
                last = not self._pending and (
                    self._eof or (self._app.draining and not self.request_arriving and not self.unread_bytes())
                )
                keep_alive = item.keep_alive and not last
                self._write(response, item, keep_alive)
                self.request_answered()
                if not keep_alive:
                    self._close()
                    return
                if self._continue_owed and not self.in_flight:
                    self._send_continue()
                caught_up = len(self._pending) < MAX_PENDING // 2 and self._pending_bytes <= self._limit // 2
                if not self._reading and not self._closing and caught_up:
                    self._resume_reading()
                if not self._writable.is_set():
                    await self._writable.wait()
            if self._eof:
                self._close()
        except Exception:  # a fault of this protocol's (the application answers its own): nothing more is answered
            log.exception("answering failed", extra={"event": "connection_failed"})
            self._close()
            if self.transport is not None:
                self.transport.abort()
        finally:
            self._answering = None

    def _write(self, response: Response, request: Request | None, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return  # the client went away; its answer is dropped
        http10 = request is not None and request.version == "1.0"
        body = response.body
        data = head(response, len(body), keep_alive, http10)
        if request is not None and request.method == "HEAD":
            transport.write(data)
        elif len(body) <= JOIN_BODY_BYTES:
            transport.write(data + body)
        else:
            transport.writelines((data, body))

    # -- deadlines ----------------------------------------------------------------------------------

    def expire(self, now: float, deadlines: Deadlines) -> bool:
        if self._closing or self.closing:
            return False  # closing already: after its last answer, or on the linger's own timer
        if not self.request_arriving:
            return super().expire(now, deadlines)
        late = self._late(now, deadlines)
        if late is None or self.unread_bytes():
            return False  # on time, or the server has not read what the client sent
        reason, message = late
        self._refuse(reason, 408, message)
        return True

    def _late(self, now: float, deadlines: Deadlines) -> tuple[Refusal, str] | None:
        """Why the request arriving is too late (its 408's reason and message), or None while it is on time (and
        a span of the body's rate that has passed is followed by the next)."""
        if deadlines.idle_seconds and now - self.last_activity > deadlines.idle_seconds:
            return Refusal.STALLED, f"the request did not arrive whole: nothing came for {deadlines.idle_seconds:g} s"
        if not self._reading or self._continue_owed:
            return None  # the server holds it up, not the client
        if self._in_head:
            if deadlines.head_seconds and now - self._head_since > deadlines.head_seconds:
                return Refusal.HEAD_TIMEOUT, f"the request's head did not arrive within {deadlines.head_seconds:g} s"
            return None
        # The body's rate over spans of body_window_seconds: a fast start buys no time for a stall after it.
        rate = deadlines.body_bytes_per_second
        elapsed = now - self._body_since
        if rate and elapsed >= deadlines.body_window_seconds:
            if self._size - self._body_base < rate * elapsed:
                return Refusal.BODY_TOO_SLOW, (
                    f"the request's body arrived slower than {rate:g} bytes/s over {elapsed:.1f} s"
                )
            self._body_since, self._body_base = now, self._size  # the next span
        return None

    # -- refusing and closing -----------------------------------------------------------------------

    def _refuse(self, reason: Refusal, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        """Answer ``status`` after what is pending, then close; read nothing more."""
        self._app.refused(reason)
        response = json_response({"error": message}, status=status)
        if headers:
            response.headers.update(headers)
        self._drop_body()
        self._continue_owed = False
        self._stop_reading()
        self._enqueue(response)

    def _refuse_head(self) -> None:
        self._refuse(Refusal.HEAD_TOO_LARGE, 431, f"the request line and headers exceed {MAX_HEAD_BYTES} bytes")

    def _refuse_too_large(self) -> None:
        message = f"request body exceeds max_request_bytes ({self._limit} bytes)"
        self._refuse(Refusal.BODY_TOO_LARGE, 413, message)

    def _refuse_buffers_full(self) -> None:
        message = (
            f"the server holds max_buffered_request_bytes ({self._app.max_buffered_bytes} bytes) of request bodies "
            "already; retry later"
        )
        self._refuse(Refusal.BUFFERS_FULL, 503, message, {"Retry-After": str(RETRY_AFTER_SECONDS)})

    def _send_continue(self) -> None:
        self._continue_owed = False
        self._body_since = self._loop.time()  # the client was waiting for this: its body is measured from now
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_CONTINUE)

    def _stop_reading(self) -> None:
        self._closing = True
        self.request_arriving = False
        self._pause_reading()

    def _pause_reading(self) -> None:
        if self._reading and self.transport is not None and not self.transport.is_closing():
            self._reading = False
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if not self._reading and self.transport is not None and not self.transport.is_closing():
            self._reading = True
            self.transport.resume_reading()
            # The client could not send while the server did not read: its clocks start again.
            self._head_since = self._body_since = self._loop.time()
            self._body_base = self._size

    def _close_gently(self) -> None:
        """Close after a refusal, when the client may still be sending: end this side, read on for a while."""
        self._closing = True
        self._drop_pending()
        transport = self.transport
        if transport is None or transport.is_closing() or not transport.can_write_eof():
            self.close()
            return
        transport.write_eof()
        self._lingering = LINGER_BYTES
        self._linger_timer = self._loop.call_later(LINGER_SECONDS, self.close)
        self._resume_reading()

    def _close(self) -> None:
        self._closing = True
        self._drop_pending()  # sent after the client or the server said close: never answered
        self.close()

    def _drop_body(self) -> None:
        """Forget the body being read (refused, or its client gone)."""
        self._app.release(self._held)
        self._held = 0
        self._body, self._buffer = b"", None

    def _drop_pending(self) -> None:
        self.in_flight -= len(self._pending)
        requests = [item for item in self._pending if isinstance(item, Request)]
        self._app.dropped(len(requests))
        self._app.release(sum(len(item.body) for item in requests))
        self._pending.clear()
        self._pending_bytes = 0
