"""Where the autoscaler's signals come from: every router replica, long-polled.

Each router replica answers `GET /modelship/load?version=V&wait=S` at once when a request
named a model with no ready endpoint since version V (a model at zero is wanted: its held
request should not wait for the next interval), and otherwise after S seconds, with its
counters (docs/router.md). One task per router replica keeps one such request open; the
replicas are the ready endpoints of the router's Service (its EndpointSlices, listed every
few intervals) and any `routerUrls` of the settings. Only the leader runs this: a standby
runs no Kopf, and so no start-up handler.
"""

from __future__ import annotations

import asyncio
import logging
import os

import aiohttp
import orjson

from ..settings import AutoscalerSettings
from .autoscaler import Autoscaler

log = logging.getLogger("modelship")

PATH = "/modelship/load"
LIST_EVERY = 2  # intervals between two listings of the router's endpoints


class RouterPoller:
    def __init__(self, settings: AutoscalerSettings, autoscaler: Autoscaler, list_routers=None):
        """`list_routers(namespace, service)`: the base URLs of the Service's ready endpoints."""
        self.settings, self.autoscaler, self.list_routers = settings, autoscaler, list_routers
        self.polls: dict[str, asyncio.Task] = {}
        self.failing: set[str] = set()  # said once, not at every try

    async def run(self, stop: asyncio.Event) -> None:
        interval = self.settings.interval_seconds
        timeout = aiohttp.ClientTimeout(total=interval + 10, connect=5)
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
            ticker = asyncio.create_task(self._tick(stop))
            try:
                while not stop.is_set():
                    urls = set(self.settings.router_urls) | set(await self._listed())
                    for url, task in list(self.polls.items()):
                        if task.done() and not task.cancelled():  # (a bug: said, and the poll starts again)
                            log.error("autoscaler: polling router %s stopped: %r; starting again", url, task.exception())
                            del self.polls[url]
                    for url in urls - set(self.polls):
                        self.polls[url] = asyncio.create_task(self._poll(session, url.rstrip("/")))
                    for url in set(self.polls) - urls:
                        self.polls.pop(url).cancel()
                        self.autoscaler.gone(url.rstrip("/"))
                    try:
                        await asyncio.wait_for(stop.wait(), interval * LIST_EVERY)
                    except asyncio.TimeoutError:
                        pass
            finally:
                ticker.cancel()
                for task in self.polls.values():
                    task.cancel()
                await asyncio.gather(ticker, *self.polls.values(), return_exceptions=True)

    async def _listed(self) -> list[str]:
        s = self.settings
        if not s.router_service or self.list_routers is None:
            return []
        namespace = s.router_namespace or os.environ.get("POD_NAMESPACE") or "default"
        try:
            return await asyncio.to_thread(self.list_routers, namespace, s.router_service)
        except Exception as e:  # noqa: BLE001 - the next listing tries again; the known ones stay
            log.warning("autoscaler: cannot list the router's endpoints (Service %s/%s): %s", namespace,
                        s.router_service, e)
            return list(self.polls)

    async def _tick(self, stop: asyncio.Event) -> None:
        """Decide every interval (the windows take a sample then)."""
        while not stop.is_set():
            await asyncio.sleep(self.settings.interval_seconds)
            try:
                self.autoscaler.tick()
            except Exception:  # noqa: BLE001 - a bug in one round must not stop autoscaling
                log.exception("autoscaler: deciding failed")

    async def _poll(self, session: aiohttp.ClientSession, url: str) -> None:
        version, interval = None, self.settings.interval_seconds
        while True:
            params = {"wait": f"{interval:g}"}
            if version is not None:
                params["version"] = str(version)
            try:
                async with session.get(url + PATH, params=params) as r:
                    if r.status != 200:
                        raise aiohttp.ClientResponseError(r.request_info, (), status=r.status, message=r.reason or "")
                    answer = orjson.loads(await r.read())
            except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError, ValueError) as e:
                if url not in self.failing:
                    log.warning("autoscaler: router %s does not answer %s (%s); trying again", url, PATH,
                                type(e).__name__ if not str(e) else e)
                    self.failing.add(url)
                await asyncio.sleep(interval)
                continue
            if url in self.failing:
                self.failing.discard(url)
                log.info("autoscaler: router %s answers again", url)
            try:
                if self.autoscaler.observe(url, answer):
                    self.autoscaler.tick(sample=False)  # a model at zero is wanted: decide now
            except Exception:  # noqa: BLE001 - an answer this operator cannot read must not end the poll
                log.exception("autoscaler: cannot use the answer of router %s", url)
                await asyncio.sleep(interval)
                continue
            if answer.get("version") == version:
                continue
            version = answer.get("version")
            await asyncio.sleep(0.05)  # (many held requests at once: one decision each 50 ms at most)
