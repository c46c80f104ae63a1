"""Hashes of what is on the volume, and the writer that hashes a download as it lands."""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from pathlib import Path
from typing import Callable

from .volume import CHUNK


def feed(path: Path, update: Callable[[bytes], None]) -> None:
    """Pass a file's bytes, a chunk at a time, to `update` (a hash's)."""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            update(chunk)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    feed(path, h.update)
    return h.hexdigest()


def git_sha1_of(path: Path) -> str:
    """The id git gives the file's content: sha1 of `blob <size>\\0` and the bytes."""
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    feed(path, h.update)
    return h.hexdigest()


class Sink:
    """Where a download's bytes go: the partial file, written from a few reused buffers, and
    sha256, computed in a thread of its own (hashlib releases the GIL) so that hashing
    overlaps the network and the disk.

    Behind the writes, the thread also starts the writeback of what it has hashed and drops
    it from the page cache (posix_fadvise DONTNEED): the final fsync then has little left to
    do, and a 100 GB download does not fill the Job's memory (page cache is charged to it)
    with pages nobody reads. `keep` bytes already in the file (a resumed download) are
    hashed first."""

    BUFFERS = 4  # a few chunks in flight overlap hashing with I/O; 4 files at once share 1 GiB
    WINDOW = 32 << 20

    def __init__(self, path: Path, keep: int = 0, git_size: int | None = None) -> None:
        # never through a link (a partial file that is one would write outside the volume)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        os.ftruncate(self.fd, keep)
        os.lseek(self.fd, keep, os.SEEK_SET)
        self.h = hashlib.sha256()
        # With `git_size`, also the git blob id of a file of that size, in the same pass.
        self.git = hashlib.sha1(b"blob %d\0" % git_size) if git_size is not None else None
        self.hashes = [self.h] + ([self.git] if self.git else [])
        self.free: "queue.Queue[bytearray]" = queue.Queue()
        for _ in range(self.BUFFERS):
            self.free.put(bytearray(CHUNK))
        self.work: "queue.Queue[tuple[bytearray, int] | None]" = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.closed = False
        try:
            if keep:
                with open(path, "rb") as f:
                    left = keep
                    while left:
                        buf = self.free.get()
                        n = f.readinto(memoryview(buf)[:min(left, CHUNK)])
                        if not n:
                            break
                        self.work.put((buf, n))
                        left -= n
        except BaseException:  # no thread or descriptor left behind
            self.__exit__(None, None, None)
            raise

    def _run(self) -> None:
        done = older = last = 0  # bytes hashed; where the window before the last one began, and the last
        while (item := self.work.get()) is not None:
            buf, n = item
            for h in self.hashes:
                h.update(memoryview(buf)[:n])
            self.free.put(buf)
            done += n
            if done - last >= self.WINDOW and hasattr(os, "posix_fadvise"):
                try:  # writeback starts for the last window; the one before is clean by now, and goes
                    os.posix_fadvise(self.fd, older, done - older, os.POSIX_FADV_DONTNEED)
                except OSError:
                    pass
                older, last = last, done

    def fill(self, r) -> int:
        """Read the next piece of the response `r` into a buffer, write it, pass it on to be
        hashed; return its size (0: the response ended)."""
        buf = self.free.get()
        n = r.readinto(buf)
        if not n:
            self.free.put(buf)
            return 0
        view = memoryview(buf)[:n]
        while view:
            view = view[os.write(self.fd, view):]
        self.work.put((buf, n))
        return n

    def finish(self) -> str:
        """The sha256 of the whole file, once it is on disk."""
        self._stop()
        os.fsync(self.fd)
        return self.h.hexdigest()

    def _stop(self) -> None:
        if not self.closed:
            self.closed = True
            self.work.put(None)
            self.thread.join()

    def __enter__(self) -> "Sink":
        return self

    def __exit__(self, *exc) -> None:
        self._stop()
        os.close(self.fd)

