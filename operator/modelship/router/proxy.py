"""The router's HTTP side: a plain ASGI application (no framework on the hot path).

Requests name a model; the registry finds its target; the target's strategy picks an
endpoint; the request is forwarded with one pooled upstream client, and the answer is passed
through as it arrives (server-sent events included, never buffered). Connect errors and 429,
502 and 503 answers before the first byte are retried on another endpoint, within a count and
a time budget; after the first byte a failure ends the stream with an SSE error event. A
client that goes away cancels its upstream request.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import balance
from .registry import Registry, Target
from .upstream import AiohttpUpstream, Answer, BrokeOff, Unreachable, Upstream
from .wheel import Wheel

log = logging.getLogger("modelship.router")

OPENAI_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}
TGI_PATHS = ("", "generate", "generate_stream", "info")  # "": TGI's `POST /` (what its client calls)
RETRY_STATUSES = (429, 502, 503)
WATCH_AFTER = 0.02  # seconds: a request still open then starts watching for its client leaving
WHOLE_BODY_BYTES = 1 << 20  # a non-streamed answer up to this size is read whole, then sent
# identity: the body is relayed byte for byte, so it must not come compressed
HEADERS = {"accept-encoding": "identity"}
JSON_HEADERS = {**HEADERS, "content-type": "application/json"}


@dataclass
class Limits:
    max_body_bytes: int = 8 << 20
    connect_timeout: float = 5.0
    first_byte_timeout: float = 300.0  # a long prompt's prefill, a cold engine
    idle_timeout: float = 120.0  # between two chunks of an answer
    retries: int = 2  # further endpoints tried before the first byte
    retry_budget: float = 10.0  # seconds, all tries included
    retry_after: int = 5  # seconds, told to clients when nothing is ready


class Metrics:
    """The router's metrics. What the hot path counts per request (requests, time to first
    byte, duration) are prometheus_client metrics; what the registry already knows (requests
    open per endpoint, prompt blocks routed and matched) is read from it at scrape time, so a
    request pays nothing for it."""

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("modelship_router_requests_total", "Requests, by model, endpoint and status code.",
                                ["model", "endpoint", "code"], registry=r)
        buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
        self.ttfb = Histogram("modelship_router_time_to_first_byte_seconds", "From the request to the first byte "
                              "of the answer.", ["model"], buckets=buckets, registry=r)
        self.latency = Histogram("modelship_router_request_duration_seconds", "From the request to the end of the "
                                 "answer.", ["model"], buckets=buckets, registry=r)
        self.retries = Counter("modelship_router_retries_total", "Requests sent again to another endpoint.",
                               ["model", "reason"], registry=r)
        self.chunks = Counter("modelship_router_streamed_chunks_total", "Chunks passed through in streamed "
                              "answers.", ["model"], registry=r)
        if registry is not None:
            r.register(_RegistryCollector(registry))
        self._children: dict[tuple, object] = {}

    def child(self, metric, *values: str):
        """`metric.labels(*values)`, looked up once: `labels()` takes a lock and builds its key
        on every call, which the hot path cannot afford."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def prune(self, live: set[tuple[str, str]]) -> None:
        """Drop the request counts of endpoints (model, url) that are gone."""
        for (metric, values), _ in list(self._children.items()):
            if metric is self.requests and values[1] and values[:2] not in live:
                metric.remove(*values)
                del self._children[(metric, values)]


class _RegistryCollector:
    """Series read from the registry when /metrics is scraped."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def collect(self):
        in_flight = GaugeMetricFamily("modelship_router_in_flight_requests", "Requests open to each endpoint.",
                                      labels=["model", "endpoint"])
        blocks = CounterMetricFamily("modelship_router_prefix_blocks", "Prompt blocks routed with the "
                                     "prefix-cache strategy.", labels=["model"])
        hits = CounterMetricFamily("modelship_router_prefix_hit_blocks", "Prompt blocks sent to the endpoint "
                                   "that last served them (an estimate of prefix-cache hits).", labels=["model"])
        for t in list(self.registry.targets.values()):
            for url, ep in list(t.endpoints.items()):
                in_flight.add_metric([t.name, url], ep.in_flight)
            if t.strategy.block:
                blocks.add_metric([t.name], t.strategy.blocks_seen)
                hits.add_metric([t.name], t.strategy.hits)
        yield from (in_flight, blocks, hits)


class ClientGone(Exception):
    """The client disconnected before its request was read."""


class HTTPError(Exception):
    """An answer in OpenAI's error shape."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 headers: list[tuple[bytes, bytes]] | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.headers = status, message, kind, code, headers or []

    def body(self) -> bytes:
        return orjson.dumps({"error": {"message": self.message, "type": self.kind, "param": None,
                                       "code": self.code or self.kind}})


def prompt_text(kind: str, body: dict) -> str:
    """The text a backend's prefix cache sees first: the conversation, or the prompt."""
    if kind == "chat":
        parts = []
        for m in body.get("messages") or []:
            if not isinstance(m, dict):
                continue
            content = m.get("content")
            if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(f"{m.get('role', '')}\x00{content or ''}\x01")
        return "".join(parts)
    prompt = body.get("prompt") if kind == "completion" else body.get("inputs")
    if isinstance(prompt, list):
        prompt = prompt[0] if prompt and isinstance(prompt[0], str) else ""
    return prompt if isinstance(prompt, str) else ""


class Router:
    def __init__(self, registry: Registry, client: Upstream, limits: Limits | None = None,
                 api_keys: list[str] | None = None, metrics: Metrics | None = None):
        self.registry, self.client = registry, client
        self.limits = limits or Limits()
        self.set_api_keys(api_keys or [])
        self.metrics = metrics or Metrics(registry)
        self.wheel = Wheel()  # every request's deadlines, on one timer
        self.on_startup: list = []  # called with the running loop (discovery starts its watches)
        self.background: list[asyncio.Task] = []  # cancelled at shutdown

    def set_api_keys(self, keys: list[str]) -> None:
        """The keys a request may carry (none: no key needed)."""
        self.api_keys = [k.encode() for k in keys]

    # --- ASGI ---------------------------------------------------------------------------

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send)
        except HTTPError as e:
            await _respond(send, e.status, e.body(), e.headers)
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
            await _respond(send, 200, b'{"status":"ok"}')
            return
        if path == "/metrics":
            self.metrics.prune({(t.name, url) for t in self.registry.targets.values() for url in t.endpoints})
            await _respond(send, 200, generate_latest(self.metrics.registry), content_type=CONTENT_TYPE_LATEST.encode())
            return
        self._authorize(scope)
        if path == "/v1/models" and method == "GET":
            now = int(time.time())
            data = [{"id": name, "object": "model", "created": now, "owned_by": "modelship",
                     "modelship": {"target": t.name, "engine": t.engine, "ready_endpoints": len(t.ready())}}
                    for name, t in self.registry.serving()]
            await _respond(send, 200, orjson.dumps({"object": "list", "data": data}))
            return
        kind = OPENAI_PATHS.get(path)
        if kind is not None:
            if method != "POST":
                raise HTTPError(405, f"{path} takes POST")
            raw, body = await self._read_json(scope, receive)
            target = self._target(body.get("model"))
            await self._forward(target, path, raw, body, kind, receive, send)
            return
        if path.startswith("/models/"):  # TGI's native API: /models/{name}/generate
            name, _, rest = path[len("/models/"):].rstrip("/").partition("/")
            if rest not in TGI_PATHS:
                raise HTTPError(404, f"no route {path}: the TGI API is at /models/{{name}}/generate, "
                                     f"/models/{{name}}/generate_stream and /models/{{name}}/info", code="not_found")
            target = self._target(name)
            if target.engine != "tgi":
                raise HTTPError(400, f"model {name!r} is served by llama.cpp, which has no TGI API: use the "
                                     f"OpenAI API (/v1/chat/completions, /v1/completions)", code="unsupported_api")
            if rest == "info":
                await self._forward(target, "/info", b"", {}, "info", receive, send, method="GET")
                return
            raw, body = await self._read_json(scope, receive)
            await self._forward(target, "/" + rest, raw, body, "tgi", receive, send)
            return
        raise HTTPError(404, f"no route {method} {path}: the router serves /v1/chat/completions, /v1/completions, "
                             f"/v1/models, /models/{{name}}/generate[_stream], /models/{{name}}/info, /health and "
                             f"/metrics", code="not_found")

    def _authorize(self, scope) -> None:
        if not self.api_keys:
            return
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        token = given[7:] if given[:7].lower() == b"bearer " else b""
        if not any(hmac.compare_digest(token, k) for k in self.api_keys):
            raise HTTPError(401, "a valid API key is needed: send `Authorization: Bearer <key>`",
                            "authentication_error", "invalid_api_key")

    def _target(self, model) -> Target:
        if model is None:
            names = list(self.registry.targets)
            if len(names) == 1:
                return self.registry.targets[names[0]]
            raise HTTPError(400, f"the request names no model: set \"model\" to one of "
                                 f"{', '.join(self.registry.names())}")
        if not isinstance(model, str):
            raise HTTPError(400, "\"model\" must be a string")
        target = self.registry.lookup(model)
        if target is None:
            raise HTTPError(404, f"the model {model!r} does not exist here; the models are: "
                                 f"{', '.join(self.registry.names()) or '(none)'}", code="model_not_found")
        return target

    async def _read_json(self, scope, receive) -> tuple[bytes, dict]:
        limit = self.limits.max_body_bytes
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPError(413, f"the request body is {int(declared)} bytes; the limit is {limit}")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, f"the request body is over the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise HTTPError(400, f"the request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "the request body must be a JSON object")
        return raw, body

    # --- forwarding ---------------------------------------------------------------------

    async def _forward(self, target: Target, path: str, raw: bytes, body: dict, kind: str, receive, send,
                       method: str = "POST") -> None:
        started = time.monotonic()
        block = target.strategy.block  # only a strategy that reads the prompt pays for cutting it
        blocks = balance.block_hashes(prompt_text(kind, body), block) if block and kind != "info" else []
        # A client that goes away cancels its request, upstream included. Watching costs a task,
        # so it starts only once a request has lasted WATCH_AFTER: a quick answer never pays.
        task = asyncio.current_task()
        watcher: list[asyncio.Task] = []
        slot = self.wheel.call_after(WATCH_AFTER, task,
                                     lambda: watcher.append(asyncio.create_task(_on_disconnect(receive, task))))
        try:
            await self._try_endpoints(target, path, raw, blocks, send, method, started, task)
        except asyncio.CancelledError:
            if watcher and watcher[0].done() and not watcher[0].cancelled():  # the client left: not an error
                task.uncancel()
                self.metrics.child(self.metrics.requests, target.name, "", "499").inc()
                return
            raise
        finally:
            self.wheel.cancel(slot, task)
            if watcher:
                watcher[0].cancel()

    async def _try_endpoints(self, target: Target, path: str, raw: bytes, blocks: list[int], send, method: str,
                             started: float, task: asyncio.Task) -> None:
        m, limits = self.metrics, self.limits
        tried: set[str] = set()
        last: HTTPError | None = None
        for attempt in range(limits.retries + 1):
            candidates = [e for e in target.ready() if e.url not in tried]
            if not candidates or (attempt and time.monotonic() - started > limits.retry_budget):
                break
            ep = target.strategy.pick(blocks, candidates)
            tried.add(ep.url)
            ep.in_flight += 1
            try:
                try:
                    with self.wheel.timeout(limits.first_byte_timeout, task):
                        upstream = await self.client.open(method, ep.url + path, raw or None,
                                                          JSON_HEADERS if raw else HEADERS)
                except Unreachable as e:  # refused, or dropped before answering (a pod going away)
                    m.child(m.retries, target.name, "connect").inc()
                    last = HTTPError(502, f"could not reach {target.name} at {ep.url}: {e}",
                                     "upstream_error", "bad_gateway")
                    continue
                except TimeoutError:
                    m.child(m.requests, target.name, ep.url, "504").inc()
                    raise HTTPError(504, f"{target.name} at {ep.url} did not answer within "
                                         f"{limits.first_byte_timeout:g} s", "upstream_error", "gateway_timeout")
                if upstream.status in RETRY_STATUSES and attempt < limits.retries:
                    await upstream.close()
                    m.child(m.retries, target.name, str(upstream.status)).inc()
                    last = HTTPError(upstream.status, f"{target.name} answered {upstream.status}",
                                     "upstream_error")
                    continue
                if blocks:
                    target.strategy.served(blocks, ep)
                await self._relay(target, ep, upstream, send, started, task)
                return
            finally:
                ep.in_flight -= 1
        if last is not None:
            raise last
        raise HTTPError(503, f"the model {target.name!r} has no ready endpoint yet; try again shortly",
                        "service_unavailable", "no_ready_endpoint",
                        headers=[(b"retry-after", str(self.limits.retry_after).encode())])

    async def _relay(self, target: Target, ep: balance.Endpoint, upstream: Answer, send, started: float,
                     task: asyncio.Task) -> None:
        m = self.metrics
        ctype = upstream.content_type
        code = upstream.status
        m.child(m.requests, target.name, ep.url, str(code)).inc()
        try:
            if not ctype.startswith("text/event-stream") and upstream.length is not None \
                    and upstream.length <= WHOLE_BODY_BYTES:
                # A small whole answer (a non-streamed completion) is read, then sent at once,
                # with its length: one write, no chunked encoding, and a broken one is a 502.
                try:
                    with self.wheel.timeout(self.limits.idle_timeout, task):
                        body = await upstream.read()
                except (TimeoutError, BrokeOff) as e:
                    raise HTTPError(502, f"the answer from {target.name} at {ep.url} broke off ({_why(e)})",
                                    "upstream_error", "upstream_broke_off") from None
                m.child(m.ttfb, target.name).observe(time.monotonic() - started)
                await _respond(send, code, body, content_type=ctype.encode())
            else:
                await self._relay_stream(target, ep, upstream, send, started, ctype, task)
            m.child(m.latency, target.name).observe(time.monotonic() - started)
        finally:
            await upstream.close()

    async def _relay_stream(self, target: Target, ep: balance.Endpoint, upstream: Answer, send, started: float,
                            ctype: str, task: asyncio.Task) -> None:
        """Chunk by chunk, as they arrive."""
        m = self.metrics
        sse = ctype.startswith("text/event-stream")
        headers = [(b"content-type", ctype.encode())]
        if sse:
            headers.append((b"cache-control", b"no-cache"))
        await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
        first, chunks = True, 0
        it = upstream.chunks()
        idle, wheel = self.limits.idle_timeout, self.wheel
        while True:
            try:
                with wheel.timeout(idle, task):
                    chunk = await it.__anext__()
            except StopAsyncIteration:
                break
            except (TimeoutError, BrokeOff) as e:  # after the first byte: end cleanly
                why = _why(e)
                log.warning("upstream %s failed mid-answer: %s", ep.url, why)
                if not sse:  # a cut JSON body must not look whole: abort the connection
                    raise ConnectionAbortedError(f"upstream {ep.url} broke off ({why})") from None
                await send({"type": "http.response.body", "more_body": True, "body": b"data: " + orjson.dumps(
                    {"error": {"message": f"the upstream answer broke off ({why})",
                               "type": "upstream_error", "code": "upstream_broke_off"}}) + b"\n\n"})
                break
            if first:
                m.child(m.ttfb, target.name).observe(time.monotonic() - started)
                first = False
            chunks += 1
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        if sse:
            m.child(m.chunks, target.name).inc(chunks)


def _why(e: Exception) -> str:
    """Why an answer broke off: the idle timeout, or what the upstream client said."""
    return "idle timeout" if isinstance(e, TimeoutError) else str(e)


async def _on_disconnect(receive, task: asyncio.Task) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            task.cancel()
            return


async def _respond(send, status: int, body: bytes, headers: list | None = None,
                   content_type: bytes = b"application/json") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def upstream_client(limits: Limits, max_connections: int = 10_000) -> Upstream:
    """The one pooled client every request goes through."""
    return AiohttpUpstream(limits.connect_timeout, max_connections)
