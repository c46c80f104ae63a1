"""The router's way to stderr (accesslog.Backlog): a thread of its own writes; a blocked
descriptor never blocks the writer's caller; past the limit lines are dropped and counted."""

from __future__ import annotations

import logging
import os
import time

from modelship.router.accesslog import AccessLog, Backlog, BacklogStream


def drain(fd: int) -> bytes:
    os.set_blocking(fd, False)
    out = b""
    while True:
        try:
            piece = os.read(fd, 1 << 16)
        except BlockingIOError:
            return out
        if not piece:
            return out
        out += piece


def test_everything_is_written_in_order_when_the_reader_keeps_up():
    r, w = os.pipe()
    try:
        backlog = Backlog(fd=w)
        lines = [f"line {i}\n".encode() for i in range(2000)]  # (20 kB: the pipe holds them all)
        for line in lines:
            backlog.write(line)
        assert backlog.close(5)
        assert drain(r) == b"".join(lines) and backlog.dropped == 0
    finally:
        os.close(r)
        os.close(w)


def test_a_pipe_nobody_reads_blocks_no_write_and_drops_past_the_limit():
    r, w = os.pipe()
    dropped: list[int] = []
    try:
        backlog = Backlog(fd=w, limit=200_000, on_drop=dropped.append)
        line = b"x" * 99 + b"\n"
        started = time.monotonic()
        for _ in range(5_000):  # 500 kB: the pipe takes 64 KiB, the backlog 200 kB, the rest is dropped
            backlog.write(line)
        assert time.monotonic() - started < 2
        assert 2_000 <= backlog.dropped <= 3_400 and sum(dropped) == backlog.dropped
        started = time.monotonic()
        assert backlog.close(0.3) is False  # (not all of it could be written: the exit is not held)
        assert time.monotonic() - started < 2
        got = b""
        deadline = time.monotonic() + 10
        while backlog.thread.is_alive() and time.monotonic() < deadline:  # (read now: the writer ends)
            got += drain(r)
            time.sleep(0.01)
        got += drain(r)
        assert not backlog.thread.is_alive()
        assert got == line * (5_000 - backlog.dropped)  # what was not dropped is all written, whole lines
    finally:
        os.close(r)
        os.close(w)


def test_a_write_after_close_is_dropped_and_counted():
    r, w = os.pipe()
    try:
        backlog = Backlog(fd=w)
        backlog.write(b"kept\n")
        assert backlog.close(5)
        backlog.write(b"late\nlater\n")
        assert drain(r) == b"kept\n" and backlog.dropped == 2
    finally:
        os.close(r)
        os.close(w)


def test_log_records_and_access_lines_share_one_way_out():
    r, w = os.pipe()
    try:
        access = AccessLog(sink=(backlog := Backlog(fd=w)).write)
        logger = logging.getLogger("test.accesslog")
        logger.propagate = False
        handler = logging.StreamHandler(BacklogStream(backlog))
        logger.addHandler(handler)
        try:
            access.write(b'{"id":"a"}')
            access.flush()
            logger.warning("an endpoint failed: caf\u00e9")
        finally:
            logger.removeHandler(handler)
        assert backlog.close(5)
        assert drain(r).decode() == '{"id":"a"}\nan endpoint failed: caf\u00e9\n'
    finally:
        os.close(r)
        os.close(w)
