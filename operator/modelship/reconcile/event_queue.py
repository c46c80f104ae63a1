"""The Events a reconcile posts, sent in the background by one thread, in order, and bounded:
an API server that is slow or away must not let the ones waiting grow the operator's memory
without end. Past `limit` waiting, the oldest waiting one is dropped (Events are best effort,
and the newest say most about now); the drops are counted and said in a warning at most once
every `warn_every` seconds."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable

log = logging.getLogger("modelship")

LIMIT = 1000  # about 1 KiB each: at most about 1 MiB waiting


class EventQueue:
    def __init__(self, post: Callable[..., None], limit: int = LIMIT, warn_every: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.post, self.limit, self.warn_every, self.clock = post, limit, warn_every, clock
        self.waiting: deque[tuple] = deque()
        self.dropped = 0  # since the start
        self._unsaid = 0  # dropped since the last warning
        self._warned_at: float | None = None
        self._busy = False  # one being posted
        self._lock = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="kube-events", daemon=True)
        self._thread.start()

    def submit(self, *args) -> None:
        """Post `post(*args)` after those submitted before it; never blocks."""
        with self._lock:
            if len(self.waiting) >= self.limit:
                self.waiting.popleft()
                self.dropped += 1
                self._unsaid += 1
                self._warn()
            self.waiting.append(args)
            self._lock.notify_all()

    def _warn(self) -> None:
        now = self.clock()
        if self._warned_at is not None and now - self._warned_at < self.warn_every:
            return
        log.warning("dropped %d Events not yet posted (%d in all): more than %d were waiting, the API server is "
                    "slow or away; the ModelDeployments' status conditions still say the same", self._unsaid,
                    self.dropped, self.limit)
        self._warned_at, self._unsaid = now, 0

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self.waiting:
                    self._lock.wait()
                args = self.waiting.popleft()
                self._busy = True
            try:
                self.post(*args)
            except Exception:  # noqa: BLE001 - one failure must not end the thread (post_event logs its own)
                log.exception("posting an event failed")
            finally:
                with self._lock:
                    self._busy = False
                    self._lock.notify_all()

    def join(self, timeout: float = 5.0) -> bool:
        """Wait until every submitted one is posted (tests, a clean stop); True if so in time."""
        with self._lock:
            return self._lock.wait_for(lambda: not self.waiting and not self._busy, timeout)
