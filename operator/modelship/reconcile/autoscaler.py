"""The autoscaler, the leader's memory of every model: the routers' answers, each model's
window of signals and its decisions (`autoscale.py` decides), and who waits for room in
which pool.

- The routers count the load (requests open per model, held ones included, as an exact area
  under the curve; arrivals; the engines' scraped queues); `signals.py` long-polls every
  router replica and hands each answer to `Autoscaler.observe`, at once when a request is
  held for a model at zero, which is then decided on without waiting for the interval.
- A decision enqueues a reconcile; the reconcile tells `track()` what runs and asks `view()`
  for the replicas to set on the serving Deployment and the status to write. The operator
  never writes a ModelDeployment's spec.

Rotation: a model whose pods the scheduler cannot place for want of a resource its pool
lacks ("Insufficient nvidia.com/gpu") is *wanted*. Idle models of the same pool that may
sleep (`minReplicas: 0`), with a priority no higher than its own, that have stayed their
`minResidencySeconds` since they woke and have no request open, yield one at a time, least
recently used first. The scheduler's own verdict says when a pool is full: it alone knows
every node's taints, fragments and other tenants, which a sum of the nodes' GPUs would not.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from .. import api
from .autoscale import Decision, Reading, RouterMark, Signal, State, _ago, _stamp, adjust, decide, insufficient
from .types import Event

log = logging.getLogger("modelship")

Key = tuple[str, str]  # (namespace, name)
YIELD_TIMEOUT = 120.0  # seconds a model that yielded may take to free its place before the next one yields


@dataclass
class Model:
    """What the last reconcile of a ModelDeployment told the autoscaler."""

    spec: api.ModelDeploymentSpec
    pool: str | None = None
    uses: frozenset[str] = frozenset()  # resource names one replica asks for
    replicas: int = 0  # its serving pods that exist
    unschedulable: str | None = None  # the scheduler's word, while a pod cannot be placed for want of room
    needs: frozenset[str] = frozenset()  # the resources it said were insufficient


@dataclass
class View:
    """What a reconcile needs of the autoscaler: the replicas, the status, the events."""

    replicas: int
    status: dict
    condition: tuple[str, str, str]  # the Autoscaled condition: status, reason, message
    events: list[Event]
    note: str = ""  # about room in the pool, for the Ready condition's message


class Autoscaler:
    """The leader's autoscaler. `enqueue(namespace, name)` asks for a reconcile."""

    def __init__(self, enqueue, interval: float = 2.0, clock_fn=time.time, mono=time.monotonic):
        self.enqueue, self.interval, self.now, self.mono = enqueue, interval, clock_fn, mono
        self.started = clock_fn()
        self.models: dict[Key, Model] = {}
        self.states: dict[Key, State] = {}
        self.readings: dict[Key, dict[str, Reading]] = {}
        self.arrivals: dict[Key, int] = {}  # since the last decision; -1: cannot tell
        self.marks: dict[str, RouterMark] = {}  # router url -> its counters
        self.yielding: dict[Key, tuple[Key, float]] = {}  # wanted -> (the model that yielded to it, when)
        self.waiting: dict[Key, str] = {}  # wanted -> why no model yields to it (said once)
        self.notes: dict[Key, list[Event]] = {}  # events for models without autoscaling

    # --- from the reconcile loop ---

    def track(self, md: api.ModelDeployment, pool: str | None, uses: frozenset[str], replicas: int,
              unschedulable: str | None) -> None:
        key = (md.namespace, md.name)
        before = self.models.get(key)
        self.models[key] = Model(md.spec, pool, uses, replicas, unschedulable,
                                 insufficient(unschedulable) if unschedulable else frozenset())
        if unschedulable and not (before and before.unschedulable):
            self._rotate(self.now())  # room wanted: now, not at the next interval
        if not unschedulable:
            self.yielding.pop(key, None)
            self.waiting.pop(key, None)
            st = self.states.get(key)
            if st is not None and st.reason == "WaitingForRoom":
                st.reason, st.message = "Placed", f"room was made in pool {pool}: {st.desired} replica(s)"
        if not md.spec.autoscaled:
            self.states.pop(key, None)

    def forget(self, key: Key) -> None:
        for table in (self.models, self.states, self.readings, self.arrivals, self.yielding, self.waiting, self.notes):
            table.pop(key, None)

    def view(self, md: api.ModelDeployment) -> View | None:
        """The replicas and status of an autoscaled ModelDeployment (None: autoscaling is off)."""
        if not md.spec.autoscaled:
            return None
        key = (md.namespace, md.name)
        st = self._state(key, md)
        d = adjust(md.spec, st)  # (what the spec asks needs no signal)
        if d is not None:
            self._apply(key, st, d, self.now(), enqueue=False)
        events, st.events = st.events, []
        if self._signal(key) is None and self.now() - self.started > 3 * self.interval + 10:
            condition = ("False", "NoSignal", f"no router replica reported this model's load: the replicas stay at "
                                              f"{st.desired} (is the router running, and the operator's autoscaler "
                                              f"settings pointing at it?)")
        else:
            condition = ("True", st.reason, st.message)
        return View(st.desired, st.wire(), condition, events, self.note(key))

    def _state(self, key: Key, md: api.ModelDeployment) -> State:
        st = self.states.get(key)
        if st is None:
            st = self.states[key] = State.seed(md.spec, md.status.autoscaling, self.now())
            self.arrivals[key] = -1
        return st

    # --- from the routers ---

    def observe(self, url: str, answer: dict) -> bool:
        """One router replica's answer; True when a model at zero is asked for (decide now)."""
        now = self.mono()
        mark = self.marks.get(url)
        same = mark is not None and mark.router == answer.get("router") and answer.get("uptime", 0) >= mark.uptime
        elapsed = answer.get("uptime", 0) - mark.uptime if same else 0.0
        new = RouterMark(str(answer.get("router")), float(answer.get("uptime") or 0))
        urgent = False
        for name, m in (answer.get("models") or {}).items():
            ns, _, short = name.partition("/")
            if not short:
                continue  # (a static router's names are not ModelDeployments)
            key = (ns, short)
            area, requests = float(m.get("inFlightSeconds") or 0), int(m.get("requests") or 0)
            new.counters[name] = (area, requests)
            before = mark.counters.get(name) if same else None
            mean = (area - before[0]) / elapsed if before and elapsed > 0 else float(m.get("inFlight") or 0)
            if before is not None:  # (without one: the first answer since the operator or the router started)
                self.arrivals[key] = max(0, self.arrivals.get(key, 0)) + max(0, requests - before[1])
            held = int(m.get("held") or 0)
            self.readings.setdefault(key, {})[url] = Reading(
                now, max(0.0, mean), int(m.get("inFlight") or 0), held, float(m.get("idleSeconds") or 0),
                float(m["engineLoad"]) if m.get("engineScraped") else None)
            st = self.states.get(key)
            if st is not None and st.desired == 0 and (held or (before and requests > before[1])):
                urgent = True
        self.marks[url] = new
        return urgent

    def gone(self, url: str) -> None:
        """A router replica that is no longer there."""
        self.marks.pop(url, None)
        for readings in self.readings.values():
            readings.pop(url, None)

    def _complete(self, key: Key) -> bool:
        """Every router replica known answered about the model within the last interval or two:
        none is unheard (whose open requests would go unseen)."""
        limit = self.mono() - (2 * self.interval + 1)
        readings = self.readings.get(key) or {}
        return bool(self.marks) and all(url in readings and readings[url].at >= limit for url in self.marks)

    def _fresh(self, key: Key) -> list[Reading]:
        limit = self.mono() - (3 * self.interval + 5)
        return [r for r in (self.readings.get(key) or {}).values() if r.at >= limit]

    def _signal(self, key: Key) -> Signal | None:
        fresh = self._fresh(key)
        if not fresh:
            return None
        st = self.states.get(key)
        window = st.window if st else ()
        if window:
            in_flight = sum(w[1] for w in window) / len(window)
            engines = [w[2] for w in window if w[2] is not None]
            engine = sum(engines) / len(engines) if engines else None
        else:
            in_flight = sum(r.in_flight_mean for r in fresh)
            scraped = [r.engine for r in fresh if r.engine is not None]
            engine = sum(scraped) / len(scraped) if scraped else None
        arrivals = self.arrivals.get(key, -1)
        return Signal(in_flight, engine, sum(r.in_flight for r in fresh), sum(r.held for r in fresh), arrivals,
                      min(r.idle for r in fresh), self.now() - (st.started if st else self.now()),
                      self._complete(key))

    # --- deciding ---

    def tick(self, sample: bool = True) -> None:
        """Decide for every autoscaled model (`sample`: add this moment to their windows: the
        interval's ticks do; one made at once for a model at zero does not)."""
        now = self.now()
        for key, model in list(self.models.items()):
            if not model.spec.autoscaled:
                continue
            st = self.states.get(key)
            if st is None:
                continue  # not reconciled since the operator started: its saved state is not read yet
            fresh = self._fresh(key)
            if sample and fresh:
                scraped = [r.engine for r in fresh if r.engine is not None]
                st.window.append((now, sum(r.in_flight_mean for r in fresh),
                                  sum(scraped) / len(scraped) if scraped else None))
                while st.window and st.window[0][0] < now - model.spec.scaling().window_seconds:
                    st.window.popleft()
            sig = self._signal(key)
            if sig is None:
                continue
            if sig.open_now or sig.arrivals > 0:
                st.last_request = now
            elif sig.idle < now - (st.last_request or 0):
                st.last_request = now - sig.idle
            if not sample and not (st.desired == 0 and (sig.held or sig.arrivals)):
                continue
            if st.desired == 0 and self._made_room_for(key):
                continue  # it yielded to a model not placed yet: its requests wait (no ping-pong)
            d = decide(model.spec, st, sig, now)
            if sig.arrivals >= 0 or sig.held:
                self.arrivals[key] = 0
            if d is not None and d.replicas != st.desired:
                self._apply(key, st, d, now)
        self._rotate(now)

    def _apply(self, key: Key, st: State, d: Decision, now: float, enqueue: bool = True) -> None:
        was = st.desired
        st.desired, st.reason, st.message = d.replicas, d.reason, d.message
        st.metric, st.value, st.target = d.metric, d.value, d.target
        st.spec_replicas = self.models[key].spec.replicas if key in self.models else st.spec_replicas
        st.last_scale, st.said_request = now, st.last_request
        if was == 0 and d.replicas > 0:
            st.woken, st.yielded_to = now, None
        if d.replicas == 0 or d.reason in ("ScaledBySpec", "ScaledToBounds"):
            st.history.clear()  # (what was asked for before does not hold the new count up)
        st.events.append(Event("Normal", d.reason, d.message))
        log.info("autoscaler: %s/%s %d → %d replicas: %s", *key, was, d.replicas, d.message)
        if enqueue:
            self.enqueue(*key)

    def _made_room_for(self, key: Key) -> bool:
        """Whether this model yielded to one whose pods are not placed yet."""
        return any(victim == key for victim, _ in self.yielding.values())

    # --- rotation ---

    def _rotate(self, now: float) -> None:
        for key, model in list(self.models.items()):
            if not model.unschedulable or model.pool is None:
                continue
            pending = self.yielding.get(key)
            if pending is not None:
                other = self.models.get(pending[0])
                going = other is not None and other.replicas > 0  # (its pods, terminating ones included)
                if now - pending[1] < (YIELD_TIMEOUT if going else 10):
                    continue  # the last one to yield is still going, or the scheduler has not retried yet
            victim, why_not = self._victim(key, model, now)
            if victim is None:
                self._say_waiting(key, model, why_not)
                continue
            st, vm = self.states[victim], self.models[victim]
            who = f"{key[0]}/{key[1]}" if key[0] != victim[0] else key[1]
            idle = f"last request {_ago(now - st.last_request)} ago" if st.last_request else "no request yet"
            message = (f"scaled to zero to make room in pool {model.pool} for ModelDeployment {who} (priority "
                       f"{model.spec.scaling().priority}), which cannot be placed ({model.unschedulable}); this "
                       f"model was idle ({idle}); the next request wakes it")
            d = Decision(0, "Yielded", message)
            self._apply(victim, st, d, now)
            st.yielded_to = who
            self.yielding[key] = (victim, now)
            vname = f"{victim[0]}/{victim[1]}" if key[0] != victim[0] else victim[1]
            note = (f"ModelDeployment {vname} (idle, priority {vm.spec.scaling().priority}) yielded its place in "
                    f"pool {model.pool} to this model")
            self.waiting.pop(key, None)
            self._event(key, Event("Normal", "RoomMade", note))

    def _victim(self, key: Key, model: Model, now: float) -> tuple[Key | None, str]:
        priority = model.spec.scaling().priority if model.spec.autoscaling else 0
        found: list[tuple[int, float, Key]] = []
        why: list[str] = []
        for other, m in self.models.items():
            if other == key or m.pool != model.pool or not m.spec.autoscaled:
                continue
            st = self.states.get(other)
            name = other[1] if other[0] == key[0] else f"{other[0]}/{other[1]}"
            if st is None or st.desired == 0 or m.spec.bounds()[0] > 0:
                if st is not None and st.desired > 0:
                    why.append(f"{name}: minReplicas {m.spec.bounds()[0]}")
                continue
            if model.needs and m.uses and not (model.needs & m.uses):
                continue  # it frees nothing this model lacks
            p = m.spec.scaling().priority
            if p > priority:
                why.append(f"{name}: priority {p} above {priority}")
                continue
            fresh = self._fresh(other)
            if not self._complete(other) or any(r.in_flight or r.held for r in fresh):
                why.append(f"{name}: " + ("requests in flight" if self._complete(other) else
                                          "its load is not known (a router replica does not answer)"))
                continue
            stay = m.spec.scaling().min_residency_seconds
            if st.woken is not None and now - st.woken < stay:
                why.append(f"{name}: woke at {_stamp(st.woken)}, stays until {_stamp(st.woken + stay)}")
                continue
            found.append((p, st.last_request or 0.0, other))
        if not found:
            return None, "; ".join(why) or "no other model of the pool may sleep (minReplicas: 0)"
        return min(found)[2], ""

    def _say_waiting(self, key: Key, model: Model, why_not: str) -> None:
        """Once per reason: the wanted model waits, and why no model yields to it."""
        message = f"pool {model.pool} is full and no model may yield to this one yet ({why_not})"
        if self.waiting.get(key) == message:
            return
        self.waiting[key] = message
        st = self.states.get(key)
        if st is not None:
            st.reason, st.message = "WaitingForRoom", message
        self._event(key, Event("Normal", "WaitingForRoom", message))

    def _event(self, key: Key, event: Event) -> None:
        st = self.states.get(key)
        if st is not None:
            st.events.append(event)
        else:
            self.notes.setdefault(key, []).append(event)
        self.enqueue(*key)

    def note(self, key: Key) -> str:
        """For the Ready condition of a model that waits for room: who yielded to it."""
        model = self.models.get(key)
        if model is None or not model.unschedulable:
            return ""
        pending = self.yielding.get(key)
        if pending:
            return f"; ModelDeployment {pending[0][1]} yielded its place in pool {model.pool} to it"
        return f"; {self.waiting[key]}" if key in self.waiting else ""

    def pop_events(self, key: Key) -> list[Event]:
        """Events for a ModelDeployment the autoscaler does not scale (one waiting for room)."""
        return self.notes.pop(key, [])
