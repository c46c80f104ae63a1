"""The router's HTTP side: a plain ASGI application (no framework on the hot path).

Requests name a model; the registry finds its target; the app reads and checks the request
(its route, its API key, its body's size and JSON) and hands it, as one `Exchange`, to the
`Forwarder`, which picks an endpoint and relays the answer. Errors come in OpenAI's shape.

A request for a model with no ready endpoint goes to its first fallback that has one; for a
model that can be woken (autoscaled to zero) it also moves the load's version, which wakes
the operator's long poll of `/modelship/load`.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import time
from urllib.parse import parse_qs

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import usage
from .accesslog import AccessLog
from . import callers
from .callers import Callers
from . import validate
from .engines import display, engine
from .errors import ClientGone, ErrorAnswer, respond
from .exchange import Call, Exchange, cancel_on_disconnect
from .forward import Forwarder
from .load import MAX_WAIT, Load
from .metrics import Metrics
from .openapi import DOCUMENT as OPENAPI
from .registry import Registry, Target
from .quota import Limit, Quotas
from .settings import Limits
from .upstream import Upstream

OPENAI_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}
BUMP_EVERY = 0.5  # seconds: a model's demand moves the load's version at most this often
log = logging.getLogger("modelship.router")
TGI_PATHS = ("", "generate", "generate_stream", "info")  # "": TGI's `POST /` (what its client calls)


class Router:
    def __init__(self, registry: Registry, client: Upstream, limits: Limits | None = None,
                 api_keys: list[str] | dict[str, str] | None = None, metrics: Metrics | None = None):
        self.registry, self.client = registry, client
        limits = limits or Limits()
        self.max_body_bytes, self.body_timeout = limits.max_body_bytes, limits.body_timeout
        self.callers = Callers()
        self.set_api_keys(api_keys or [])
        self.quotas = Quotas()
        self._callers_limits: dict[str, Limit] = {}
        self._default_limit: Limit | None = None
        self.model_limits: list[tuple[str, Limit]] = []  # (name or glob, limit), in the settings' order
        self._model_limited: dict[str, tuple] = {}  # target name -> its names when its limit was looked up
        self.access: AccessLog | None = None  # the access log, once serving (server.serve)
        self.metrics = metrics or Metrics(registry)
        self.load = Load()
        self.forwarder = Forwarder(client, limits, self.metrics, registry)
        self.forwarder.admit_model = self._admit_fallback
        self._forward = self.forwarder.forward  # bound once: called on every request
        self.on_startup: list = []  # called with the running loop (discovery starts its watches)
        self.background: list[asyncio.Task] = []  # cancelled at shutdown

    def set_api_keys(self, keys: list[str] | dict[str, str]) -> None:
        """The keys a request may carry (none: no key needed): a list of keys, or key -> name."""
        named = keys if isinstance(keys, dict) else {k: callers.key_name(k) for k in keys}
        old = self.callers
        self.callers = Callers(named, {n: p.patterns for n, p in old.policies.items()}, list(old.default.patterns))

    def set_limits(self, callers: dict[str, Limit], default: Limit, models: dict[str, Limit]) -> None:
        """The limits: per caller, for callers not named, and per model (names or globs: each
        model they match has a limit of its own)."""
        self.model_limits = [(p, limit) for p, limit in models.items() if limit]
        self._callers_limits, self._default_limit = callers, default
        self._model_limited = {}
        self.quotas.configure(callers, {n: self._model_limit(n) for n in self.quotas.models
                                        if self._model_limit(n)}, default)

    def _model_limit(self, name: str) -> Limit | None:
        target = self.registry.targets.get(name)
        names = target.names() if target is not None else [name]
        return next((limit for p, limit in self.model_limits if any(fnmatch.fnmatchcase(n, p) for n in names)),
                    None)

    def _limit_model(self, target: Target) -> None:
        """Give a model the limit the settings say for it, if any: once for each set of its
        names (an alias may be what a pattern matches, and discovery changes them in place)."""
        names = target.names_key
        if self._model_limited.get(target.name) is names:
            return
        name = target.name
        limit = self._model_limit(name)
        self._model_limited[name] = names
        current = self.quotas.models.get(name)
        if (current.limit if current is not None else None) != limit:  # new, changed, or no longer matched
            models = {n: q.limit for n, q in self.quotas.models.items() if n != name}
            if limit is not None:
                models[name] = limit
            self.quotas.configure(self._callers_limits, models, self._default_limit)

    def set_callers(self, policies: dict[str, list[str]], default: list[str]) -> None:
        """What each caller may call (the settings' `callers` and `defaultCaller`)."""
        old = self.callers
        self.callers = Callers({}, policies, default)
        self.callers.keys = old.keys

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send)
        except ErrorAnswer as e:
            if e.status >= 500:
                log.warning("%s %s: %d %s", scope["method"], scope["path"], e.status, e.message)
            await respond(send, e.status, e.body(), e.headers)
        except ClientGone:
            pass
        except ConnectionAbortedError:  # an answer cut after its head, not SSE: it must not look whole, so
            pass  # its connection is closed (uvicorn does that, in one line, when the app returns)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    for fn in self.on_startup:
                        fn(asyncio.get_running_loop())
                except Exception as e:  # noqa: BLE001 - said in one line, and the server stops
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for task in self.background:
                    task.cancel()
                await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _route(self, scope, receive, send) -> None:
        path, method = scope["path"], scope["method"]
        if path == "/health":
            await respond(send, 200, b'{"status":"ok"}')
            return
        if path == "/metrics":
            self.metrics.prune({(t.name, url) for t in self.registry.targets.values() for url in t.endpoints})
            await respond(send, 200, generate_latest(self.metrics.registry), content_type=CONTENT_TYPE_LATEST.encode())
            return
        if path == "/modelship/quota":  # the other router replicas: what this one let through, per limit
            await respond(send, 200, orjson.dumps(self.quotas.report()))
            return
        if path == "/modelship/load":  # the operator's autoscaler: load figures, as /metrics has, no secret
            await self._load(scope, receive, send)
            return
        if path == "/openapi.json":  # this API, described (openapi.py)
            await respond(send, 200, OPENAPI)
            return
        call = Call(_request_id(scope["headers"]), "", time.monotonic())
        try:
            call.caller = self.callers.identify(scope["headers"])
            if path == "/v1/models" and method == "GET":
                await respond(send, 200, self._models(call.caller), call.headers)
                return
            await self._infer(scope, receive, send, call)
        except ErrorAnswer as e:
            call.status = e.status
            if e.status >= 500:
                log.warning("%s %s: %d %s", method, path, e.status, e.message)
            await respond(send, e.status, e.body(), e.headers + call.headers)
        finally:
            if call.status:
                self._account(call, method, path)

    async def _infer(self, scope, receive, send, call: Call) -> None:
        path, method = scope["path"], scope["method"]
        kind = OPENAI_PATHS.get(path)
        if kind is not None:
            if method != "POST":
                raise ErrorAnswer(405, f"{path} takes POST")
            raw, body = await self._read_json(scope, receive)
            validate.check(kind, body)
            named = self._target(body.get("model"), call)
            await self._serve(Exchange(named, named, path, raw, body, kind, receive, send, call=call))
            return
        if path.startswith("/models/"):  # TGI's native API: /models/{name}/generate
            name, _, rest = path[len("/models/"):].rstrip("/").partition("/")
            if rest not in TGI_PATHS:
                raise ErrorAnswer(404, f"no route {path}: the TGI API is at /models/{{name}}/generate, "
                                       f"/models/{{name}}/generate_stream and /models/{{name}}/info", code="not_found")
            named = self._target(name, call)
            if not engine(named.engine).tgi_api:
                raise ErrorAnswer(400, f"model {name!r} is served by {display(named.engine)}, which has no TGI API: "
                                       f"use the OpenAI API (/v1/chat/completions, /v1/completions)",
                                  code="unsupported_api")
            if rest == "info":
                await self._serve(Exchange(named, named, "/info", b"", {}, "info", receive, send, method="GET",
                                           call=call))
                return
            raw, body = await self._read_json(scope, receive)
            validate.check("tgi", body)
            await self._serve(Exchange(named, named, "/" + rest, raw, body, "tgi", receive, send, call=call))
            return
        raise ErrorAnswer(404, f"no route {method} {path}: the router serves /v1/chat/completions, /v1/completions, "
                               f"/v1/models, /models/{{name}}/generate[_stream], /models/{{name}}/info, /health, "
                               f"/metrics and /modelship/load", code="not_found")

    async def _serve(self, ex: Exchange) -> None:
        """One request, within its caller's and its model's limits, to the engines."""
        named, call = ex.named, ex.call
        if named.defaults or named.served_as_named:
            ex.shape(named)
        if named.wakeable and not named.ready():
            self._bump(named)
        if self.model_limits:
            self._limit_model(named)
        prompt, most = usage.estimate(ex.kind, ex.body, len(ex.raw))
        if not most:  # the model's maxNewTokens, whichever applies it (the router, or the engine itself)
            most = named.defaults.get("max_new_tokens", 0)
        call.estimate, call.reserved = prompt, prompt + most
        try:
            admission = self.quotas.admit(call.caller, named.name, call.started, prompt + most)
        except ErrorAnswer as e:  # over a limit: 429
            self.metrics.child(self.metrics.limited, call.caller, named.name, e.limit).inc()
            raise
        call.headers.extend(admission.headers())
        try:
            await self._forward(ex)
        finally:  # (a request no engine answered uses no tokens; the model, none a fallback used)
            used = call.used() if call.answered_by else 0
            admission.done(time.monotonic(), used, prompt + most, used if call.answered_by == named.name else 0)

    def _admit_fallback(self, target: Target, call: Call):
        """A fallback's own model limits (its caller's were taken for the model it named)."""
        if self.model_limits:
            self._limit_model(target)
        try:
            return self.quotas.admit_model(target.name, time.monotonic(), call.reserved)
        except ErrorAnswer as e:
            self.metrics.child(self.metrics.limited, call.caller, target.name, e.limit).inc()
            e.headers = [h for h in e.headers if not h[0].startswith(b"x-ratelimit-")]  # (the caller's are sent)
            raise

    def _account(self, call: Call, method: str, path: str) -> None:
        """The usage counters and the access log line of one request, once it is answered."""
        key = (call.caller, call.model, call.status)
        counts = self.metrics.usage.get(key)
        if counts is None:
            counts = self.metrics.usage[key] = [0, 0, 0]
        counts[0] += 1
        if call.answered_by:
            if call.prompt_tokens < 0:
                call.prompt_tokens = call.estimate
            counts[1] += call.prompt_tokens
            counts[2] += max(call.completion_tokens, 0)
        if self.access is not None:
            self.access.write(orjson.dumps({
                "time": round(time.time(), 3), "id": call.rid.decode("latin-1"), "caller": call.caller,
                "method": method, "path": path, "model": call.model, "answeredBy": call.answered_by,
                "endpoint": call.endpoint, "status": call.status,
                "ttfb": round(call.ttfb, 4) if call.ttfb >= 0 else None,
                "duration": round(time.monotonic() - call.started, 4),
                "promptTokens": call.prompt_tokens if call.prompt_tokens >= 0 else None,
                "completionTokens": call.completion_tokens if call.completion_tokens >= 0 else None}))

    def _models(self, caller: str) -> bytes:
        """/v1/models: every name the caller may use whose target has a ready endpoint or can be
        woken."""
        now = int(time.time())
        data = []
        policy = self.callers.policy(caller)
        for name, t in self.registry.serving(None if policy.any else policy.may):
            ready = len(t.ready())
            data.append({"id": name, "object": "model", "created": now, "owned_by": "modelship",
                         "modelship": {"target": t.name, "engine": t.engine, "ready_endpoints": ready,
                                       "state": "serving" if ready else "scaled-to-zero"}})
        return orjson.dumps({"object": "list", "data": data})

    async def _load(self, scope, receive, send) -> None:
        """`GET /modelship/load?version=N&wait=S`: the demand report, at once when its version
        is not N (or none is given), else when it moves or after S seconds (at most MAX_WAIT).
        A client that leaves stops the wait."""
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            version = int(query["version"][0]) if "version" in query else None
            wait = min(float(query["wait"][0]), MAX_WAIT) if "wait" in query else 0.0
        except ValueError:
            raise ErrorAnswer(400, "version must be an integer and wait a number of seconds") from None
        if version is not None and version == self.load.version and wait > 0:
            task = asyncio.current_task()
            watcher = asyncio.create_task(cancel_on_disconnect(receive, task))
            try:
                await self.load.wait(version, wait)
            except asyncio.CancelledError:
                if watcher.done() and not watcher.cancelled():  # the client left
                    task.uncancel()
                    return
                raise
            finally:
                watcher.cancel()
        await respond(send, 200, orjson.dumps(self.load.report(list(self.registry.targets.values()))))

    def _bump(self, named: Target) -> None:
        """A request for a model that can be woken, which has no ready endpoint, moves the load's
        version (the operator wakes it), whether a fallback answers or it is held; the held
        count is raised before the operator's poll runs (no await between)."""
        if named.wakeable:
            now = time.monotonic()
            if now - named.demand.bumped >= BUMP_EVERY:  # (the first at once; a flood moves it twice a second)
                named.demand.bumped = now
                self.load.bump()

    def _target(self, model, call: Call) -> Target:
        """The target a request names, if its caller may call it: 403 when it may not (whether
        the model exists or not), 404 when it does not exist; both list only what it may call."""
        policy = self.callers.policy(call.caller)
        if not policy.any:
            call.allowed = policy.may  # (its fallbacks too)
        if model is None:
            names = list(self.registry.targets)
            if len(names) == 1 and policy.may(self.registry.targets[names[0]]):
                target = self.registry.targets[names[0]]
                call.model = target.name
                return target
            raise ErrorAnswer(400, f"the request names no model: set \"model\" to one of "
                                   f"{', '.join(self._names(call.caller)) or '(none)'}", param="model",
                              code="missing_required_parameter")
        target = self.registry.find(model, call.allowed)
        if target is None or not policy.may(target):
            if target is not None or not policy.may_name(model):
                raise self.callers.refuse(call.caller, model, self._names(call.caller))
            raise ErrorAnswer(404, f"the model {model!r} does not exist here; the models are: "
                                   f"{', '.join(self._names(call.caller)) or '(none)'}", code="model_not_found")
        call.model = target.name
        return target

    def _names(self, caller: str) -> list[str]:
        """The names a caller may use."""
        policy = self.callers.policy(caller)
        if policy.any:
            return self.registry.names()
        return [n for n in self.registry.names() if (t := self.registry.find(n, policy.may)) is not None
                and policy.may(t)]

    async def _read_json(self, scope, receive) -> tuple[bytes, dict]:
        limit = self.max_body_bytes
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ErrorAnswer(413, f"the request body is {int(declared)} bytes; the limit is {limit}")
        chunks, size = [], 0
        try:
            with self.forwarder.wheel.timeout(self.body_timeout, asyncio.current_task()):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ClientGone
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise ErrorAnswer(413, f"the request body is over the limit of {limit} bytes")
                    chunks.append(chunk)
                    if not message.get("more_body"):
                        break
        except TimeoutError:
            raise ErrorAnswer(408, f"the request body did not arrive within {self.body_timeout:g} s "
                                   f"(--body-timeout)", code="request_timeout", headers=[(b"connection", b"close")]) from None
        raw = b"".join(chunks)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise ErrorAnswer(400, f"the request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise ErrorAnswer(400, "the request body must be a JSON object")
        return raw, body


def _request_id(headers) -> bytes:
    """The client's `x-request-id` when it is a sane one (printable ASCII, at most 128
    characters), else one made here."""
    for k, v in headers:
        if k == b"x-request-id":
            if 0 < len(v) <= 128 and v.isascii() and all(32 < c < 127 for c in v):
                return v
            break
    return os.urandom(12).hex().encode()
