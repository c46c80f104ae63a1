"""Holding a request for a model at zero replicas that can be woken (autoscaled,
`minReplicas: 0`) until it has a ready endpoint, within bounds (`hold_max_requests` at once
per model: 429 after; `hold_max_seconds`: 503 after). A streamed one gets its answer's head at
once, then an SSE comment every `hold_keepalive_seconds`, then the engine's events. Waking is
the operator's: it reads the demand from `/modelship/load` (load.py); discovery's new
endpoints wake the held requests (`Target.set_endpoints`), and starting pods are asked for
their health meanwhile (`load.probe_starting`)."""

from __future__ import annotations

import asyncio
import time

from .errors import ErrorAnswer
from .exchange import Exchange
from .load import probe_starting

SSE_HEAD = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class Holding:
    """The Forwarder's part that holds requests (its attributes: the limits, the metrics, the
    registry, the wheel)."""
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
                await ex.send({"type": "http.response.start", "status": 200, "headers": SSE_HEAD + ex.call.headers})
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
