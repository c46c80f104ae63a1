"""A small work queue with the semantics of controller-runtime's.

- A key is never reconciled by two workers at once.
- Keys added while queued collapse into one; a key added while it is being reconciled is
  reconciled once more afterwards, with fresh state.
- A reconcile may ask to be looked at again later; one that raises is retried with
  exponential backoff (capped), and the backoff resets after a success.
- At most `workers` reconciles run at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Hashable

log = logging.getLogger("modelship")


class WorkQueue:
    def __init__(self, handler: Callable[[Hashable], Awaitable[float | None]], workers: int = 4,
                 base_backoff: float = 1.0, max_backoff: float = 300.0):
        self.handler = handler
        self.base_backoff, self.max_backoff = base_backoff, max_backoff
        self.sem = asyncio.Semaphore(workers)
        self.queued: set[Hashable] = set()
        self.running: set[Hashable] = set()
        self.dirty: set[Hashable] = set()
        self.failures: dict[Hashable, int] = {}
        self.timers: dict[Hashable, asyncio.TimerHandle] = {}
        self.tasks: set[asyncio.Task] = set()
        self.closed = False

    def __len__(self) -> int:
        return len(self.queued) + len(self.running)

    def add(self, key: Hashable, after: float | None = None) -> None:
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        if after:
            timer = self.timers.get(key)
            due = loop.time() + after
            if timer is None or timer.when() > due:
                if timer:
                    timer.cancel()
                self.timers[key] = loop.call_at(due, self._fire, key)
            return
        if key in self.running:
            self.dirty.add(key)
        elif key not in self.queued:
            self.queued.add(key)
            task = loop.create_task(self._run(key))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def add_soon(self, key: Hashable, within: float) -> None:
        """Reconcile `key` within `within` seconds: the news of a child, which often comes in a
        burst (a Job's pod made, scheduled, running, done; a Deployment's pods each ready), is
        gathered into one reconcile. Nothing to add while one is queued: it has not read yet."""
        if key not in self.queued:
            self.add(key, after=within)

    def _fire(self, key: Hashable) -> None:
        self.timers.pop(key, None)
        self.add(key)

    def forget(self, key: Hashable) -> None:
        timer = self.timers.pop(key, None)
        if timer:
            timer.cancel()
        self.failures.pop(key, None)

    async def _run(self, key: Hashable) -> None:
        async with self.sem:
            self.queued.discard(key)
            self.running.add(key)
            requeue: float | None = None
            try:
                requeue = await self.handler(key)
                self.failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - every failure is retried with backoff
                n = self.failures[key] = self.failures.get(key, 0) + 1
                requeue = min(self.base_backoff * 2 ** (n - 1), self.max_backoff)
                log.warning("reconcile of %s failed (%s: %s); retrying in %.0fs", "/".join(map(str, key))
                            if isinstance(key, tuple) else key, type(e).__name__, e, requeue)
            finally:
                self.running.discard(key)
            if key in self.dirty:
                self.dirty.discard(key)
                self.add(key)
            elif requeue:
                self.add(key, after=requeue)

    async def close(self) -> None:
        self.closed = True
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
