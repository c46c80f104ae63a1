"""A small work queue with the semantics of controller-runtime's.

- A key is never reconciled by two workers at once.
- Keys added while queued collapse into one; a key added while it is being reconciled is
  reconciled once more afterwards, with fresh state.
- A reconcile may ask to be looked at again later; one that raises is retried with
  exponential backoff (capped), and the backoff resets after a success.
- At most `workers` reconciles run at once.
- Unlike controller-runtime's, a reconcile supersedes what an earlier one asked for (its
  requeue) and the news gathered for it (`add_soon`): it reads everything afresh, and asks
  for itself again if it needs to. What others ask for later (`add(key, after=...)`: a
  Service's apply tried again) is kept apart and stays: in one timer per key, earliest
  first, a child's news due in 0.5 s used to replace a retry due in a minute.
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
        self.timers: dict[Hashable, asyncio.TimerHandle] = {}  # asked for by others: kept
        # Superseded by the key's next reconcile: the news gathered for it (`add_soon`), and
        # what its last reconcile asked for (a requeue, a retry after a failure).
        self.news: dict[Hashable, asyncio.TimerHandle] = {}
        self.requeues: dict[Hashable, asyncio.TimerHandle] = {}
        self.tasks: set[asyncio.Task] = set()
        self.closed = False

    def __len__(self) -> int:
        return len(self.queued) + len(self.running)

    def add(self, key: Hashable, after: float | None = None) -> None:
        if self.closed:
            return
        if after:
            self._later(self.timers, key, after)
            return
        if key in self.running:
            self.dirty.add(key)
        elif key not in self.queued:
            self.queued.add(key)
            task = asyncio.get_running_loop().create_task(self._run(key))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def add_soon(self, key: Hashable, within: float) -> None:
        """Reconcile `key` within `within` seconds: the news of a child, which often comes in a
        burst (a Job's pod made, scheduled, running, done; a Deployment's pods each ready), is
        gathered into one reconcile. Nothing to add while one is queued: it has not read yet."""
        if key not in self.queued:
            self._later(self.news, key, within)

    def _later(self, timers: dict, key: Hashable, after: float) -> None:
        """Add `key` in `after` seconds, unless one of these `timers` adds it sooner (nothing
        once the queue is closed)."""
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        timer, due = timers.get(key), loop.time() + after
        if timer is None or timer.when() > due:
            if timer:
                timer.cancel()
            timers[key] = loop.call_at(due, self._fire, timers, key)

    def _fire(self, timers: dict, key: Hashable) -> None:
        timers.pop(key, None)
        self.add(key)

    def _cancel(self, key: Hashable, *kinds: dict) -> None:
        for timers in kinds:
            timer = timers.pop(key, None)
            if timer:
                timer.cancel()

    def forget(self, key: Hashable) -> None:
        self._cancel(key, self.timers, self.news, self.requeues)
        self.failures.pop(key, None)

    async def _run(self, key: Hashable) -> None:
        async with self.sem:
            self.queued.discard(key)
            self.running.add(key)
            self._cancel(key, self.news, self.requeues)  # (what this reconcile reads supersedes them)
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
                self._later(self.requeues, key, requeue)

    async def close(self) -> None:
        self.closed = True
        for timers in (self.timers, self.news, self.requeues):
            for timer in timers.values():
                timer.cancel()
            timers.clear()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
