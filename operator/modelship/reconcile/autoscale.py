"""The autoscaler's decisions, pure: models scale with their load, sleep when idle, wake on
the first request.

`decide()` takes (spec, state, signal, now) and says the replicas and why. Up at once; down
only to the most any decision of the last `scaleDownDelaySeconds` asked for, and never before
the operator has watched the model that long (no scale-down after a restart); to zero after
`idleSeconds` without a request; from zero on the first request. `State` is what the leader
remembers of a model, and what `status.autoscaling` keeps of it so that a restarted operator
goes on from there. The leader's memory of every model, the routers' answers and rotation in
full pools are `autoscaler.py`'s.
"""

from __future__ import annotations

import logging
import math
import re
from collections import deque
from dataclasses import dataclass, field

from .. import api, clock
from .types import Event

log = logging.getLogger("modelship")

Key = tuple[str, str]  # (namespace, name)


# --- what the routers say ----------------------------------------------------------------------


@dataclass
class Reading:
    """One router replica's latest word on one model."""

    at: float  # monotonic, when it came
    in_flight_mean: float  # requests open, on average since this router's previous answer
    in_flight: int  # open now (held included)
    held: int
    idle: float  # seconds since a request last named the model
    engine: float | None  # the engines' running + waiting (None: not scraped)


@dataclass
class RouterMark:
    """A router replica's counters at its last answer: the next one is read against them."""

    router: str  # the process's id: a new one starts its counters from zero
    uptime: float
    counters: dict[str, tuple[float, int]] = field(default_factory=dict)  # model -> (inFlightSeconds, requests)


@dataclass
class Signal:
    """A model's load, as every router replica together saw it."""

    in_flight: float  # mean over the window, summed over routers
    engine: float | None  # the engines' mean over the window (None: no router scraped them)
    open_now: int  # requests open now, held included
    held: int
    arrivals: int  # requests since the last decision (-1: cannot tell, the operator just started)
    idle: float  # seconds since the last request
    watched: float  # seconds the operator has watched this model (since it started)
    complete: bool = True  # every router replica answered within the last interval or two (none is unheard)


@dataclass
class State:
    """The autoscaler's memory of one model: what `status.autoscaling` keeps, and the window."""

    desired: int
    spec_replicas: int
    reason: str = "Started"
    message: str = ""
    metric: str | None = None
    value: float | None = None
    target: float | None = None
    last_scale: float | None = None  # epoch seconds
    last_request: float | None = None  # as the routers last said
    said_request: float | None = None  # as of the last decision (what the status shows: it moves with decisions)
    woken: float | None = None
    yielded_to: str | None = None
    started: float = 0.0  # epoch: when this operator began watching it
    window: deque = field(default_factory=deque)  # (epoch, in-flight, engine | None)
    history: deque = field(default_factory=deque)  # (epoch, replicas asked for)
    events: list[Event] = field(default_factory=list)  # for the next reconcile to post

    @classmethod
    def seed(cls, spec: api.ModelDeploymentSpec, saved: api.AutoscalingStatus | None, now: float) -> "State":
        start, note = within_bounds(spec)
        if saved is None:
            return cls(start, spec.replicas, "Started", f"autoscaling from spec.replicas: {start} replica(s){note}",
                       started=now)
        at = _epoch
        return cls(saved.desired_replicas, saved.spec_replicas if saved.spec_replicas is not None else spec.replicas,
                   saved.reason, saved.message, saved.metric, saved.value, saved.target, at(saved.last_scale_time),
                   at(saved.last_request_time), at(saved.last_request_time), at(saved.woken_time),
                   saved.yielded_to, started=now)

    def wire(self) -> dict:
        out = api.AutoscalingStatus(
            desired_replicas=self.desired, reason=self.reason, message=self.message, metric=self.metric,
            value=None if self.value is None else round(self.value, 2), target=self.target,
            spec_replicas=self.spec_replicas, last_scale_time=_stamp(self.last_scale),
            last_request_time=_stamp(self.said_request), woken_time=_stamp(self.woken),
            yielded_to=self.yielded_to).wire()
        return out


def _stamp(at: float | None) -> str | None:
    import datetime as dt

    return None if at is None else clock.stamp(dt.datetime.fromtimestamp(at, dt.timezone.utc))


def _epoch(text: str | None) -> float | None:
    return None if not text else clock.parse(text).timestamp()


# --- the decision --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str
    message: str
    metric: str | None = None
    value: float | None = None
    target: float | None = None


def _ago(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def wanted(spec: api.ModelDeploymentSpec, sig: Signal) -> tuple[int, str | None, float | None, float | None]:
    """(replicas the load asks for, the metric that asks most, its value, its target)."""
    best = (0, None, None, None)
    for m in spec.scaling().metrics:
        value = sig.in_flight if m.type == "InFlight" else sig.engine
        if value is None:
            continue
        n = math.ceil(value / m.target_per_replica - 1e-9)
        if best[1] is None or n > best[0]:
            best = (n, m.type, value, m.target_per_replica)
    return best


def within_bounds(spec: api.ModelDeploymentSpec) -> tuple[int, str]:
    """`spec.replicas` within the bounds, and the words that say so where it is not (the
    operator never changes what was asked for without saying it)."""
    lo, hi = spec.bounds()
    n = min(max(spec.replicas, lo), hi)
    if n == spec.replicas:
        return n, ""
    moved = f"raised to minReplicas {lo}" if n > spec.replicas else f"lowered to maxReplicas {hi}"
    return n, f" (spec.replicas {spec.replicas} is outside the autoscaling bounds: {moved})"


def adjust(spec: api.ModelDeploymentSpec, st: State) -> Decision | None:
    """What the spec alone asks, signal or none: `spec.replicas` changed (`kubectl scale`: jump
    there, go on from there), or the replicas are outside new bounds."""
    lo, hi = spec.bounds()
    if st.spec_replicas != spec.replicas:
        n, note = within_bounds(spec)
        return Decision(n, "ScaledBySpec", f"spec.replicas changed to {spec.replicas}: {st.desired} → {n} "
                                           f"replica(s){note}; the autoscaler goes on from there")
    if st.desired > hi:
        return Decision(hi, "ScaledToBounds", f"maxReplicas is {hi}: {st.desired} → {hi} replicas")
    if st.desired < lo:
        return Decision(lo, "ScaledToBounds", f"minReplicas is {lo}: {st.desired} → {lo} replicas")
    return None


def decide(spec: api.ModelDeploymentSpec, st: State, sig: Signal, now: float) -> Decision | None:
    """What the load asks now; None: nothing (the replicas stay, and so does the reason)."""
    cfg = spec.scaling()
    lo, hi = spec.bounds()
    if st.desired == 0:
        # A request since it went to zero: held, counted, or (before the operator has two answers
        # to compare, after a restart) one the router saw since then.
        came = sig.arrivals > 0 or (sig.arrivals < 0 and st.last_scale is not None and sig.idle < now - st.last_scale)
        if sig.held > 0 or came:
            first = wanted(spec, sig)
            n = min(max(lo, 1, first[0]), hi)
            what = f"{sig.held} request(s) held by the router" if sig.held else "a request came"
            return Decision(n, "Woken", f"{what}: waking from zero to {n} replica(s)")
        return None  # (below minReplicas is `adjust`'s, signal or none)
    n, metric, value, target = wanted(spec, sig)
    if lo == 0 and n == 0:
        watched = max(cfg.window_seconds, cfg.scale_down_delay_seconds)  # (no scale-down right after a restart)
        if sig.complete and sig.open_now == 0 and sig.idle >= cfg.idle_seconds and sig.watched >= watched:
            return Decision(0, "ScaledToZero", f"no request for {_ago(sig.idle)} (idleSeconds {cfg.idle_seconds}): "
                                               f"scaled to zero; the weights stay on the volume and the next "
                                               f"request wakes it", metric, value, target)
        n = 1
    if metric is None:
        return None  # no signal has a value (an engine nobody scraped): no change
    n = min(max(n, lo, 1), hi)
    st.history.append((now, n))
    while st.history and st.history[0][0] < now - cfg.scale_down_delay_seconds:
        st.history.popleft()
    why = (f"{metric} {value:.2f} on average over {cfg.window_seconds} s, target {target:g} per replica"
           if metric else "no signal asks for more")
    if n > st.desired:
        return Decision(n, "ScaledUp", f"{why}: {st.desired} → {n} replicas", metric, value, target)
    if n < st.desired:
        delay = cfg.scale_down_delay_seconds
        if sig.watched < delay or (st.last_scale is not None and now - st.last_scale < delay):
            return None  # not yet: too soon after a change, or after the operator started
        floor = max((m for _, m in st.history), default=n)
        if floor < st.desired:
            return Decision(floor, "ScaledDown", f"{why} for {delay} s (scaleDownDelaySeconds): {st.desired} → "
                                                 f"{floor} replicas", metric, value, target)
    return None


def insufficient(message: str) -> frozenset[str]:
    """The resources a scheduler's message says no node had enough of."""
    return frozenset(re.findall(r"Insufficient ([^\s,.]+(?:\.[^\s,.]+)*)", message))
