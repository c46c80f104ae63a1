"""The engines' own view of their load, scraped from their Prometheus metrics on a short
interval: TGI's `tgi_batch_current_size` and `tgi_queue_size`, llama.cpp's
`llamacpp:requests_processing` and `llamacpp:requests_deferred`, smoothed over the last few
scrapes (one scrape is a snapshot of a count that moves with every request, and router
replicas that read different snapshots would decide differently). The balancing strategies
read it through `Endpoint.load`."""

from __future__ import annotations

import asyncio
import logging

from .registry import Registry
from .upstream import Unreachable, Upstream

log = logging.getLogger("modelship.router")

RUNNING = ("tgi_batch_current_size", "llamacpp:requests_processing")
WAITING = ("tgi_queue_size", "llamacpp:requests_deferred")
SMOOTHING = 0.4  # weight of the newest scrape: about the last two or three count


def parse(text: str) -> tuple[float, float] | None:
    """(running, waiting) from a metrics page; None when it has neither."""
    running = waiting = None
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name, _, rest = line.partition(" ")
        name = name.split("{", 1)[0]
        if name in RUNNING or name in WAITING:
            try:
                value = float(rest.split()[0])
            except (ValueError, IndexError):
                continue
            if name in RUNNING:
                running = (running or 0.0) + value
            else:
                waiting = (waiting or 0.0) + value
    if running is None and waiting is None:
        return None
    return running or 0.0, waiting or 0.0


async def scrape_once(registry: Registry, client: Upstream, timeout: float = 1.0) -> int:
    """Scrape every ready endpoint once, at the same time; returns how many answered."""
    endpoints = {e.url: e for t in registry.targets.values() for e in t.ready()}

    async def one(url: str) -> bool:
        try:
            status, body = await client.get(f"{url}/metrics", timeout)
            found = parse(body.decode("utf-8", "replace")) if status == 200 else None
        except Unreachable:
            found = None
        e = endpoints[url]
        running, waiting = found if found else (0.0, 0.0)
        if e.scrapes:  # smoothed: one scrape is a snapshot of a count that moves with every request
            e.running += SMOOTHING * (running - e.running)
            e.waiting += SMOOTHING * (waiting - e.waiting)
        else:
            e.running, e.waiting = running, waiting
        e.scrapes += 1
        e.scraped = found is not None
        return found is not None

    return sum(await asyncio.gather(*(one(u) for u in endpoints)))


async def scrape_forever(registry: Registry, client: Upstream, interval: float) -> None:
    while True:
        try:
            await scrape_once(registry, client, timeout=min(interval, 2.0))
        except Exception as e:  # noqa: BLE001 - the next round tries again
            log.warning("scraping the engines' metrics failed: %s", e)
        await asyncio.sleep(interval)
