"""Coarse timeouts for many requests on one timer (a timing wheel).

Every request the router forwards has deadlines: the first byte, the gap between two chunks,
and the moment it starts watching for its client leaving. `asyncio.timeout()` gives each one
a timer of its own on the event loop, and that costs about 7 us to set and clear on this
project's benchmark machine (uvloop; more on the default loop): three of them were half of
what the router's own logic cost per request. Here deadlines fall into slots of `tick`
seconds, a dict per slot; arming and clearing one is two dict operations, and one loop timer
wakes for the earliest slot that has any. A deadline fires up to one tick late.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable

log = logging.getLogger("modelship.router")


class Wheel:
    def __init__(self, tick: float = 0.01) -> None:
        self.tick = tick
        self._per_second = 1.0 / tick
        self._slots: dict[int, dict[object, Callable[[], None]]] = {}
        self._heap: list[int] = []  # slot numbers that have a dict, earliest first
        self._wake: asyncio.TimerHandle | None = None
        self._wake_slot = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def call_after(self, seconds: float, key: object, fn: Callable[[], None]) -> int:
        """Call `fn()` in about `seconds` (at most one tick late) unless `cancel(slot, key)`
        comes first; returns the slot. `key` is any hashable unique to this deadline."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests run several): the old one's deadlines died with it
            self._slots.clear()
            self._heap.clear()
            self._wake, self._loop = None, loop
        slot = int((time.monotonic() + seconds) * self._per_second) + 1
        bucket = self._slots.get(slot)
        if bucket is None:
            bucket = self._slots[slot] = {}
            heapq.heappush(self._heap, slot)
            if self._wake is None or slot < self._wake_slot:
                self._schedule(slot)
        bucket[key] = fn
        return slot

    def cancel(self, slot: int, key: object) -> None:
        bucket = self._slots.get(slot)
        if bucket is not None:
            bucket.pop(key, None)

    def timeout(self, seconds: float, task: asyncio.Task) -> Timeout:
        """`with wheel.timeout(s, task):` like `async with asyncio.timeout(s):`."""
        return Timeout(self, seconds, task)

    def _schedule(self, slot: int) -> None:
        if self._wake is not None:
            self._wake.cancel()
        self._wake_slot = slot
        delay = max(0.0, slot / self._per_second - time.monotonic())
        self._wake = self._loop.call_later(delay, self._sweep)

    def _sweep(self) -> None:
        self._wake = None
        now = int(time.monotonic() * self._per_second)
        heap = self._heap
        while heap and heap[0] <= now:
            bucket = self._slots.pop(heapq.heappop(heap), None)
            for fn in list(bucket.values()) if bucket else ():
                try:
                    fn()
                except Exception:  # noqa: BLE001 - one deadline's failure must not stop the others
                    log.exception("a deadline's callback failed")
        if heap:
            self._schedule(heap[0])


class Timeout:
    """A deadline for one task: when it passes, the task is cancelled, and the cancellation
    leaves the `with` block as TimeoutError (as `asyncio.timeout()` does). A cancellation
    from elsewhere in the same moment (the client left) stays a cancellation."""

    __slots__ = ("wheel", "seconds", "task", "slot", "expired", "cancelling")

    def __init__(self, wheel: Wheel, seconds: float, task: asyncio.Task) -> None:
        self.wheel, self.seconds, self.task, self.expired = wheel, seconds, task, False

    def __enter__(self) -> Timeout:
        self.cancelling = self.task.cancelling()
        self.slot = self.wheel.call_after(self.seconds, self, self._expire)
        return self

    def __exit__(self, kind, error, tb) -> None:
        self.wheel.cancel(self.slot, self)
        if self.expired and kind is asyncio.CancelledError and self.task.uncancel() <= self.cancelling:
            raise TimeoutError from error

    def _expire(self) -> None:
        self.expired = True
        self.task.cancel()
