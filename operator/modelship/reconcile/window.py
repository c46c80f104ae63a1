"""The download window: at most `size` download Jobs in flight in the cluster at once.

A Job is in flight from the apply that makes it until it has finished (complete or failed)
or is gone. A ModelDeployment that needs a new download while the window is full is said
`DownloadQueued` in its status and waits in line; each time a Job leaves the window, the
first in line is reconciled again (first come, first served).

Why: a Hub rate-limits the requests of one token or address, and the cluster's egress is
shared; 500 ModelDeployments made at once would otherwise start 500 downloads together. (It
does not make a busy control plane faster: on the scale bench the cluster completed about
3.5 Jobs a second with the window or without; bench/README.md §7.)

What the window knows is what the reconciles told it: a Job already running when the operator
starts (or a new leader takes over) counts from the first reconcile of its ModelDeployment
on, so right after a start the window can hold more than `size` Jobs for a resync round. Two
ModelDeployments that share one Job (the namespace's shared cache) take one place in it.
"""

from __future__ import annotations

from collections.abc import Callable

Key = tuple[str, str]  # a ModelDeployment's or a Job's (namespace, name)


class DownloadWindow:
    def __init__(self, size: int, wake: Callable[[str, str], None]) -> None:
        self.size = size  # 0: no bound
        self.wake = wake  # reconcile this ModelDeployment again (namespace, name)
        self.jobs: dict[Key, set[Key]] = {}  # each Job in flight -> the ModelDeployments it downloads for
        self.job_of: dict[Key, Key] = {}  # ModelDeployment -> its Job in flight
        self.waiting: dict[Key, None] = {}  # the line, in order
        self.woken: set[Key] = set()  # taken from the line for a free place, not reconciled since

    def take(self, md: Key, job: str) -> bool:
        """Whether `md` may make download Job `job` (in its namespace) now; if it may, the Job
        counts from now on, else `md` waits in line."""
        key = (md[0], job)
        promised = len(self.woken) - (md in self.woken)  # places kept for others woken from the line
        if key in self.jobs or not self.size or len(self.jobs) + promised < self.size:
            self._hold(md, key)
            self.waiting.pop(md, None)
            self.woken.discard(md)
            return True
        self.waiting.setdefault(md)
        self.woken.discard(md)
        return False

    def settle(self, md: Key, job: str | None) -> None:
        """After a reconcile of `md`: the download Job it has in flight now (None: none). A Job
        that left the window lets the next in line in; so does one woken that needs no place
        any more."""
        key = (md[0], job) if job else None
        if self.job_of.get(md) != key:
            self._release(md)
            if key is not None:
                self._hold(md, key)
        if key is not None:
            self.waiting.pop(md, None)
        self.woken.discard(md)
        self._let_in()

    def passed(self, md: Key) -> None:
        """A reconcile of `md` ended before it planned (it failed, and is tried again later):
        a place kept for it goes to the next in line."""
        if md in self.woken:
            self.woken.discard(md)  # (its retry asks again, and waits in line if it must)
            self._let_in()

    def forget(self, md: Key) -> None:
        """`md` is gone: its place and its place in line are free."""
        self._release(md)
        self.waiting.pop(md, None)
        self.woken.discard(md)
        self._let_in()

    @property
    def in_flight(self) -> int:
        return len(self.jobs)

    @property
    def queued(self) -> int:
        return len(self.waiting) + len(self.woken)

    def _hold(self, md: Key, job: Key) -> None:
        self.jobs.setdefault(job, set()).add(md)
        self.job_of[md] = job

    def _release(self, md: Key) -> None:
        job = self.job_of.pop(md, None)
        if job is not None:
            owners = self.jobs.get(job, set())
            owners.discard(md)
            if not owners:
                self.jobs.pop(job, None)

    def _let_in(self) -> None:
        """Wake as many of the line as there are free places not promised to one woken already."""
        if not self.size:
            free = len(self.waiting)
        else:
            free = self.size - len(self.jobs) - len(self.woken)
        while free > 0 and self.waiting:
            md = next(iter(self.waiting))
            del self.waiting[md]
            self.woken.add(md)
            self.wake(*md)
            free -= 1
