"""Forwarding one request: an endpoint picked by the target's strategy, retries before the
first byte, fallback models, and the answer relayed as it arrives.

Connect errors and 429, 502 and 503 answers before the first byte are retried on another
endpoint, within a count and a time budget; an engine's other 5xx is not sent to its peers
again. When every try of a model fails before the first byte (or it has no ready endpoint),
its fallbacks (`spec.router.fallback`) are tried in order, each with retries of its own, each
once, never after the first byte. After the first byte a failure ends the stream with an SSE
error event. Answers are passed through as they arrive (server-sent events included, never
buffered), except a small whole answer, sent in one write; the usage they report is read on
the way (usage.py). A client that goes away cancels its upstream request.

Requests for a model at zero replicas are held while it wakes (hold.py). Each request is one
`Exchange` (exchange.py), made by the app once the request is read and its target known; the
`Forwarder` (the pooled client, the limits, the metrics, the deadlines' wheel) serves them all.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson

from . import balance, usage
from .engines import engine
from .errors import ErrorAnswer, respond
from .exchange import Exchange
from .quota import UNLIMITED
from .hold import Holding
from .metrics import Metrics
from .registry import Registry, Target
from .settings import Limits
from .upstream import Answer, BrokeOff, Unreachable, Upstream
from .wheel import Wheel

log = logging.getLogger("modelship.router")


class NoneReady(Exception):
    """The target had no ready endpoint to try (its fallbacks may, or it may be woken)."""


RETRY_STATUSES = (429, 502, 503)
WATCH_AFTER = 0.02  # seconds: a request still open then starts watching for its client leaving
WHOLE_BODY_BYTES = 1 << 20  # a non-streamed answer up to this size is read whole, then sent
# identity: the body is relayed byte for byte, so it must not come compressed
HEADERS = {"accept-encoding": "identity"}
JSON_HEADERS = {**HEADERS, "content-type": "application/json"}


class Forwarder(Holding):
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
            await self._answer(ex)
        except asyncio.CancelledError:
            watcher = ex.watcher
            if watcher is not None and watcher.done() and not watcher.cancelled():  # the client left: not an error
                task.uncancel()
                if not ex.call.answered_by:  # (once answering, the engine's status was counted)
                    self.metrics.child(self.metrics.requests, ex.target.name, "", "499").inc()
                ex.call.status = 499
                return
            raise
        except ErrorAnswer as e:
            if e.fallback:  # the router's own answer after the engines failed: counted once, without an
                self.metrics.child(self.metrics.requests, ex.target.name, "", str(e.status)).inc()  # endpoint
            if not ex.opened:
                raise  # (the app writes it)
            ex.call.status = e.status
            await _last_event(ex.send, e.body())  # a held stream's head is sent: the error is its last event
        finally:
            self.wheel.cancel(slot, task)
            if ex.watcher is not None:
                ex.watcher.cancel()
            demand.leave(time.monotonic())

    async def _answer(self, ex: Exchange) -> None:
        """The named target, then its fallbacks in order (theirs too, each once), each with its
        own retries, until one begins to answer; a target with no ready endpoint is passed over.
        None answered and the named one can be woken: held until it is, then tried again."""
        named = ex.named
        asleep = False  # the named target had no ready endpoint: held, if it can be woken
        try:
            await self._try_endpoints(ex)
            return
        except NoneReady:
            last: ErrorAnswer | None = None
            asleep = True
        except ErrorAnswer as e:
            if ex.opened or not e.fallback or not named.fallback:
                raise
            last = e
        if named.fallback:
            answered, last = await self._fall_back(ex, last)
            if answered:
                return
        if asleep and named.wakeable:  # at zero replicas, no fallback answered: wait for it to wake
            ex.retarget(named)
            await self._hold(ex)
            try:
                await self._try_endpoints(ex, time.monotonic())
            except NoneReady:
                raise self._no_ready(named.name) from None
            return
        if last is not None:
            raise last
        raise self._no_ready(named.name)

    async def _fall_back(self, ex: Exchange, last: ErrorAnswer | None) -> tuple[bool, ErrorAnswer | None]:
        """Try the named target's fallbacks (those its caller may call and, on TGI's own routes,
        those served by TGI), each within its own model limits: (whether one answered, the last
        failure, if any)."""
        named, call = ex.named, ex.call
        reason = "no_ready_endpoint" if last is None else last.code or str(last.status)
        for target in self.registry.fallbacks(named, call.allowed):
            if not target.ready() or (ex.kind in ("tgi", "info") and not engine(target.engine).tgi_api):
                continue
            try:
                admission = self.admit_model(target, call)
            except ErrorAnswer as e:  # the fallback's own limit: the next one, if any
                last = e
                continue
            ex.retarget(target)
            try:
                await self._try_endpoints(ex, time.monotonic())
                self.metrics.child(self.metrics.fallbacks, named.name, target.name, reason).inc()
                return True, None
            except NoneReady:
                continue
            except ErrorAnswer as e:
                if ex.opened or not e.fallback:
                    raise
                last, reason = e, e.code or str(e.status)
            finally:
                admission.done(time.monotonic(), call.used() if call.answered_by == target.name else 0)
        return False, last

    @staticmethod
    def admit_model(target: Target, call) -> object:
        """The limits of a model that answers for another (the app puts its quotas' here)."""
        return UNLIMITED

    async def _try_endpoints(self, ex: Exchange, since: float = 0.0) -> None:
        """The target's ready endpoints, one after another while each fails before the first
        byte, within the retries and their time budget (from `since`, or the request's
        arrival). Raises the last failure (marked `fallback`) when none answered."""
        m, target, key, retries = self.metrics, ex.target, ex.key, self.retries  # (read once)
        tried: set[str] = set()
        last: ErrorAnswer | None = None
        headers = JSON_HEADERS if ex.raw else HEADERS
        if ex.call.rid:
            headers = {**headers, "x-request-id": ex.call.rid.decode("latin-1")}
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
                        upstream = await self.client.open(ex.method, ep.url + ex.path, ex.raw or None, headers)
                except Unreachable as e:  # refused, or dropped before answering (a pod going away)
                    m.child(m.retries, target.name, "connect").inc()
                    last = ErrorAnswer(502, f"could not reach {target.name} at {ep.url}: {e}",
                                       "upstream_error", "bad_gateway", fallback=True)
                    continue
                except TimeoutError:  # not tried elsewhere: the engine may still be at work on it
                    last = ErrorAnswer(504, f"{target.name} at {ep.url} did not answer within "
                                            f"{self.first_byte_timeout:g} s", "upstream_error",
                                       "gateway_timeout", fallback=True)
                    break
                status = upstream.status
                if status >= 500 or status == 429:
                    last = await self._failed(ex, ep, upstream)
                    if status in RETRY_STATUSES:
                        m.child(m.retries, target.name, str(status)).inc()
                        continue
                    break  # (an engine's 500 for a request checked here: not sent to its peers again)
                body = await self._whole(ex, ep, upstream)
                if isinstance(body, ErrorAnswer):
                    last = body
                    continue
                if key is not None:
                    target.strategy.served(key, ep)
                await self._relay(ex, ep, upstream, body)
                return
            finally:
                ep.in_flight -= 1
        if last is None:
            raise NoneReady
        raise last

    async def _whole(self, ex: Exchange, ep: balance.Endpoint, upstream: Answer) -> bytes | ErrorAnswer | None:
        """A small whole answer (a non-streamed completion), read before anything is sent (None
        for any other). One that breaks off (an engine killed as it answered) is a failure
        before the first byte, tried again elsewhere as a connect error is: the client never
        knew."""
        if ex.opened or upstream.length is None or upstream.length > WHOLE_BODY_BYTES \
                or upstream.content_type.startswith("text/event-stream"):
            return None
        try:
            with self.wheel.timeout(self.idle_timeout, ex.task):
                return await upstream.read()
        except BaseException as e:  # (a client that left included: its answer is closed, then it goes)
            await upstream.close()
            if not isinstance(e, (TimeoutError, BrokeOff)):
                raise
            name = ex.target.name
            self.metrics.child(self.metrics.retries, name, "broke_off").inc()
            return ErrorAnswer(502, f"the answer from {name} at {ep.url} broke off ({_why(e)})", "upstream_error",
                               "upstream_broke_off", fallback=True)

    async def _failed(self, ex: Exchange, ep: balance.Endpoint, upstream: Answer) -> ErrorAnswer:
        """An engine's 5xx or 429 before the first byte, as the router's answer: a 429 or 503
        stays one (with the engine's message, and Retry-After), any other 5xx is a 502 with the
        engine's message (the request was checked here: the failure is the engine's)."""
        status, name = upstream.status, ex.target.name
        try:
            with self.wheel.timeout(self.idle_timeout, ex.task):
                body = await upstream.read() if (upstream.length or 0) <= WHOLE_BODY_BYTES else b""
        except (TimeoutError, BrokeOff):
            body = b""
        finally:
            await upstream.close()
        said = _engine_error(name, status, body)["message"]
        message = said if said.startswith(f"{name} answered") else f"{name} answered {status}: {said}"
        if status in (429, 503):
            return ErrorAnswer(status, message, "upstream_error", "upstream_busy",
                               headers=[(b"retry-after", self.retry_after)], fallback=True)
        return ErrorAnswer(502, message, "upstream_error", "upstream_error", fallback=True)

    async def _relay(self, ex: Exchange, ep: balance.Endpoint, upstream: Answer, body: bytes | None) -> None:
        m, name, call = self.metrics, ex.target.name, ex.call
        ctype = upstream.content_type
        call.status = code = upstream.status
        call.answered_by, call.endpoint = name, ep.url
        call.headers.append((b"x-modelship-model", ex.target.name_bytes))
        m.child(m.requests, name, ep.url, str(code)).inc()
        try:
            if ex.opened:  # held and streamed: the head is sent
                await self._relay_held(ex, ep, upstream, ctype)
            elif body is not None:  # read whole: sent at once, with its length (one write, no chunks)
                call.ttfb = time.monotonic() - ex.started
                m.child(m.ttfb, name).observe(call.ttfb)
                if code < 300:
                    usage.whole(call, body)
                elif code >= 400 and b'"object"' in body:
                    body = _nested_error(body)
                await respond(ex.send, code, body, call.headers, content_type=ctype.encode())
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
            headers = [(b"content-type", ctype.encode()), *ex.call.headers]
            if sse:
                headers.append((b"cache-control", b"no-cache"))
            await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
        first, chunks, events, tail, chunk = True, 0, 0, b"", b""
        it = upstream.chunks()
        idle, wheel = self.idle_timeout, self.wheel
        try:
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
                        ex.call.status = 502
                        raise ConnectionAbortedError(f"upstream {ep.url} broke off ({why})") from None
                    await send({"type": "http.response.body", "more_body": True, "body": b"data: " + orjson.dumps(
                        {"error": {"message": f"the upstream answer broke off ({why})",
                                   "type": "upstream_error", "code": "upstream_broke_off"}}) + b"\n\n"})
                    break
                if first:
                    ex.call.ttfb = time.monotonic() - ex.started
                    m.child(m.ttfb, ex.target.name).observe(ex.call.ttfb)
                    first = False
                chunks += 1
                if sse:  # (what the usage is read from: the events, and the last one that says it)
                    events += chunk.count(b"data:")
                    if usage.says_usage(chunk):
                        tail = chunk
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:  # (a client that left, a stream cut: the tokens it got count all the same)
            if sse:
                m.child(m.chunks, ex.target.name).inc(chunks)
                usage.streamed(ex.call, tail, events, chunk)

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
    """An engine's error answer in OpenAI's shape: as it is when it has that shape (llama.cpp's,
    TGI's OpenAI routes, vLLM's: `{"error": {"message", "type", "param", "code"}}`), those fields
    when they are at the top level (older vLLM's and SGLang's: `{"object": "error", "message",
    ...}`), else its message (TGI's own routes: `{"error": "..."}`) or text."""
    try:
        found = orjson.loads(body)
    except orjson.JSONDecodeError:
        found = None
    error = found.get("error") if isinstance(found, dict) else None
    if isinstance(error, dict):
        return error
    flat = _flat_error(found)
    if flat is not None:
        return flat
    message = error if isinstance(error, str) else body[:500].decode("utf-8", "replace")
    kind = "invalid_request_error" if status < 500 else "upstream_error"  # (a 4xx: the request's fault)
    code = found.get("error_type") if isinstance(found, dict) else None  # TGI's ("validation", ...)
    return {"message": f"{name} answered {status}: {message}", "type": kind, "param": None,
            "code": code if isinstance(code, str) else kind}


def _nested_error(body: bytes) -> bytes:
    """An engine's own refusal (4xx), passed on: in OpenAI's shape when it came flat (older
    vLLM's and SGLang's `{"object": "error", "message", "type", "param", "code"}`), so that
    every engine's errors read alike (`error.message`); any other body as it came."""
    try:
        flat = _flat_error(orjson.loads(body))
    except orjson.JSONDecodeError:
        return body
    return body if flat is None else orjson.dumps({"error": flat})


def _flat_error(found) -> dict | None:
    """OpenAI's error fields of a flat error body (`{"object": "error", "message", ...}`)."""
    if isinstance(found, dict) and found.get("object") == "error" and isinstance(found.get("message"), str):
        return {k: found.get(k) for k in ("message", "type", "param", "code")}
    return None


async def _last_event(send, body: bytes) -> None:
    """End a stream whose head is sent with one more SSE `data:` event (an error, mostly)."""
    await send({"type": "http.response.body", "more_body": True, "body": b"data: " + body + b"\n\n"})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _why(e: Exception) -> str:
    """Why an answer broke off: the idle timeout, or what the upstream client said."""
    return "idle timeout" if isinstance(e, TimeoutError) else str(e)


