"""Forwarding one request: an endpoint picked by the target's strategy, retries before the
first byte, and the answer relayed as it arrives.

Connect errors and 429, 502 and 503 answers before the first byte are retried on another
endpoint, within a count and a time budget; after the first byte a failure ends the stream
with an SSE error event. Answers are passed through as they arrive (server-sent events
included, never buffered), except a small whole answer, sent in one write. A client that
goes away cancels its upstream request.

A request for a model at zero replicas that can be woken (autoscaled, `minReplicas: 0`) is
held until the model has a ready endpoint, within bounds (`hold_max_requests` at once per
model: 429 after; `hold_max_seconds`: 503 after); a streamed one gets its answer's head at
once, then an SSE comment every `hold_keepalive_seconds`, then the engine's events. Waking is
the operator's: it reads the demand from `/modelship/load` (load.py).

Each request is one `Exchange`, made by the app once the request is read and its target
known; the `Forwarder` (the pooled client, the limits, the metrics, the deadlines' wheel)
serves them all.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson

from . import balance
from .errors import ErrorAnswer, respond
from .metrics import Metrics
from .load import probe_starting
from .registry import Registry, Target
from .settings import Limits
from .upstream import Answer, BrokeOff, Unreachable, Upstream
from .wheel import Wheel

log = logging.getLogger("modelship.router")

RETRY_STATUSES = (429, 502, 503)
WATCH_AFTER = 0.02  # seconds: a request still open then starts watching for its client leaving
WHOLE_BODY_BYTES = 1 << 20  # a non-streamed answer up to this size is read whole, then sent
# identity: the body is relayed byte for byte, so it must not come compressed
HEADERS = {"accept-encoding": "identity"}
JSON_HEADERS = {**HEADERS, "content-type": "application/json"}
SSE_HEAD = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


OPENER_CHARS = 512  # a completion's opener (it has no messages to say where a conversation starts)


def prompt_text(kind: str, body: dict) -> tuple[str, int, int]:
    """The text a backend's prefix cache sees first (the conversation, or the prompt), where
    its conversation's opener ends in it and where its first user message starts.

    A chat's opener is everything up to and including its first user message: what every
    later turn of the conversation repeats, and what sets it apart from other conversations
    (two that share a system prompt differ there). A completion's is its first
    OPENER_CHARS characters."""
    if kind == "chat":
        parts, size, opener, user = [], 0, -1, -1
        for m in body.get("messages") or []:
            if not isinstance(m, dict):
                continue
            content = m.get("content")
            if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
                content = "".join(t for p in content if isinstance(p, dict) and isinstance(t := p.get("text"), str))
            role = m.get("role", "")
            part = f"{role}\x00{content if isinstance(content, str) else ''}\x01"
            if opener < 0 and role == "user":
                user, opener = size + len(role) + 1, size + len(part)
            parts.append(part)
            size += len(part)
        return "".join(parts), (opener if opener >= 0 else size), (user if user >= 0 else size)
    prompt = body.get("prompt") if kind == "completion" else body.get("inputs")
    if isinstance(prompt, list):
        prompt = prompt[0] if prompt and isinstance(prompt[0], str) else ""
    text = prompt if isinstance(prompt, str) else ""
    return text, min(len(text), OPENER_CHARS), 0


class Exchange:
    """One request on its way to an endpoint and back: what forwarding needs of it, set once.
    `named` is the target the request named, whose demand it counts in; `target` the one that
    answers it (the same, or a fallback while `named` has no ready endpoint). `kind` says where
    the prompt is in `body` ("chat", "completion", "tgi"; "info": none)."""

    __slots__ = ("target", "path", "raw", "body", "kind", "method", "receive", "send", "started", "task", "key",
                 "watcher", "demand", "opened")

    def __init__(self, named: Target, target: Target, path: str, raw: bytes, body: dict, kind: str, receive, send,
                 method: str = "POST") -> None:
        # (One assignment each: a tuple of four would be built and unpacked, on every request.)
        self.started = time.monotonic()
        self.target = target
        self.path = path
        self.raw = raw
        self.body = body
        self.kind = kind
        self.method = method
        self.receive = receive
        self.send = send
        self.task = asyncio.current_task()
        self.watcher: asyncio.Task | None = None  # watching for the client leaving, once started
        self.demand = named.demand
        self.opened = False  # the answer's head is sent (a streamed request held while its model woke)
        strategy = target.strategy  # only a strategy that reads the prompt pays for rendering it
        self.key = strategy.key(*prompt_text(kind, body)) if strategy.reads_prompt and kind != "info" else None

    def retarget(self, target: Target) -> None:
        """Discovery rebuilt the target (its strategy changed) while the request was held."""
        self.target = target
        strategy = target.strategy
        self.key = (strategy.key(*prompt_text(self.kind, self.body)) if strategy.reads_prompt and self.kind != "info"
                    else None)

    def watch(self) -> None:
        """Start watching for the client leaving (the wheel calls this once the request has
        lasted WATCH_AFTER)."""
        self.watcher = asyncio.create_task(cancel_on_disconnect(self.receive, self.task))


class Forwarder:
    """Sends each Exchange to one of its target's ready endpoints and relays the answer."""

    def __init__(self, client: Upstream, limits: Limits, metrics: Metrics, registry: Registry) -> None:
        self.client, self.metrics = client, metrics
        self.registry = registry  # where a held request finds its target again once woken
        self.probing: dict[str, asyncio.Task] = {}  # model -> the task asking its starting pods' health
        self.wheel = Wheel()  # every request's deadlines, on one timer
        # The limits, as plain attributes: read on every request.
        self.retries, self.retry_budget = limits.retries, limits.retry_budget
        self.first_byte_timeout, self.idle_timeout = limits.first_byte_timeout, limits.idle_timeout
        self.retry_after_seconds = limits.retry_after
        self.retry_after = str(limits.retry_after).encode()
        self.hold_max_requests, self.hold_max_seconds = limits.hold_max_requests, limits.hold_max_seconds
        self.hold_keepalive = limits.hold_keepalive_seconds

    async def forward(self, ex: Exchange) -> None:
        # A client that goes away cancels its request, upstream included. Watching costs a task,
        # so it starts only once a request has lasted WATCH_AFTER: a quick answer never pays.
        task, demand = ex.task, ex.demand
        demand.enter(ex.started)  # (the autoscaler's counters, on the clock the Exchange read)
        slot = self.wheel.call_after(WATCH_AFTER, task, ex.watch)
        try:
            await self._try_endpoints(ex)
        except asyncio.CancelledError:
            watcher = ex.watcher
            if watcher is not None and watcher.done() and not watcher.cancelled():  # the client left: not an error
                task.uncancel()
                self.metrics.child(self.metrics.requests, ex.target.name, "", "499").inc()
                return
            raise
        except ErrorAnswer as e:
            if not ex.opened:
                raise  # (the app writes it)
            await _last_event(ex.send, e.body())  # a held stream's head is sent: the error is its last event
        finally:
            self.wheel.cancel(slot, task)
            if ex.watcher is not None:
                ex.watcher.cancel()
            demand.leave(time.monotonic())

    async def _try_endpoints(self, ex: Exchange, since: float = 0.0) -> None:
        """`since`: when retries' time budget starts, if not at the request's arrival (after a hold)."""
        m, target, key, retries = self.metrics, ex.target, ex.key, self.retries  # (read once)
        tried: set[str] = set()
        last: ErrorAnswer | None = None
        for attempt in range(retries + 1):
            ready = target.ready()
            candidates = [e for e in ready if e.url not in tried] if tried else ready  # (a first try: no copy)
            if not candidates or (attempt and time.monotonic() - (since or ex.started) > self.retry_budget):
                break
            ep = target.strategy.pick(key, candidates)
            tried.add(ep.url)
            ep.in_flight += 1
            try:
                try:
                    with self.wheel.timeout(self.first_byte_timeout, ex.task):
                        upstream = await self.client.open(ex.method, ep.url + ex.path, ex.raw or None,
                                                          JSON_HEADERS if ex.raw else HEADERS)
                except Unreachable as e:  # refused, or dropped before answering (a pod going away)
                    m.child(m.retries, target.name, "connect").inc()
                    last = ErrorAnswer(502, f"could not reach {target.name} at {ep.url}: {e}",
                                       "upstream_error", "bad_gateway")
                    continue
                except TimeoutError:
                    m.child(m.requests, target.name, ep.url, "504").inc()
                    raise ErrorAnswer(504, f"{target.name} at {ep.url} did not answer within "
                                           f"{self.first_byte_timeout:g} s", "upstream_error",
                                      "gateway_timeout") from None
                if upstream.status in RETRY_STATUSES and attempt < retries:
                    await upstream.close()
                    m.child(m.retries, target.name, str(upstream.status)).inc()
                    last = ErrorAnswer(upstream.status, f"{target.name} answered {upstream.status}",
                                       "upstream_error")
                    continue
                if key is not None:
                    target.strategy.served(key, ep)
                await self._relay(ex, ep, upstream)
                return
            finally:
                ep.in_flight -= 1
        # The router's own answer (no endpoint answered, or none is ready): counted without an
        # endpoint, as a client that left is, so that a model's 5xx rate sees it.
        if last is not None:
            m.child(m.requests, target.name, "", str(last.status)).inc()
            raise last
        if target.wakeable and not tried:  # at zero replicas: wait for it to wake, then go on as usual
            await self._hold(ex)
            await self._try_endpoints(ex, time.monotonic())
            return
        raise self._no_ready(target.name)

    def _refused(self, name: str, status: int, error: ErrorAnswer) -> ErrorAnswer:
        """The router's own answer for a known model, counted without an endpoint."""
        self.metrics.child(self.metrics.requests, name, "", str(status)).inc()
        return error

    def _no_ready(self, name: str) -> ErrorAnswer:
        return self._refused(name, 503, ErrorAnswer(
            503, f"the model {name!r} has no ready endpoint yet; try again shortly", "service_unavailable",
            "no_ready_endpoint", headers=[(b"retry-after", self.retry_after)]))

    def _starting(self, name: str, status: int, message: str) -> ErrorAnswer:
        # One type for 429 and 503 (not serving yet): OpenAI's clients pick their exception and
        # retry by the status; `rate_limit_error` would say the client sent too much.
        return self._refused(name, status, ErrorAnswer(
            status, f"{message}; try again in {self.retry_after_seconds} s", "service_unavailable", "model_starting",
            headers=[(b"retry-after", self.retry_after)]))

    async def _hold(self, ex: Exchange) -> None:
        """Hold a request for a target asleep at zero replicas (the operator wakes it; the app
        moved the load's version to tell it), counted in its `held`. A streamed request gets
        its answer's head at once, so that it can be kept alive while it waits."""
        demand, name = ex.demand, ex.target.name
        if demand.held >= self.hold_max_requests:
            raise self._starting(name, 429, f"the model {name!r} is starting from zero replicas and {demand.held} "
                                            f"requests already wait for it")
        demand.held += 1
        try:
            # (TGI's /generate has no `stream`; its `POST /` has, as the OpenAI routes do)
            if ex.path == "/generate_stream" or (ex.path != "/generate" and ex.body.get("stream") is True):
                await ex.send({"type": "http.response.start", "status": 200, "headers": SSE_HEAD})
                ex.opened = True
            await self._until_ready(ex)
        finally:
            demand.held -= 1

    async def _until_ready(self, ex: Exchange) -> None:
        """Until the target has a ready endpoint (`Target.set_endpoints` wakes its waiters; no
        polling), with an SSE comment every keepalive in an opened stream. Past the deadline:
        503; a model removed meanwhile: 404; one no longer autoscaled to zero: the usual 503."""
        name, deadline = ex.target.name, ex.started + self.hold_max_seconds
        comment = time.monotonic() + self.hold_keepalive  # the next keep-alive comment (wakes do not delay it)
        while not ex.target.ready():
            now = time.monotonic()
            if now >= deadline:
                raise self._starting(name, 503, f"the model {name!r} is starting from zero replicas and had no ready "
                                                f"endpoint after {now - ex.started:.0f} s of waiting")
            event = ex.demand.event()
            if ex.target.endpoints and ex.target.name not in self.probing:
                self.probing[ex.target.name] = asyncio.create_task(
                    probe_starting(ex.target, self.registry, self.client, self.probing))
            try:
                with self.wheel.timeout(max(0.0, min(deadline, comment) - now) if ex.opened else deadline - now,
                                        ex.task):
                    await event.wait()
            except TimeoutError:
                now = time.monotonic()
                if ex.opened and now < deadline and now >= comment:
                    comment = now + self.hold_keepalive
                    await ex.send({"type": "http.response.body", "more_body": True, "body": (
                        f': modelship: model "{name}" is starting from zero replicas; waited '
                        f'{now - ex.started:.0f} s\n\n').encode()})
                continue
            current = self.registry.targets.get(name)
            if current is None:
                raise self._refused(name, 404, ErrorAnswer(
                    404, f"the model {name!r} was removed while the request waited for it", code="model_not_found"))
            if current is not ex.target:  # rebuilt by discovery (its strategy changed): the same model
                ex.retarget(current)
            if not current.wakeable and not current.ready():
                raise self._no_ready(name)

    async def _relay(self, ex: Exchange, ep: balance.Endpoint, upstream: Answer) -> None:
        m, name = self.metrics, ex.target.name
        ctype = upstream.content_type
        code = upstream.status
        m.child(m.requests, name, ep.url, str(code)).inc()
        try:
            if ex.opened:  # held and streamed: the head is sent
                await self._relay_held(ex, ep, upstream, ctype)
            elif not ctype.startswith("text/event-stream") and upstream.length is not None \
                    and upstream.length <= WHOLE_BODY_BYTES:
                # A small whole answer (a non-streamed completion) is read, then sent at once,
                # with its length: one write, no chunked encoding, and a broken one is a 502.
                try:
                    with self.wheel.timeout(self.idle_timeout, ex.task):
                        body = await upstream.read()
                except (TimeoutError, BrokeOff) as e:
                    raise ErrorAnswer(502, f"the answer from {name} at {ep.url} broke off ({_why(e)})",
                                      "upstream_error", "upstream_broke_off") from None
                m.child(m.ttfb, name).observe(time.monotonic() - ex.started)
                await respond(ex.send, code, body, content_type=ctype.encode())
            else:
                await self._relay_stream(ex, ep, upstream, ctype)
            m.child(m.latency, name).observe(time.monotonic() - ex.started)
        finally:
            await upstream.close()

    async def _relay_stream(self, ex: Exchange, ep: balance.Endpoint, upstream: Answer, ctype: str) -> None:
        """Chunk by chunk, as they arrive."""
        m, send, task = self.metrics, ex.send, ex.task
        sse = ctype.startswith("text/event-stream")
        if not ex.opened:
            headers = [(b"content-type", ctype.encode())]
            if sse:
                headers.append((b"cache-control", b"no-cache"))
            await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
        first, chunks = True, 0
        it = upstream.chunks()
        idle, wheel = self.idle_timeout, self.wheel
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
                m.child(m.ttfb, ex.target.name).observe(time.monotonic() - ex.started)
                first = False
            chunks += 1
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        if sse:
            m.child(m.chunks, ex.target.name).inc(chunks)


    async def _relay_held(self, ex: Exchange, ep: balance.Endpoint, upstream: Answer, ctype: str) -> None:
        """The answer to a held streamed request, whose head (200, SSE) is sent: the engine's
        events; or, when it did not answer with events, its answer as one event (an error in
        OpenAI's shape when it is not a 2xx), and the end."""
        if upstream.status < 300 and ctype.startswith("text/event-stream"):
            await self._relay_stream(ex, ep, upstream, ctype)
            return
        name = ex.target.name
        try:
            with self.wheel.timeout(self.idle_timeout, ex.task):
                body = await upstream.read()
        except (TimeoutError, BrokeOff) as e:
            body = f"the answer broke off ({_why(e)})".encode()
        if upstream.status >= 300:
            body = orjson.dumps({"error": _engine_error(name, upstream.status, body)})
        await _last_event(ex.send, body)


def _engine_error(name: str, status: int, body: bytes) -> dict:
    """An engine's error answer in OpenAI's shape: as it is when it has that shape (llama.cpp's
    and TGI's OpenAI routes), else its message (TGI's own routes: `{"error": "..."}`) or text."""
    try:
        found = orjson.loads(body)
    except orjson.JSONDecodeError:
        found = None
    error = found.get("error") if isinstance(found, dict) else None
    if isinstance(error, dict):
        return error
    message = error if isinstance(error, str) else body[:500].decode("utf-8", "replace")
    kind = "invalid_request_error" if status < 500 else "upstream_error"  # (a 4xx: the request's fault)
    code = found.get("error_type") if isinstance(found, dict) else None  # TGI's ("validation", ...)
    return {"message": f"{name} answered {status}: {message}", "type": kind, "param": None,
            "code": code if isinstance(code, str) else kind}


async def _last_event(send, body: bytes) -> None:
    """End a stream whose head is sent with one more SSE `data:` event (an error, mostly)."""
    await send({"type": "http.response.body", "more_body": True, "body": b"data: " + body + b"\n\n"})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _why(e: Exception) -> str:
    """Why an answer broke off: the idle timeout, or what the upstream client said."""
    return "idle timeout" if isinstance(e, TimeoutError) else str(e)


async def cancel_on_disconnect(receive, task: asyncio.Task) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            task.cancel()
            return
