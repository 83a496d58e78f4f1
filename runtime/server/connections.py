"""Every client connection, tracked in our own code, so that a drain closes each one only when no request
can be on its way on it.

Each connection's protocol (``server.http``) is a ``TrackedConnection``, which notes what the drain needs:
requests received and not yet answered, the start of a request that has not arrived whole, and the last
moment anything happened.

HTTP/1.1 keep-alive has one unavoidable race: a client may send on an idle connection at the instant the
server closes it. The drain makes that window as small as it can: it closes an idle connection only after
it has been quiet for ``drain_grace_seconds`` since the signal, and never while the kernel holds bytes for
it that the server has not read yet.

Outside a drain, a connection idle for ``idle_timeout_seconds`` (nothing being answered, nothing read) is closed
too, by the same rule, so that clients that went quiet, or stalled halfway through a request, do not hold
connections forever; so is one whose request arrives too slowly (``Deadlines``: its head, its body's rate), after a
408. One timer looks for them all, not one per connection: re-arming a timer on every read would cost every
request.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import math
import termios
from collections.abc import Iterator
from dataclasses import dataclass

# While the kernel holds unread bytes for an otherwise idle connection, look again this soon: the loop is
# about to read them, and then the connection has a request on its way.
UNREAD_RECHECK_SECONDS = 0.01
# Connections past a deadline are looked for every half of the shortest deadline, and at least this often: one
# closes at most this much after its deadline.
DEADLINE_LOOK_SECONDS = 1.0


@dataclass(frozen=True)
class Deadlines:
    """How long a client may take, on the loop's clock (0: no limit); the settings of the same names."""

    idle_seconds: float = 0.0  # idle_timeout_seconds: nothing being answered, nothing received
    head_seconds: float = 0.0  # request_head_timeout_seconds: a request's line and headers, from their first byte
    body_bytes_per_second: float = 0.0  # min_request_body_bytes_per_second, measured over spans of...
    body_window_seconds: float = 0.0  # ...this long each (request_body_rate_window_seconds)

    @property
    def look_seconds(self) -> float | None:
        """How often to look for connections past a deadline; None: never."""
        spans = [s for s in (self.idle_seconds, self.head_seconds, self.body_window_seconds) if s > 0]
        if not spans and not self.body_bytes_per_second:
            return None
        return min([DEADLINE_LOOK_SECONDS, *(span / 2 for span in spans)])


class TrackedConnection(asyncio.Protocol):
    """One client connection as the drain sees it; the HTTP protocol (``server.http``) keeps these counts."""

    def __init__(self, tracker: ConnectionTracker) -> None:
        self._tracker = tracker
        self.transport: asyncio.Transport | None = None
        self.in_flight = 0  # requests received whole and not answered yet
        self.request_arriving = False  # the start of a request has arrived, not all of it
        self.last_activity = tracker.loop.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport subclasses
        self._tracker.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._tracker.lost(self)

    def request_received(self) -> None:
        self.in_flight += 1
        self.request_arriving = False

    def request_answered(self) -> None:
        self.in_flight -= 1
        self.last_activity = self._tracker.loop.time()
        self._tracker.changed()

    # -- the drain's view ----------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """A request is being answered, or its first bytes have arrived."""
        return self.in_flight > 0 or self.request_arriving

    @property
    def closing(self) -> bool:
        """The server has closed it already: it goes once what it was writing is sent."""
        return self.transport is None or self.transport.is_closing()

    @property
    def writing(self) -> bool:
        """An answer is still on its way out: the transport holds bytes the client has not taken yet."""
        return self.transport is not None and self.transport.get_write_buffer_size() > 0

    def unread_bytes(self) -> int:
        """Bytes the kernel received for this connection that the server has not read yet."""
        if self.transport is None:
            return 0
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return 0
        count = array.array("i", [0])
        with contextlib.suppress(OSError, ValueError):
            fcntl.ioctl(sock.fileno(), termios.FIONREAD, count, True)
        return count[0]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def expire(self, now: float, deadlines: Deadlines) -> bool:
        """Close this connection if it is past a deadline (the HTTP protocol answers a request arriving too slowly
        with a 408 first); whether it did. Here: idle for ``deadlines.idle_seconds``, with nothing the kernel holds
        for it unread."""
        idle = deadlines.idle_seconds
        if self.closing or not idle or now - self.last_activity <= idle or self.unread_bytes():
            return False
        self.close()
        return True


class ConnectionTracker:
    """The server's open connections, and the drain's rule for closing them."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._open: set[TrackedConnection] = set()
        self._changed = asyncio.Event()
        self.closed_idle = 0  # closed by the drain after the grace period, with nothing on its way
        self.closed_with_request_unread = 0  # closed at the drain timeout with a request arriving
        self.timed_out = 0  # closed past a deadline (Deadlines) with nothing being answered
        self._deadlines = Deadlines()
        self._look: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[TrackedConnection]:
        return iter(list(self._open))

    def opened(self, connection: TrackedConnection) -> None:
        self._open.add(connection)

    def lost(self, connection: TrackedConnection) -> None:
        self._open.discard(connection)
        self.changed()

    def changed(self) -> None:
        self._changed.set()

    async def close_when_quiet(self, since: float, grace: float) -> None:
        """Close every connection once nothing can be on its way on it; return when none is left.

        A busy connection closes itself after its response (the drain's responses carry ``Connection:
        close``); idle ones are closed by ``close_idle``."""
        while self._open:
            self._changed.clear()
            next_look = self.close_idle(since, grace)
            if not self._open:
                return
            timeout = None if next_look == math.inf else max(0.0, next_look - self.loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    def close_idle(self, since: float, grace: float) -> float:
        """Close each connection that has been quiet for ``grace`` seconds after ``since`` (the signal) and
        for which the kernel holds no unread bytes; return when to look again (``inf``: on a change)."""
        now = self.loop.time()
        next_look = math.inf
        for connection in list(self._open):
            if connection.busy or connection.closing:
                continue
            quiet_from = max(connection.last_activity, since)
            if now < quiet_from + grace:
                next_look = min(next_look, quiet_from + grace)
            elif connection.unread_bytes():
                next_look = min(next_look, now + UNREAD_RECHECK_SECONDS)
            else:
                connection.close()
                self.closed_idle += 1
        return next_look

    def expire(self, deadlines: Deadlines) -> None:
        """From now on close each connection past one of ``deadlines`` (``TrackedConnection.expire``), unless a
        request is being answered on it or its answer is still being written."""
        look = deadlines.look_seconds
        if look is None or self._look is not None:
            return
        self._deadlines = deadlines
        self._look = self.loop.call_later(look, self._close_expired, look)

    def _close_expired(self, look: float) -> None:
        # Armed first: whatever happens below, the next look comes.
        self._look = self.loop.call_later(look, self._close_expired, look)
        now = self.loop.time()
        for connection in list(self._open):
            if connection.in_flight or connection.writing:
                continue
            if connection.expire(now, self._deadlines):
                self.timed_out += 1

    def close_all(self) -> None:
        """At the drain timeout: close what is left, counting connections that had a request arriving."""
        if self._look is not None:
            self._look.cancel()
        for connection in list(self._open):
            if connection.request_arriving or connection.unread_bytes():
                self.closed_with_request_unread += 1
            connection.close()
