"""A work queue of keys, as controller-runtime's: each key waits at most once, is never processed by two workers
at once, and a key added while it is processed is processed again afterwards. Bursts of events about one key
collapse into one run; a fixed number of workers bounds how many run at the same time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

log = logging.getLogger(__name__)


class WorkQueue(Generic[K]):
    """``process(key)`` returns None when done, or the seconds after which the key is to be processed again.

    Workers start with the first ``add``: they are tasks of the caller's context (kopf's handlers give theirs).
    """

    def __init__(
        self,
        process: Callable[[K], Awaitable[float | None]],
        *,
        workers: int,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        self._process = process
        self._workers = workers
        self._on_wait = on_wait  # told how long each key waited for a worker (seconds)
        self._added: dict[K, float] = {}
        self._ready: asyncio.Queue[K] = asyncio.Queue()
        self._waiting: set[K] = set()  # added, not yet taken by a worker
        self._busy: set[K] = set()
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, key: K) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._work(), name=f"work queue {i}") for i in range(self._workers)]
        if key in self._waiting:
            return
        self._waiting.add(key)
        self._added[key] = asyncio.get_running_loop().time()
        if key not in self._busy:  # otherwise its worker puts it back when done
            self._ready.put_nowait(key)

    def add_after(self, key: K, delay: float) -> None:
        """Add the key in ``delay`` seconds; replaces an earlier delayed add of the same key."""
        self.cancel(key)
        self._timers[key] = asyncio.get_running_loop().call_later(delay, self._fire, key)

    def cancel(self, key: K) -> None:
        """Forget a delayed add of the key (one already waiting is still processed)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def __len__(self) -> int:
        return len(self._waiting) + len(self._busy)

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def _work(self) -> None:
        while True:
            key = await self._ready.get()
            self._waiting.discard(key)
            added = self._added.pop(key, None)
            if self._on_wait is not None and added is not None:
                self._on_wait(asyncio.get_running_loop().time() - added)
            self._busy.add(key)
            try:
                delay = await self._process(key)
            except Exception:  # a bug in one key's processing must not stop the queue
                log.exception(f"processing {key} failed", extra={"event": "work_failed"})
                delay = None
            finally:
                self._busy.discard(key)
            if key in self._waiting:
                self._ready.put_nowait(key)
            if delay is not None:
                self.add_after(key, delay)
            else:
                self.cancel(key)
