"""The client-side load balancer the closed-loop harnesses send their load through (``autoscaling_loop.py``,
``canary_rollout.py``); traffic goes to 127.0.0.1 only.

Each request goes to the in-rotation replica with the fewest outstanding requests, ties in turn: Envoy's
``LEAST_REQUEST``, which an ingress in front of the pods typically runs. A request whose connection is refused
(nothing was sent: a replica that stopped listening between the pick and the connect) is sent again elsewhere and
counted as retried, as a proxy's ``connect-failure`` retry does; any other error ends the request without an answer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import aiohttp


class Endpoint(Protocol):
    """What the balancer reads and keeps of a replica."""

    name: str
    outstanding: int  # requests sent to it and not answered yet

    @property
    def url(self) -> str: ...

    @property
    def in_rotation(self) -> bool: ...


R = TypeVar("R", bound=Endpoint)


@dataclass(frozen=True)
class Delivery(Generic[R]):
    """One request through the balancer."""

    sent: float  # loop time
    latency: float
    retries: int  # connections refused before anything was sent, sent again elsewhere
    replica: R | None  # the one that answered; None when no HTTP answer came
    status: int | None
    body: bytes
    error: str  # why no HTTP answer came ("" when one did)


class Balancer(Generic[R]):
    """Least outstanding requests over the replicas in rotation, ties broken in turn; one retry budget for refused
    connections."""

    MAX_CONNECT_RETRIES = 3

    def __init__(self, replicas: list[R], session: aiohttp.ClientSession, url_path: str, body: str) -> None:
        self.replicas = replicas  # the caller's list: replicas it adds or drains are seen at the next pick
        self.session = session
        self.path = url_path
        self.body = body
        self.turn = 0

    def pick(self, avoid: set[str]) -> R | None:
        candidates = [r for r in self.replicas if r.in_rotation and r.name not in avoid]
        if not candidates:
            return None
        self.turn += 1
        least = min(r.outstanding for r in candidates)
        tied = [r for r in candidates if r.outstanding == least]
        return tied[self.turn % len(tied)]

    async def send(self, loop: asyncio.AbstractEventLoop) -> Delivery[R]:
        """POST the body to a replica, and to another while connections are refused."""
        sent = loop.time()
        refused: set[str] = set()
        answered: R | None = None
        status: int | None = None
        body = b""
        error = ""
        while len(refused) <= self.MAX_CONNECT_RETRIES:
            replica = self.pick(refused)
            if replica is None:
                error = error or "no replica in rotation"
                break
            replica.outstanding += 1
            try:
                async with self.session.post(
                    replica.url + self.path, data=self.body, headers={"Content-Type": "application/json"}
                ) as response:
                    body = await response.read()
                    answered, status, error = replica, response.status, ""
                break
            except aiohttp.ClientConnectorError as exc:  # refused before anything was sent: safe to send again
                refused.add(replica.name)
                error = f"connect: {exc}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                break
            finally:
                replica.outstanding -= 1
        return Delivery(sent, loop.time() - sent, len(refused), answered, status, body, error)
