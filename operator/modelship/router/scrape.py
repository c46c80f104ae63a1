"""The engines' own view of their load, scraped from their Prometheus metrics on a short
interval (engines.py names them per engine: TGI's `tgi_batch_current_size` and
`tgi_queue_size`, vLLM's `vllm:num_requests_running` and `vllm:num_requests_waiting`,
SGLang's `sglang:num_running_reqs` and `sglang:num_queue_reqs`, llama.cpp's
`llamacpp:requests_processing` and `llamacpp:requests_deferred`; the KV cache's use where the
engine says it: vLLM's `vllm:kv_cache_usage_perc`, SGLang's `sglang:token_usage`), smoothed
over the last few scrapes (one scrape is a snapshot of a count that moves with every request,
and router replicas that read different snapshots would decide differently). The balancing
strategies read it through `Endpoint.load`.

A page is Prometheus's text format: `name{label="value",...} value [timestamp]`, label
values quoted and escaped (they may hold spaces, `}` and `"`). Only the lines of the metrics
above are read, found with `str.find`, not by reading every line (a vLLM page is some 250
lines, histograms mostly; bench/README.md has the figures), the target's engine's first.
"""

from __future__ import annotations

import asyncio
import logging
from typing import NamedTuple

from .engines import ENGINES
from .registry import Registry
from .upstream import Unreachable, Upstream

log = logging.getLogger("modelship.router")

RUNNING = tuple(n for e in ENGINES.values() for n in e.running)
WAITING = tuple(n for e in ENGINES.values() for n in e.waiting)
KV_USAGE = tuple(n for e in ENGINES.values() for n in e.kv_usage)
_ALL = tuple((n, kind) for e in ENGINES.values() for kind, names in enumerate((e.running, e.waiting, e.kv_usage))
             for n in names)
_BY_ENGINE = {e.name: tuple((n, kind) for kind, names in enumerate((e.running, e.waiting, e.kv_usage))
                            for n in names) for e in ENGINES.values()}
SMOOTHING = 0.4  # weight of the newest scrape: about the last two or three count


class Load(NamedTuple):
    running: float  # requests the engine works on (summed over its series: vLLM's engines, SGLang's ranks)
    waiting: float  # requests it has queued (summed)
    kv_usage: float | None  # its KV cache's share in use, 0..1 (the mean of its series); None: not said


def parse(text: str, engine: str = "") -> Load | None:
    """The engine's load from a metrics page (`engine`'s metrics looked for first, then every
    engine's: a static file may name the wrong one); None when it says neither running nor
    waiting."""
    mine = _BY_ENGINE.get(engine)
    found = _read(text, mine) if mine else None
    return found if found is not None else _read(text, _ALL)


def _read(text: str, metrics: tuple[tuple[str, int], ...]) -> Load | None:
    """Each metric's samples, found with `str.find` (reading every line cost 130 µs for a vLLM
    page, an absent name costs about 8): after the name at a line's start, `{labels}` or a
    blank, then the value. The labels end at the line's last `}` (a value or a timestamp has
    none; a label value may)."""
    sums, seen = [0.0, 0.0, 0.0], [0, 0, 0]
    for name, kind in metrics:
        at = text.find(name)
        while at >= 0:
            start = at + len(name)
            end = text.find("\n", start)
            line = text[start:end] if end >= 0 else text[start:]
            whole = at == 0 or text[at - 1] == "\n"  # (not the name inside another line)
            at = text.find(name, end) if end >= 0 else -1
            if not whole:
                continue
            if line[:1] == "{":
                line = line[line.rfind("}") + 1:]
            elif line[:1] not in (" ", "\t"):
                continue  # another metric whose name starts alike (`..._bucket`)
            try:
                value = float(line.split(None, 1)[0])  # (a timestamp may follow)
            except (ValueError, IndexError):
                continue
            if value == value:  # (NaN: said nothing)
                sums[kind] += value
                seen[kind] += 1
    if not seen[0] and not seen[1]:
        return None
    return Load(sums[0], sums[1], sums[2] / seen[2] if seen[2] else None)


async def scrape_once(registry: Registry, client: Upstream, timeout: float = 1.0) -> int:
    """Scrape every ready endpoint once, at the same time; returns how many answered."""
    endpoints = {e.url: e for t in registry.targets.values() for e in t.ready()}
    engines = {e.url: t.engine for t in registry.targets.values() for e in t.ready()}

    async def one(url: str) -> bool:
        try:
            status, body = await client.get(f"{url}/metrics", timeout)
            found = parse(body.decode("utf-8", "replace"), engines[url]) if status == 200 else None
        except Unreachable:
            found = None
        e = endpoints[url]
        running, waiting, kv = found if found else (0.0, 0.0, None)
        if e.scrapes:  # smoothed: one scrape is a snapshot of a count that moves with every request
            e.running += SMOOTHING * (running - e.running)
            e.waiting += SMOOTHING * (waiting - e.waiting)
            e.kv_usage = kv if kv is None or e.kv_usage is None else e.kv_usage + SMOOTHING * (kv - e.kv_usage)
        else:
            e.running, e.waiting, e.kv_usage = running, waiting, kv
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
