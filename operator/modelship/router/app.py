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
import hmac
import time
from urllib.parse import parse_qs

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .errors import ClientGone, ErrorAnswer, respond
from .forward import Exchange, Forwarder, cancel_on_disconnect
from .load import MAX_WAIT, Load
from .metrics import Metrics
from .registry import Registry, Target
from .settings import Limits
from .upstream import Upstream

OPENAI_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}
BUMP_EVERY = 0.5  # seconds: a model's demand moves the load's version at most this often
TGI_PATHS = ("", "generate", "generate_stream", "info")  # "": TGI's `POST /` (what its client calls)


class Router:
    def __init__(self, registry: Registry, client: Upstream, limits: Limits | None = None,
                 api_keys: list[str] | None = None, metrics: Metrics | None = None):
        self.registry, self.client = registry, client
        limits = limits or Limits()
        self.max_body_bytes = limits.max_body_bytes
        self.set_api_keys(api_keys or [])
        self.metrics = metrics or Metrics(registry)
        self.load = Load()
        self.forwarder = Forwarder(client, limits, self.metrics, registry)
        self._forward = self.forwarder.forward  # bound once: called on every request
        self.on_startup: list = []  # called with the running loop (discovery starts its watches)
        self.background: list[asyncio.Task] = []  # cancelled at shutdown

    def set_api_keys(self, keys: list[str]) -> None:
        """The keys a request may carry (none: no key needed)."""
        self.api_keys = [k.encode() for k in keys]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send)
        except ErrorAnswer as e:
            await respond(send, e.status, e.body(), e.headers)
        except ClientGone:
            pass

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
        if path == "/modelship/load":  # the operator's autoscaler: load figures, as /metrics has, no secret
            await self._load(scope, receive, send)
            return
        self._authorize(scope)
        if path == "/v1/models" and method == "GET":
            await respond(send, 200, self._models())
            return
        kind = OPENAI_PATHS.get(path)
        if kind is not None:
            if method != "POST":
                raise ErrorAnswer(405, f"{path} takes POST")
            raw, body = await self._read_json(scope, receive)
            named = self._target(body.get("model"))
            await self._forward(Exchange(named, named if named.ready() else self._stand_in(named), path, raw, body,
                                         kind, receive, send))
            return
        if path.startswith("/models/"):  # TGI's native API: /models/{name}/generate
            name, _, rest = path[len("/models/"):].rstrip("/").partition("/")
            if rest not in TGI_PATHS:
                raise ErrorAnswer(404, f"no route {path}: the TGI API is at /models/{{name}}/generate, "
                                       f"/models/{{name}}/generate_stream and /models/{{name}}/info", code="not_found")
            named = self._target(name)
            if named.engine != "tgi":
                raise ErrorAnswer(400, f"model {name!r} is served by llama.cpp, which has no TGI API: use the "
                                       f"OpenAI API (/v1/chat/completions, /v1/completions)", code="unsupported_api")
            if rest == "info":
                await self._forward(Exchange(named, named if named.ready() else self._stand_in(named), "/info", b"",
                                             {}, "info", receive, send, method="GET"))
                return
            raw, body = await self._read_json(scope, receive)
            await self._forward(Exchange(named, named if named.ready() else self._stand_in(named), "/" + rest, raw,
                                         body, "tgi", receive, send))
            return
        raise ErrorAnswer(404, f"no route {method} {path}: the router serves /v1/chat/completions, /v1/completions, "
                               f"/v1/models, /models/{{name}}/generate[_stream], /models/{{name}}/info, /health, "
                               f"/metrics and /modelship/load", code="not_found")

    def _models(self) -> bytes:
        """/v1/models: every name a request may use whose target has a ready endpoint or can be
        woken."""
        now = int(time.time())
        data = []
        for name, t in self.registry.serving():
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

    def _authorize(self, scope) -> None:
        if not self.api_keys:
            return
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        token = given[7:] if given[:7].lower() == b"bearer " else b""
        if not any(hmac.compare_digest(token, k) for k in self.api_keys):
            raise ErrorAnswer(401, "a valid API key is needed: send `Authorization: Bearer <key>`",
                              "authentication_error", "invalid_api_key")

    def _stand_in(self, named: Target) -> Target:
        """The target that answers for `named` while it has no ready endpoint: its first fallback
        that has one, else itself. A request for a model that can be woken moves the load's
        version (the operator wakes it), whether a fallback answers or it is held; the held
        count is raised before the operator's poll runs (no await between)."""
        if named.wakeable:
            now = time.monotonic()
            if now - named.demand.bumped >= BUMP_EVERY:  # (the first at once; a flood moves it twice a second)
                named.demand.bumped = now
                self.load.bump()
        return self.registry.stand_in(named) or named

    def _target(self, model) -> Target:
        if model is None:
            names = list(self.registry.targets)
            if len(names) == 1:
                return self.registry.targets[names[0]]
            raise ErrorAnswer(400, f"the request names no model: set \"model\" to one of "
                                   f"{', '.join(self.registry.names())}")
        if not isinstance(model, str):
            raise ErrorAnswer(400, "\"model\" must be a string")
        target = self.registry.find(model)
        if target is None:
            raise ErrorAnswer(404, f"the model {model!r} does not exist here; the models are: "
                                   f"{', '.join(self.registry.names()) or '(none)'}", code="model_not_found")
        return target

    async def _read_json(self, scope, receive) -> tuple[bytes, dict]:
        limit = self.max_body_bytes
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ErrorAnswer(413, f"the request body is {int(declared)} bytes; the limit is {limit}")
        chunks, size = [], 0
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
        raw = b"".join(chunks)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise ErrorAnswer(400, f"the request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise ErrorAnswer(400, "the request body must be a JSON object")
        return raw, body
