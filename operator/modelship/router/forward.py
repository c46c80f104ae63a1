"""Forwarding one request: an endpoint picked by the target's strategy, retries before the
first byte, and the answer relayed as it arrives.

Connect errors and 429, 502 and 503 answers before the first byte are retried on another
endpoint, within a count and a time budget; after the first byte a failure ends the stream
with an SSE error event. Answers are passed through as they arrive (server-sent events
included, never buffered), except a small whole answer, sent in one write. A client that
goes away cancels its upstream request.

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
from .registry import Target
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
    `kind` says where the prompt is in `body` ("chat", "completion", "tgi"; "info": none)."""

    __slots__ = ("target", "path", "raw", "method", "receive", "send", "started", "task", "key", "watcher")

    def __init__(self, target: Target, path: str, raw: bytes, body: dict, kind: str, receive, send,
                 method: str = "POST") -> None:
        # (One assignment each: a tuple of four would be built and unpacked, on every request.)
        self.started = time.monotonic()
        self.target = target
        self.path = path
        self.raw = raw
        self.method = method
        self.receive = receive
        self.send = send
        self.task = asyncio.current_task()
        self.watcher: asyncio.Task | None = None  # watching for the client leaving, once started
        strategy = target.strategy  # only a strategy that reads the prompt pays for rendering it
        self.key = strategy.key(*prompt_text(kind, body)) if strategy.reads_prompt and kind != "info" else None

    def watch(self) -> None:
        """Start watching for the client leaving (the wheel calls this once the request has
        lasted WATCH_AFTER)."""
        self.watcher = asyncio.create_task(_on_disconnect(self.receive, self.task))


class Forwarder:
    """Sends each Exchange to one of its target's ready endpoints and relays the answer."""

    def __init__(self, client: Upstream, limits: Limits, metrics: Metrics) -> None:
        self.client, self.metrics = client, metrics
        self.wheel = Wheel()  # every request's deadlines, on one timer
        # The limits, as plain attributes: read on every request.
        self.retries, self.retry_budget = limits.retries, limits.retry_budget
        self.first_byte_timeout, self.idle_timeout = limits.first_byte_timeout, limits.idle_timeout
        self.retry_after = str(limits.retry_after).encode()

    async def forward(self, ex: Exchange) -> None:
        # A client that goes away cancels its request, upstream included. Watching costs a task,
        # so it starts only once a request has lasted WATCH_AFTER: a quick answer never pays.
        task = ex.task
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
        finally:
            self.wheel.cancel(slot, task)
            if ex.watcher is not None:
                ex.watcher.cancel()

    async def _try_endpoints(self, ex: Exchange) -> None:
        m, target, key, retries = self.metrics, ex.target, ex.key, self.retries  # (read once)
        tried: set[str] = set()
        last: ErrorAnswer | None = None
        for attempt in range(retries + 1):
            ready = target.ready()
            candidates = [e for e in ready if e.url not in tried] if tried else ready  # (a first try: no copy)
            if not candidates or (attempt and time.monotonic() - ex.started > self.retry_budget):
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
        m.child(m.requests, target.name, "", "503").inc()
        raise ErrorAnswer(503, f"the model {target.name!r} has no ready endpoint yet; try again shortly",
                          "service_unavailable", "no_ready_endpoint", headers=[(b"retry-after", self.retry_after)])

    async def _relay(self, ex: Exchange, ep: balance.Endpoint, upstream: Answer) -> None:
        m, name = self.metrics, ex.target.name
        ctype = upstream.content_type
        code = upstream.status
        m.child(m.requests, name, ep.url, str(code)).inc()
        try:
            if not ctype.startswith("text/event-stream") and upstream.length is not None \
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


def _why(e: Exception) -> str:
    """Why an answer broke off: the idle timeout, or what the upstream client said."""
    return "idle timeout" if isinstance(e, TimeoutError) else str(e)


async def _on_disconnect(receive, task: asyncio.Task) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            task.cancel()
            return
