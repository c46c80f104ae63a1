"""The access log: one JSON line per inference request, on stderr.

Lines are gathered in memory and handed over together, every half second or once 64 KiB are
waiting, from the event loop itself. Measured (bench/router_overhead.py, one core): a
`logging` handler writing each line cost about 60 us per request, and one in a thread of its
own (QueueHandler) about 120 us and a quarter of the throughput, the thread taking the GIL
from the loop; gathered, the lines cost about a microsecond each. What a crash loses: the last
half second of lines.

What is handed over is written to stderr by a thread of its own (`Backlog`), a batch at a
time, so that a stderr that blocks (a log collector that stalls, a pipe nobody reads: the
64 KiB of a pipe fill in seconds at a few hundred requests a second) never stops the event
loop and the requests with it. Past `Backlog.limit` bytes waiting, lines are dropped and
counted (`modelship_router_access_log_dropped_lines_total`), never the requests.
"""

from __future__ import annotations

import asyncio
import io
import os
import select
import threading
from collections import deque
from collections.abc import Callable


class Backlog:
    """Bytes for a file descriptor (stderr), written by a thread of its own. `write` never
    blocks: past `limit` bytes not yet written, what comes is dropped, its lines counted in
    `dropped` and given to `on_drop`."""

    def __init__(self, fd: int = 2, limit: int = 8 << 20, on_drop: Callable[[int], object] | None = None) -> None:
        self.fd, self.limit, self.on_drop = fd, limit, on_drop
        self.waiting: deque[bytes] = deque()
        self.size = 0  # bytes handed over and not yet written (the batch being written included)
        self.dropped = 0
        self.closed = False
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None

    def write(self, data: bytes) -> None:
        with self.cond:
            if self.closed or self.size + len(data) > self.limit:
                lost = data.count(b"\n") or 1
                self.dropped += lost
            else:
                lost = 0
                self.waiting.append(data)
                self.size += len(data)
                if self.thread is None:
                    self.thread = threading.Thread(target=self._run, name="stderr-writer", daemon=True)
                    self.thread.start()
                self.cond.notify()
        if lost and self.on_drop is not None:
            self.on_drop(lost)

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.waiting and not self.closed:
                    self.cond.wait()
                if not self.waiting:
                    return
                data = b"".join(self.waiting)
                self.waiting.clear()
            if not _write_all(self.fd, data):
                with self.cond:
                    self.dropped += data.count(b"\n")
                if self.on_drop is not None:
                    self.on_drop(data.count(b"\n"))
            with self.cond:
                self.size -= len(data)
                self.cond.notify_all()

    def close(self, timeout: float = 2.0) -> bool:
        """Write what is waiting, for at most `timeout` seconds (a stderr that stays blocked
        does not hold the router's exit); True when all of it was written."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
            thread = self.thread
        if thread is not None:
            thread.join(timeout)
        return not self.size


class BacklogStream(io.TextIOBase):
    """A text stream over a Backlog, for `logging`: the router's own log lines take the same
    way to stderr as its access log, and a blocked stderr holds neither."""

    def __init__(self, backlog: Backlog) -> None:
        self.backlog = backlog

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.backlog.write(text.encode("utf-8", "backslashreplace"))
        return len(text)


class AccessLog:
    def __init__(self, sink: Callable[[bytes], object] | None = None, every: float = 0.5,
                 limit: int = 1 << 16, on_drop: Callable[[int], object] | None = None) -> None:
        self.backlog = Backlog(on_drop=on_drop) if sink is None else None
        self.sink = sink or self.backlog.write
        self.every, self.limit = every, limit
        self.lines: list[bytes] = []
        self.size = 0

    def write(self, line: bytes) -> None:
        self.lines.append(line)
        self.size += len(line) + 1
        if self.size >= self.limit:
            self.flush()

    def flush(self) -> None:
        if self.lines:
            data = b"\n".join(self.lines) + b"\n"
            self.lines.clear()
            self.size = 0
            self.sink(data)

    def close(self, timeout: float = 2.0) -> None:
        """At the router's exit: hand over what is gathered and write it (for `timeout` at most)."""
        self.flush()
        if self.backlog is not None:
            self.backlog.close(timeout)

    async def run(self) -> None:
        """Hand over what is gathered every `every` seconds; and at the end (the task cancelled)."""
        try:
            while True:
                await asyncio.sleep(self.every)
                self.flush()
        finally:
            self.flush()


def _write_all(fd: int, data: bytes) -> bool:
    """Write all of `data`, waiting while the descriptor takes nothing (one set non-blocking
    by whoever shares it is waited on, not spun on); False if it is closed (the lines are
    lost, the router goes on)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            select.select([], [fd], [], 1.0)
        except OSError:
            return False
    return True
