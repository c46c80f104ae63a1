"""The children a reconcile applies without waiting for them: the Service.

It depends on nothing and nothing depends on it, and the API server allocates ClusterIPs one
at a time (SERVICE_APPLIES): a reconcile that held a worker for that held up every other
ModelDeployment's (bench/README.md §7). An apply's end reconciles its ModelDeployment again.
One apply per ModelDeployment at a time, SERVICE_APPLIES at once in all; a refusal is said in
the status by the reconciles after it (`start`) and tried again when the body changes or
REFUSED_RETRY seconds later; any other failure is tried again with back-off, as a failed
reconcile is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from kubernetes.client.rest import ApiException

from .. import api, clock
from ..manifests import digest
from . import status
from .answers import is_transient, refusal
from .kube import Kube
from .types import Action, Event, Plan
from .workqueue import WorkQueue

log = logging.getLogger("modelship")

Key = tuple[str, str]  # (namespace, name)
# A refused apply is tried again after REFUSED_RETRY seconds (sooner with another body); one
# that failed on the way after TRANSIENT_RETRY, doubled at each failure in a row.
REFUSED_RETRY, TRANSIENT_RETRY = 60.0, 2.0
# Those applies at once: more only wait in the API server, holding threads the reconciles need.
# The API server allocates ClusterIPs one at a time: a mutex around each allocation, held across
# a loopback create of the address's IPAddress object (`ipallocator.MetaAllocator`, seen in its
# goroutine dump). Quiet, that is some 65 Services a second at 4 or 16 at once; on the busy scale
# bench about 10 a second whatever the number: 2, 4, 8, 12 at once took 221, 374-465, 1,125,
# 2,281 ms each (bench/README.md §7, "Stop 31"). These applies are outside the operator's limit
# of requests in flight (`apiInFlight`, in_flight.py), which is there to keep the rest from slowing them.
SERVICE_APPLIES = 4


@dataclass
class Refused:
    body: str  # the digest of the body that was refused
    message: str
    at: float  # time.monotonic()


class BackgroundApplies:
    def __init__(self, kube: Kube, queue: WorkQueue,
                 written: Callable[[api.ModelDeployment, Action], Event]):
        # `written`: the controller's bookkeeping of a child write done (counted, logged, its Event)
        self.kube, self.queue, self.written = kube, queue, written
        self.running: dict[Key, asyncio.Task] = {}  # an apply going on, one per ModelDeployment
        self.refused: dict[Key, Refused] = {}  # what the API server refused, until an apply succeeds
        self.failures: dict[Key, int] = {}  # applies failed on the way in a row (the back-off)
        # The body the latest reconcile wanted (its digest): one that came while another apply
        # was going on is seen to when that one ends, even if it changed nothing.
        self.wanted: dict[Key, str] = {}
        self.slots = asyncio.Semaphore(SERVICE_APPLIES)
        self.closing = False

    def start(self, md: api.ModelDeployment, p: Plan, action: Action) -> None:
        """Start the apply unless one is going on (its end reconciles again). A refusal is
        said in the status at every reconcile until an apply succeeds, retries included; it is
        tried again with another body, or REFUSED_RETRY seconds later (a reconcile is queued
        for then), not at each reconcile."""
        key = (md.namespace, md.name)
        self.wanted[key] = digest([action.body])
        refused = self.refused.get(key)
        if refused is not None:
            requeue = p.requeue_after  # (the rest of the plan goes on: its own pace is kept)
            status.rejected(md, p, refused.message, clock.now())
            p.requeue_after = requeue
        if key in self.running or self.closing:
            return
        if refused is not None and refused.body == digest([action.body]) and \
                time.monotonic() - refused.at < REFUSED_RETRY:
            return
        task = asyncio.ensure_future(self._apply(key, md, action))
        self.running[key] = task
        task.add_done_callback(lambda t: self.running.pop(key) if self.running.get(key) is t else None)

    async def _apply(self, key: Key, md: api.ModelDeployment, action: Action) -> None:
        try:
            async with self.slots:
                changed = await asyncio.to_thread(self.kube.in_flight.ungated, self.kube.execute, action,
                                                    md.namespace)
        except Exception as e:  # noqa: BLE001 - said, and tried again
            self._failed(key, md, action, e)
            return
        self.refused.pop(key, None)
        self.failures.pop(key, None)
        self.kube.post_event_later(md, self.written(md, action))
        applied = digest([action.body])
        if changed or self.wanted.get(key, applied) != applied:
            self.queue.add(key)  # its watch event is no news: see it (or apply what was wanted since)

    def _failed(self, key: Key, md: api.ModelDeployment, action: Action, e: Exception) -> None:
        """A refusal goes into the status (the next reconcile says it) and is tried again
        later; anything else is tried again with back-off, as a failed reconcile is."""
        if isinstance(e, ApiException) and not is_transient(e):
            message = f"{action.kind} {action.name} was refused by the API server: {refusal(e)}"
            self.refused[key] = Refused(digest([action.body]), message, time.monotonic())
            self.queue.add(key)  # to say it
            self.queue.add(key, after=REFUSED_RETRY)  # to try again
            return
        n = self.failures[key] = self.failures.get(key, 0) + 1
        after = min(TRANSIENT_RETRY * 2 ** (n - 1), self.queue.max_backoff)
        where = f"applying {action.kind} {action.name} for {md.namespace}/{md.name}"
        if is_transient(e):
            why = f"{e.status} {e.reason}" if isinstance(e, ApiException) else f"{type(e).__name__}: {e}"
            log.warning("%s failed (%s); trying again in %.0fs", where, why, after)
        else:
            log.exception("%s failed unexpectedly; trying again in %.0fs", where, after)
        self.queue.add(key, after=after)

    def forget(self, key: Key) -> None:
        """A ModelDeployment that went: its apply going on ends unseen (the garbage collector
        takes a Service whose owner is gone)."""
        self.refused.pop(key, None)
        self.failures.pop(key, None)
        self.wanted.pop(key, None)
        task = self.running.get(key)
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        """Stop the applies going on (none starts once closing)."""
        self.closing = True
        for task in list(self.running.values()):
            task.cancel()
        await asyncio.gather(*self.running.values(), return_exceptions=True)
