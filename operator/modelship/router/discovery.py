"""Where the endpoints come from in a cluster: ModelDeployments and the EndpointSlices of
their Services, watched (never polled).

`State` is pure: it takes watch events and says what the registry should hold. `Watcher`
runs the two watches (list, then watch from the list's resourceVersion, again from a fresh
list when the server says the version is gone) in threads, and applies each change to the
registry on the event loop. An endpoint that turns unready leaves the registry with the very
event that says so, so no new request goes to it.

Names: a ModelDeployment is `namespace/name`, and also `name` (and its aliases and tasks)
when no other watched namespace uses that name.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import dataclass, field

from kubernetes import client, watch
from kubernetes.client.rest import ApiException
from pydantic import ValidationError

from .. import api
from ..endpointslices import slice_endpoints
from . import balance
from .engines import ENGINES
from .registry import Registry, Target

log = logging.getLogger("modelship.router")



@dataclass(frozen=True)
class Discovered:
    """What the router needs of one ModelDeployment: its names, its engine, its `spec.router`,
    read with the API's own models (so the defaults are the CRD's), and whether it can be
    woken: autoscaled (`maxReplicas` set) down to zero (`minReplicas: 0`; unset means 1)."""

    namespace: str
    name: str
    engine: str
    aliases: tuple[str, ...]
    tasks: tuple[str, ...]
    fallback: tuple[str, ...]
    strategy: str
    block: int
    max_imbalance: int
    wakeable: bool = False
    defaults: tuple = ()  # spec.serving.generation as (snake_case key, value) pairs: applied here for TGI only

    @classmethod
    def from_object(cls, obj: dict) -> "Discovered":
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        router = routing(spec.get("router") or {}, f"{obj['metadata']['namespace']}/{obj['metadata']['name']}")
        lb = router.load_balancing or api.LoadBalancing()
        engine = (status.get("resolved") or {}).get("engine") or _asked_engine(spec)
        wakeable = spec.get("maxReplicas") is not None and spec.get("minReplicas") == 0
        return cls(obj["metadata"]["namespace"], obj["metadata"]["name"], engine, tuple(router.aliases),
                   tuple(router.tasks), tuple(router.fallback), lb.strategy, lb.prefix_block_size, lb.max_imbalance,
                   wakeable, _generation(spec))


def _asked_engine(spec: dict) -> str:
    """The engine of a ModelDeployment the operator has not resolved yet (its status says none):
    the one its spec names, or "" (not known) for `auto`, which the weights' format and the
    operator's default engine decide."""
    asked = (spec.get("engine") or {}).get("type")
    return asked if asked in ENGINES else ""


GENERATION = {"temperature": "temperature", "topP": "top_p", "topK": "top_k", "maxNewTokens": "max_new_tokens"}


def _generation(spec: dict) -> tuple:
    """`spec.serving.generation`, as the router applies it (numbers only: the API server checked
    their ranges)."""
    given = ((spec.get("serving") or {}).get("generation")) or {}
    if not isinstance(given, dict):
        return ()
    return tuple((key, given[k]) for k, key in GENERATION.items()
                 if isinstance(given.get(k), (int, float)) and not isinstance(given.get(k), bool))


def _api_type(annotation) -> type[api.ApiType] | None:
    """The API type a field holds (itself, or inside `X | None`), if any."""
    for t in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(t, type) and issubclass(t, api.ApiType):
            return t
    return None


def _known(model: type[api.ApiType], raw: dict) -> dict:
    """The keys of `raw` that `model` has (camelCase), nested models' too: a field this router
    does not know (a newer CRD's) is not a reason to stop serving a model."""
    out = {}
    for name, f in model.model_fields.items():
        key = f.alias or name
        if key in raw:
            nested, value = _api_type(f.annotation), raw[key]
            out[key] = _known(nested, value) if nested and isinstance(value, dict) else value
    return out


def routing(raw: dict, who: str) -> api.RouterSpec:
    """A ModelDeployment's `spec.router`, read with the API's own models (their defaults are
    the CRD's). Unknown fields are ignored; a value the router cannot use (the API server
    checks the same schema, so: an older or newer CRD) gives way to the defaults, with a
    warning. The model is served either way."""
    known = _known(api.RouterSpec, raw)
    try:
        return api.RouterSpec.model_validate(known)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        log.warning("ModelDeployment %s: spec.router.%s: %s; served with the default load balancing", who, where,
                    first["msg"])
    try:  # its names still count
        return api.RouterSpec.model_validate({k: v for k, v in known.items() if k != "loadBalancing"})
    except ValidationError:
        return api.RouterSpec()


@dataclass
class State:
    models: dict[tuple[str, str], Discovered] = field(default_factory=dict)
    slices: dict[tuple[str, str], tuple[str | None, dict[str, bool]]] = field(default_factory=dict)
    allowed: list | None = None  # networks requests may go to (None: any)

    def on_model(self, kind: str, obj: dict) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if kind == "DELETED":
            self.models.pop(key, None)
            return
        self.models[key] = Discovered.from_object(obj)

    def on_slice(self, kind: str, obj: dict) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if kind == "DELETED":
            self.slices.pop(key, None)
        else:
            self.slices[key] = slice_endpoints(obj, self.allowed)

    def endpoints(self, namespace: str, service: str) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for (ns, _), (svc, eps) in self.slices.items():
            if ns == namespace and svc == service:
                for url, ready in eps.items():
                    out[url] = out.get(url, False) or ready
        return out

    def apply(self, registry: Registry) -> None:
        """Make the registry hold these models and endpoints. Targets that stay keep their
        strategy's index and their endpoints' counters."""
        counts: dict[str, int] = {}
        for ns, name in self.models:
            counts[name] = counts.get(name, 0) + 1
        wanted: dict[str, Discovered] = {}
        for (ns, name), m in self.models.items():
            wanted[f"{ns}/{name}"] = m
        for key, m in wanted.items():
            unique = counts[m.name] == 1
            target = registry.targets.get(key)
            config = (m.engine, m.strategy, m.block, m.max_imbalance)
            if target is None or target.config != config:
                target = Target(key, m.engine, balance.make(m.strategy, m.block, m.max_imbalance), config=config)
                registry.put(target)
            target.aliases = [m.name, *m.aliases] if unique else []
            target.tasks = list(m.tasks)
            target.fallback = [f"{m.namespace}/{f}" for f in m.fallback]
            target.defaults = dict(m.defaults)
            target.served = m.name  # (the operator starts the engine with --served-model-name <name>)
            if target.wakeable and not m.wakeable:
                target.demand.wake()  # requests held for it get the usual 503 now, not at their deadline
            target.wakeable = m.wakeable  # (in place: a request held for it follows the change)
            target.set_endpoints(self.endpoints(m.namespace, m.name))
        for key in [k for k in registry.targets if k not in wanted]:
            registry.remove(key)


class Watcher:
    """The two watches, in threads, feeding `State` and the registry on the event loop."""

    def __init__(self, registry: Registry, namespaces: list[str], loop: asyncio.AbstractEventLoop,
                 api_client: client.ApiClient, allowed: list | None = None):
        self.registry, self.namespaces, self.loop = registry, namespaces, loop
        self.state = State(allowed=allowed)
        self.custom, self.discovery = client.CustomObjectsApi(api_client), client.DiscoveryV1Api(api_client)
        self.synced = {"models": threading.Event(), "slices": threading.Event()}
        self.stop = threading.Event()

    def start(self) -> None:
        for what in ("models", "slices"):
            for ns in self.namespaces or [None]:
                threading.Thread(target=self._run, args=(what, ns), daemon=True, name=f"watch-{what}").start()

    def _list_fn(self, what: str, ns: str | None):
        if what == "models":
            if ns:
                return (lambda **kw: self.custom.list_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.PLURAL,
                                                                                 **kw))
            return lambda **kw: self.custom.list_cluster_custom_object(api.GROUP, api.VERSION, api.PLURAL, **kw)
        selector = "app.kubernetes.io/managed-by=modelship"
        if ns:
            return lambda **kw: self.discovery.list_namespaced_endpoint_slice(ns, label_selector=selector, **kw)
        return lambda **kw: self.discovery.list_endpoint_slice_for_all_namespaces(label_selector=selector, **kw)

    def _run(self, what: str, ns: str | None) -> None:
        fn = self._list_fn(what, ns)
        on = self.state.on_model if what == "models" else self.state.on_slice
        while not self.stop.is_set():
            try:
                listed = fn(_preload_content=False)
                body = json.loads(listed.data)
                items, version = body.get("items") or [], body["metadata"]["resourceVersion"]
                self._submit(lambda: self._replace(what, ns, items))
                self.synced[what].set()
                for event in watch.Watch().stream(fn, resource_version=version, timeout_seconds=300,
                                                  allow_watch_bookmarks=True):
                    if event["type"] == "BOOKMARK":
                        continue
                    obj = event["raw_object"]
                    kind = event["type"]
                    self._submit(lambda k=kind, o=obj: (on(k, o), self.state.apply(self.registry)))
            except ApiException as e:
                if e.status != 410:  # 410: the version is gone; list again
                    log.warning("watching %s failed: %s; retrying", what, e.reason)
                    self.stop.wait(2)
            except Exception as e:  # noqa: BLE001 - a dropped watch: list and watch again
                log.warning("watching %s failed: %s; retrying", what, e)
                self.stop.wait(2)

    def _replace(self, what: str, ns: str | None, items: list[dict]) -> None:
        table = self.state.models if what == "models" else self.state.slices
        for key in [k for k in table if ns is None or k[0] == ns]:
            del table[key]
        on = self.state.on_model if what == "models" else self.state.on_slice
        for obj in items:
            obj.setdefault("metadata", {})
            on("ADDED", obj)
        self.state.apply(self.registry)

    def _submit(self, fn) -> None:
        self.loop.call_soon_threadsafe(fn)
