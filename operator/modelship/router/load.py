"""What the operator's autoscaler reads of the router (`GET /modelship/load`): per model, the
requests open and arriving, and a version that moves when a request finds a model that can be
woken with no ready endpoint, so that the operator's long poll returns at once and it wakes
the model.

A request pays for this with a few additions where it starts and ends (`Demand.enter`,
`Demand.leave`); the area under the in-flight count (`inFlightSeconds`) is added up only when
the count changes, so the operator gets the exact mean over any interval from two readings.
The rest is computed when the route is read.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .registry import Registry, Target
    from .upstream import Upstream

MAX_WAIT = 30.0  # seconds a poll may wait for the version to move
PROBE_EVERY = 0.05  # seconds between two asks of a starting pod's /health while requests are held for it
PROBED_FOR = 15.0  # seconds a pod found healthy stays ready to the router while its EndpointSlice catches up


class Demand:
    """One model's requests, as the router sees them: those that named it (answered by a
    fallback included). It follows the model's name: a target rebuilt by discovery keeps it."""

    __slots__ = ("in_flight", "area", "since", "held", "requests", "woken", "bumped")

    def __init__(self) -> None:
        self.in_flight = 0  # requests open now: being answered or held
        self.area = 0.0  # the integral of in_flight over time, up to `since`
        self.since = 0.0  # when in_flight last changed (monotonic): at 0, when the model was last busy
        self.held = 0  # of those open, held waiting for a ready endpoint
        self.requests = 0  # requests that named it
        self.woken: asyncio.Event | None = None  # set when a ready endpoint appears (made by the first waiter)
        self.bumped = float("-inf")  # when a request for it last moved the load's version

    def enter(self, now: float) -> None:
        self.area += self.in_flight * (now - self.since)
        self.since = now
        self.in_flight += 1
        self.requests += 1

    def leave(self, now: float) -> None:
        self.area += self.in_flight * (now - self.since)
        self.since = now
        self.in_flight -= 1

    def area_at(self, now: float) -> float:
        return self.area + self.in_flight * (now - self.since)

    def wake(self) -> None:
        """Wake the requests held for this model (it has a ready endpoint, or it changed)."""
        woken, self.woken = self.woken, None
        if woken is not None:
            woken.set()

    def event(self) -> asyncio.Event:
        """The event the next `wake` sets (one per waiting spell: an event binds to its loop)."""
        if self.woken is None:
            self.woken = asyncio.Event()
        return self.woken


class Load:
    """The router's side of the autoscaler's long poll: who it is, since when, and the version
    of its demand."""

    def __init__(self) -> None:
        self.id = secrets.token_hex(8)  # a restarted router is another one: its counters start again
        self.started = time.monotonic()
        self.version = secrets.randbits(48)  # (a restarted router never repeats the version a poller holds)
        self._moved: asyncio.Event | None = None  # set by the next bump (made by the first poll that waits)

    def bump(self) -> None:
        """A request found a model that can be woken with no ready endpoint: wake the polls."""
        self.version += 1
        moved, self._moved = self._moved, None
        if moved is not None:
            moved.set()

    async def wait(self, version: int | None, seconds: float) -> None:
        """Return when the version is not `version` (at once if it is not now, or none is
        given), or after `seconds` (at most MAX_WAIT)."""
        if version is None or version != self.version or seconds <= 0:
            return
        if self._moved is None:
            self._moved = asyncio.Event()
        try:
            async with asyncio.timeout(min(seconds, MAX_WAIT)):
                await self._moved.wait()
        except TimeoutError:
            pass

    def idle(self, d: Demand, now: float) -> float:
        """Seconds since a request for the model was last open (since the router started if
        none was): from the end of the last one, not its arrival, so that a long answer that
        just ended does not read as a long idle time."""
        if d.in_flight:
            return 0.0
        return now - (d.since if d.requests else self.started)

    def report(self, targets: Iterable[Target]) -> dict:
        """The body of `GET /modelship/load`: every target's demand and endpoints, now."""
        now = time.monotonic()
        models = {}
        for t in targets:
            d = t.demand
            ready = t.ready()
            scraped = [e for e in ready if e.scraped]
            models[t.name] = {
                "inFlight": d.in_flight, "inFlightSeconds": d.area_at(now), "held": d.held, "requests": d.requests,
                "idleSeconds": self.idle(d, now),
                "endpoints": len(t.endpoints), "readyEndpoints": len(ready),
                "engineLoad": sum(e.running + e.waiting for e in scraped), "engineScraped": bool(scraped)}
        return {"router": self.id, "version": self.version, "uptime": now - self.started, "models": models}


async def probe_starting(target: Target, registry: Registry, client: Upstream, probing: dict) -> None:
    """While requests are held for a model whose pods are starting, ask their engines'
    `/health` every PROBE_EVERY, and send the held requests to the first that answers 200,
    without waiting for the kubelet's next probe and the EndpointSlice that follows it (as
    Knative's activator probes pods directly). Only pods that are not terminating are listed
    (discovery leaves those out), and this runs only while nothing else serves. `probing`:
    model name -> this task, which it leaves when done."""
    try:
        while target.demand.held and not target.ready() and registry.targets.get(target.name) is target:
            starting = [e for e in target.endpoints.values() if not e.ready]
            if not starting:
                return  # (a new one wakes the held requests, which start this again)
            answers = await asyncio.gather(*(client.get(f"{e.url}/health", 1.0) for e in starting),
                                           return_exceptions=True)
            healthy = [e for e, a in zip(starting, answers) if isinstance(a, tuple) and a[0] == 200]
            if healthy:
                until = time.monotonic() + PROBED_FOR
                for e in healthy:
                    e.ready, e.probed_until = True, until  # (until the EndpointSlice says so too)
                target.demand.wake()
                return
            await asyncio.sleep(PROBE_EVERY)
    finally:
        probing.pop(target.name, None)
        if target.demand.held:  # (rebuilt meanwhile: the held requests start the probe again on the new one)
            target.demand.wake()
