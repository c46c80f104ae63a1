"""The Events a reconcile posts, sent in the background by a few threads, those of one object
(the `key` of a submission) in order, and bounded: an API server that is slow or away must not
let the ones waiting grow the operator's memory without end. One thread posted some 10 a second
on a busy test bed, fewer than 500 ModelDeployments made (bench/README.md §7): the backlog
outlasted the burst by minutes. Past `limit` waiting, the oldest waiting one is dropped (Events
are best effort, and the newest say most about now); the drops are counted and said in a
warning at most once every `warn_every` seconds."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable

log = logging.getLogger("modelship")

LIMIT = 1000  # about 1 KiB each: at most about 1 MiB waiting
THREADS = 4  # posting at once (the operator's; one object's Events are never posted at once)


class EventQueue:
    def __init__(self, post: Callable[..., None], limit: int = LIMIT, warn_every: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, threads: int = 1,
                 key: Callable[..., object] = lambda *args: None):
        self.post, self.limit, self.warn_every, self.clock, self.key = post, limit, warn_every, clock, key
        self.waiting: deque[tuple[object, tuple]] = deque()  # (key, args)
        self.dropped = 0  # since the start
        self._unsaid = 0  # dropped since the last warning
        self._warned_at: float | None = None
        self._posting: set = set()  # the keys of those being posted
        self._lock = threading.Condition()
        self._threads = [threading.Thread(target=self._run, name=f"kube-events-{i}", daemon=True)
                         for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, *args) -> None:
        """Post `post(*args)` after those of its key submitted before it; never blocks."""
        key = self.key(*args)
        with self._lock:
            if len(self.waiting) >= self.limit:
                self.waiting.popleft()
                self.dropped += 1
                self._unsaid += 1
                self._warn()
            self.waiting.append((key, args))
            self._lock.notify_all()

    def _warn(self) -> None:
        now = self.clock()
        if self._warned_at is not None and now - self._warned_at < self.warn_every:
            return
        log.warning("dropped %d Events not yet posted (%d in all): more than %d were waiting, the API server is "
                    "slow or away; the ModelDeployments' status conditions still say the same", self._unsaid,
                    self.dropped, self.limit)
        self._warned_at, self._unsaid = now, 0

    def _take(self) -> tuple[object, tuple] | None:
        """The oldest waiting one whose key is not being posted (under the lock)."""
        for i, (key, args) in enumerate(self.waiting):
            if key not in self._posting:
                del self.waiting[i]
                self._posting.add(key)
                return key, args
        return None

    def _run(self) -> None:
        while True:
            with self._lock:
                while (taken := self._take()) is None:
                    self._lock.wait()
            key, args = taken
            try:
                self.post(*args)
            except Exception:  # noqa: BLE001 - one failure must not end the thread (post_event logs its own)
                log.exception("posting an event failed")
            finally:
                with self._lock:
                    self._posting.discard(key)
                    self._lock.notify_all()

    def join(self, timeout: float = 5.0) -> bool:
        """Wait until every submitted one is posted (tests, a clean stop); True if so in time."""
        with self._lock:
            return self._lock.wait_for(lambda: not self.waiting and not self._posting, timeout)
