"""What the router knows: the models it serves, by every name a request may use, and their
endpoints. Discovery (a static file, or the cluster's ModelDeployments and EndpointSlices)
writes it; the app and forwarding read it on every request."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .. import api
from . import balance
from .engines import ENGINES, engine
from .load import Demand


@dataclass(eq=False)
class Target:
    """One ModelDeployment, as the router sees it."""

    name: str
    engine: str = "llamacpp"  # engines.ENGINES: which native API it has, its metrics ("": not resolved yet)
    strategy: balance.Strategy = field(default_factory=balance.make)  # the default strategy
    endpoints: dict[str, balance.Endpoint] = field(default_factory=dict)  # url -> endpoint
    aliases: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    fallback: list[str] = field(default_factory=list)
    wakeable: bool = False  # autoscaled down to zero replicas: a request waits for it to wake
    config: tuple = ()  # what the target was built from (discovery replaces it when that changes)
    demand: Demand = field(default_factory=Demand)  # its requests, for the autoscaler (kept when replaced)
    defaults: dict = field(default_factory=dict)  # spec.serving.generation (the router applies it where
    # engines.Engine.router_defaults says: TGI, which has none of its own; the others are started with it)
    served: str = ""  # the name its engine serves it by (--served-model-name; "": `name`)
    name_bytes: bytes = field(init=False, repr=False)  # the name as a header value (x-modelship-model)

    def __post_init__(self) -> None:
        self.name_bytes = self.name.encode()

    @property
    def served_as_named(self) -> bool:
        """Whether its engine must be asked by its served name (exchange.Exchange.shape)."""
        return engine(self.engine).served_name

    def names(self) -> list[str]:
        """Every name a request may use for it."""
        return [self.name, *self.aliases, *self.tasks]

    @property
    def names_key(self) -> tuple:
        """Its names, as one object that is the same while they are (a policy's cache key)."""
        key = (self.name, *self.aliases, *self.tasks)
        cached = self.__dict__.get("_names_key")
        if cached is not None and cached == key:
            return cached
        self.__dict__["_names_key"] = key
        return key

    def ready(self) -> list[balance.Endpoint]:
        return [e for e in self.endpoints.values() if e.ready]

    def set_endpoints(self, urls: dict[str, bool]) -> None:
        """The endpoints now (url -> ready). Counters of those that stay are kept; a gone
        endpoint's cached prefixes are forgotten. Requests held for a ready endpoint are woken
        when one appears, or a new one that is starting."""
        gone = {u for u in self.endpoints if u not in urls}
        for url in gone:
            del self.endpoints[url]
        if gone:
            self.strategy.forget(gone)
        new = [u for u in urls if u not in self.endpoints]
        now = None
        for url, ready in urls.items():
            ep = self.endpoints.setdefault(url, balance.Endpoint(url))
            if not ready and ep.probed_until:  # the router found it healthy: the kubelet will too, soon
                now = now or time.monotonic()
                ready = now < ep.probed_until
            elif ready:
                ep.probed_until = 0.0
            ep.ready = ready
        if self.demand.woken is not None and (new or any(urls.values())):
            self.demand.wake()  # (a pod that is starting: held requests may ask its engine themselves)


class Registry:
    def __init__(self) -> None:
        self.targets: dict[str, Target] = {}

    def put(self, target: Target) -> None:
        """Add a target, or replace the one of its name, whose demand it takes over: its
        counters, and its held requests, woken to go on with this one."""
        old = self.targets.get(target.name)
        self.targets[target.name] = target
        if old is not None and old is not target:
            target.demand = old.demand
            target.demand.wake()

    def remove(self, name: str) -> None:
        gone = self.targets.pop(name, None)
        if gone is not None:
            gone.demand.wake()  # its held requests learn at once that it is gone

    def find(self, model: str, allowed=None) -> Target | None:
        """The target a request names: by name, then alias, then task (the task's target with
        the most ready endpoints, among those `allowed(target)` when given: a caller's)."""
        found = self.targets.get(model)
        if found is None:
            found = next((t for t in self.targets.values() if model in t.aliases), None)
        if found is None:
            serving = [t for t in self.targets.values() if model in t.tasks and (allowed is None or allowed(t))]
            found = max(serving, key=lambda t: len(t.ready()), default=None)
        return found

    def fallbacks(self, named: Target, allowed=None):
        """`named`'s fallbacks in order, depth first (a fallback's own fallbacks after it), each
        once and never `named` again: no loop. `allowed(target)`, when given, passes over those a
        caller may not call."""
        seen, stack = {named.name}, list(reversed(named.fallback))
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            other = self.targets.get(name)
            if other is None:
                continue
            stack.extend(reversed(other.fallback))
            if allowed is None or allowed(other):
                yield other

    def lookup(self, model: str, allowed=None) -> Target | None:
        """The target that answers a request for `model`: the one it names (`find`), or, while
        that one has no ready endpoint, its first fallback that has one (of those `allowed`)."""
        found = self.find(model, allowed)
        if found is not None and not found.ready():
            return next((o for o in self.fallbacks(found, allowed) if o.ready()), None) or found
        return found

    def names(self) -> list[str]:
        """Every name a request may use."""
        out = set(self.targets)
        for t in self.targets.values():
            out.update(t.aliases)
            out.update(t.tasks)
        return sorted(out)

    def serving(self, allowed=None) -> list[tuple[str, Target]]:
        """(name, target) for every name a request may use now, /v1/models: its target has a
        ready endpoint, or can be woken (of those `allowed`, when given: a caller's)."""
        out = []
        for n in self.names():
            named = self.find(n, allowed)
            if named is None or (allowed is not None and not allowed(named)):
                continue
            t = self.lookup(n, allowed)
            if t.wakeable or t.ready():
                out.append((n, t))
        return out


# --- the static list (benchmarks, tests, a router outside the cluster) ----------------------


class StaticEntry(api.LoadBalancing):
    """One model of the static file: its endpoints, the names requests may use, and the load
    balancing fields of a ModelDeployment's `router.loadBalancing` (their defaults and bounds
    from there), at the entry's top level. `round-robin` and `prefix-hash`, the benchmarks'
    baselines, are strategies here that the CRD does not offer."""

    name: str
    engine: Literal[tuple(ENGINES)] = "llamacpp"
    endpoints: list[str] = Field(default_factory=list)
    aliases: list[str] = Field(default_factory=list)
    tasks: list[str] = Field(default_factory=list)
    fallback: list[str] = Field(default_factory=list)
    strategy: Literal[balance.STRATEGIES] = balance.DEFAULTS.strategy
    wakeable: bool = False  # as an autoscaled ModelDeployment that may sleep at zero replicas
    generation: api.GenerationDefaults | None = None  # as a ModelDeployment's spec.serving.generation
    served_name: str | None = None  # the name its engine serves it by, where that is not `name`
    kv_weight: float = Field(balance.KV_WEIGHT, ge=0)  # queue-aware: requests a full KV cache counts for (the
    # benchmarks' knob: a ModelDeployment has the router's own figure)

    @model_validator(mode="after")
    def _served(self) -> StaticEntry:
        if not self.endpoints and not self.wakeable:  # (a wakeable one without: a model asleep for good)
            raise ValueError("endpoints: a model needs at least one, unless it is wakeable")
        return self


class StaticFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[StaticEntry]


def load_static(path: str | Path, seed: int | None = None) -> Registry:
    """A registry from a YAML file: `models: [{name, engine, endpoints: [url...], aliases,
    tasks, fallback, strategy, wakeable}]`."""
    config = StaticFile.model_validate(yaml.safe_load(Path(path).read_text()) or {})
    reg = Registry()
    for m in config.models:
        t = Target(m.name, m.engine, balance.make(m.strategy, m.prefix_block_size, m.max_imbalance, seed, m.kv_weight),
                   aliases=m.aliases, tasks=m.tasks, fallback=m.fallback, wakeable=m.wakeable,
                   served=m.served_name or "",
                   defaults=m.generation.model_dump(exclude_none=True) if m.generation else {})
        t.set_endpoints({u.rstrip("/"): True for u in m.endpoints})
        reg.put(t)
    return reg
