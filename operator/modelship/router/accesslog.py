"""The access log: one JSON line per inference request, on stderr.

Lines are gathered in memory and written together, every half second or once 64 KiB are
waiting, from the event loop itself. Measured (bench/router_overhead.py, one core): a
`logging` handler writing each line cost about 60 us per request, and one in a thread of its
own (QueueHandler) about 120 us and a quarter of the throughput, the thread taking the GIL
from the loop; gathered, the lines cost about a microsecond each. What a crash loses: the last
half second of lines.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable


class AccessLog:
    def __init__(self, sink: Callable[[bytes], object] | None = None, every: float = 0.5,
                 limit: int = 1 << 16) -> None:
        self.sink = sink or _stderr
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

    async def run(self) -> None:
        """Write what is gathered every `every` seconds; and at the end (the task cancelled)."""
        try:
            while True:
                await asyncio.sleep(self.every)
                self.flush()
        finally:
            self.flush()


def _stderr(data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(2, view):]
        except BlockingIOError:
            continue
        except OSError:
            return  # (stderr closed: the lines are lost, the router goes on)
