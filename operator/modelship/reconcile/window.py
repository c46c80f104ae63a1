"""The download window: at most `size` download Jobs in flight in the cluster at once.

A Job is in flight from the reconcile that decides to make it until a reconcile of its
ModelDeployment sees it finished (complete or failed) or gone, or its apply refused. A
ModelDeployment that needs a new download while the window is full is said `DownloadQueued`
in its status and waits in line; each time a Job leaves the window, the first in line is
reconciled again, in the order they asked (one whose turn came while its reconcile was
failing keeps its place; after an operator restart, the order they are reconciled again).

Why: a Hub rate-limits the requests of one token or address, and the cluster's egress is
shared; 500 ModelDeployments made at once would otherwise start 500 downloads together. (It
does not make a busy control plane faster: on the scale bench the cluster completed about
3.5 Jobs a second with the window or without; bench/README.md §7.)

What the window knows is what the reconciles told it: a Job already running when the operator
starts (or a new leader takes over) counts from the first reconcile of its ModelDeployment
on, so right after a start the window can hold more than `size` Jobs for a resync round. Two
ModelDeployments that share one Job (on the shared cache, or a claim of the user's) take one
place in it; the window knows who waits for each Job, owner of it or not (`followers`), and
who waits for a failed one to be deleted and made again (it takes no place).
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
        self.waiting: dict[Key, int] = {}  # the line, in order: ModelDeployment -> when it joined (a count)
        self.joined: dict[Key, int] = {}  # when each ModelDeployment in line or woken first joined
        self.woken: set[Key] = set()  # taken from the line for a free place, not reconciled since
        self.failed: dict[Key, set[Key]] = {}  # each failed Job (no place) -> the ModelDeployments it failed for
        self.failed_of: dict[Key, Key] = {}  # ModelDeployment -> the failed Job it waits to be deleted
        self.count = 0

    def take(self, md: Key, job: str) -> bool:
        """Whether `md` may make download Job `job` (in its namespace) now; if it may, the Job
        counts from now on, else `md` waits in line (at the place it first joined it)."""
        key = (md[0], job)
        old = self.job_of.get(md)
        # its own Job that this one replaces (a new revision) leaves the window with it
        own = 1 if old is not None and old != key and self.jobs.get(old) == {md} else 0
        promised = len(self.woken) - (md in self.woken)  # places kept for others woken from the line
        if key in self.jobs or not self.size or len(self.jobs) - own + promised < self.size:
            if old != key:
                self._release(md)
            self._hold(md, key)
            self._leave_line(md)
            return True
        self.woken.discard(md)
        if md not in self.waiting:
            seq = self.joined.get(md)
            if seq is None:
                seq = self.joined[md] = self.count = self.count + 1
                self.waiting[md] = seq
            else:  # back in line where it first joined it (its turn came while it was failing)
                self.waiting[md] = seq
                self.waiting = dict(sorted(self.waiting.items(), key=lambda kv: kv[1]))
        return False

    def settle(self, md: Key, job: str | None, failed: str | None = None) -> None:
        """After a reconcile of `md`: the download Job it has in flight now (None: none, or
        its apply was refused), and the failed one it waits for, if any (it takes no place, but
        whoever shares it is woken when it changes or goes: `followers`). A Job that left the
        window lets the next in line in; so does one woken that needs no place any more."""
        _unlink(self.failed, self.failed_of, md)
        if failed:
            _link(self.failed, self.failed_of, md, (md[0], failed))
        key = (md[0], job) if job else None
        if self.job_of.get(md) != key:
            self._release(md)
            if key is not None:
                self._hold(md, key)
        if key is not None or failed or md not in self.waiting:
            self._leave_line(md)
        self._let_in()

    def passed(self, md: Key) -> None:
        """A reconcile of `md` ended before it planned (it failed, and is tried again later
        with back-off): a place kept for it goes to the next in line; its retry, if it must
        wait, waits where it first joined the line."""
        if md in self.woken:
            self.woken.discard(md)
            self._let_in()

    def forget(self, md: Key) -> None:
        """`md` is gone: its place and its place in line are free."""
        self._release(md)
        _unlink(self.failed, self.failed_of, md)
        self._leave_line(md)
        self._let_in()

    def followers(self, namespace: str, job: str, failed: bool = True) -> set[Key]:
        """The ModelDeployments that wait for download Job `job` (in `namespace`) to finish, and
        (unless not `failed`) those that wait for it, failed, to be deleted and made again."""
        waiting = set(self.jobs.get((namespace, job), ()))
        return waiting | self.failed.get((namespace, job), set()) if failed else waiting

    def known(self) -> set[Key]:
        """The ModelDeployments the window holds something of (a place, one in line, a failed
        Job it waits for)."""
        return set(self.job_of) | set(self.waiting) | self.woken | set(self.failed_of)

    def keep_only(self, present: set[Key], known: set[Key]) -> None:
        """After a listing of every ModelDeployment: those `known` before it began and not in
        it are gone (a deletion the watch missed), and their places with them."""
        for md in known - present:
            self.forget(md)

    @property
    def in_flight(self) -> int:
        return len(self.jobs)

    @property
    def queued(self) -> int:
        return len(self.waiting) + len(self.woken)

    def _leave_line(self, md: Key) -> None:
        self.waiting.pop(md, None)
        self.woken.discard(md)
        self.joined.pop(md, None)

    def _hold(self, md: Key, job: Key) -> None:
        _link(self.jobs, self.job_of, md, job)

    def _release(self, md: Key) -> None:
        _unlink(self.jobs, self.job_of, md)

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


def _link(by_job: dict[Key, set[Key]], job_of: dict[Key, Key], md: Key, job: Key) -> None:
    """Record that `md` waits for `job`, in both directions (`jobs`/`job_of`, `failed`/`failed_of`)."""
    by_job.setdefault(job, set()).add(md)
    job_of[md] = job


def _unlink(by_job: dict[Key, set[Key]], job_of: dict[Key, Key], md: Key) -> None:
    """Forget the Job `md` waits for, and the Job itself once nobody waits for it."""
    job = job_of.pop(md, None)
    if job is not None:
        waiting = by_job.get(job, set())
        waiting.discard(md)
        if not waiting:
            by_job.pop(job, None)
