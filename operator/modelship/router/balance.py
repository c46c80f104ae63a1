"""Choosing an endpoint for a request: pure functions of (request, endpoint state).

Every strategy takes the request's key (its rendered prompt, cut into prefix blocks), the
model's ready endpoints with their load, and whatever index the strategy keeps, and returns
one endpoint. No I/O, no clock: forwarding owns the endpoints' counters and calls `pick`.

- `round-robin`: the next endpoint in turn (the baseline benchmarks compare with).
- `least-load`: power of two choices on the requests this router has in flight.
- `queue-aware`: the same on the engines' own load, scraped from their metrics (their
  running requests where those are more than this router's, plus their queues).
- `prefix-cache`: the prompt is cut into fixed-size blocks whose hashes are chained (a
  block's hash covers everything before it), and an LRU index remembers which endpoint last
  served each block hash. The endpoint holding the longest prefix of this prompt wins (its
  engine's prefix cache, llama.cpp's `cache_prompt` or TGI's prefix caching, will hit),
  unless its load (queue-aware) is above the mean by more than `max_imbalance`; then the
  holder of the next longest prefix within that bound; with none, the less loaded of two.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from ..api import LoadBalancing

DEFAULTS = LoadBalancing()  # a ModelDeployment's `router.loadBalancing` defaults: api.py holds each one
BLOCK_CHARS = DEFAULTS.prefix_block_size  # ~32 tokens: a prefix cache hit is counted in whole blocks


@dataclass(eq=False)
class Endpoint:
    """One serving pod (or a static address), with the load the router sees."""

    url: str  # http://10.1.2.3:8080
    in_flight: int = 0  # requests this router has open to it
    running: float = 0.0  # requests the engine says it is working on (scraped; other routers' too)
    waiting: float = 0.0  # requests the engine says are queued (scraped)
    ready: bool = True

    @property
    def load(self) -> float:
        """Requests at the endpoint: this router's, or the engine's own count where that is
        larger (other router replicas send to it too), plus its queue."""
        return max(self.in_flight, self.running) + self.waiting


def block_hashes(text: str, block: int = BLOCK_CHARS) -> list[int]:
    """Chained hashes of the whole blocks of `text`: equal hashes mean equal prefixes. (The
    last, partial block is left out: it is where conversations diverge.)"""
    out, h = [], 0
    for i in range(0, len(text) - block + 1, block):
        h = hash((h, text[i:i + block]))
        out.append(h)
    return out


class Strategy(Protocol):
    name: str
    block: int | None  # characters per prompt block it reads; None: it does not read the prompt
    hits: int  # prompt blocks sent to the endpoint that last served them
    blocks_seen: int  # prompt blocks routed

    def pick(self, blocks: list[int], endpoints: list[Endpoint]) -> Endpoint: ...

    def served(self, blocks: list[int], endpoint: Endpoint) -> None: ...

    def forget(self, url: str) -> None: ...


class Blind:
    """A strategy that does not read the prompt: nothing to cut, remember or forget."""

    block: int | None = None
    hits = blocks_seen = 0

    def served(self, blocks: list[int], endpoint: Endpoint) -> None:
        pass

    def forget(self, url: str) -> None:
        pass


class RoundRobin(Blind):
    name = "round-robin"

    def __init__(self) -> None:
        self.turn = 0

    def pick(self, blocks: list[int], endpoints: list[Endpoint]) -> Endpoint:
        self.turn += 1
        return endpoints[self.turn % len(endpoints)]


def two_choices(endpoints: list[Endpoint], rng: random.Random, own_only: bool = False) -> Endpoint:
    """The less loaded of two endpoints drawn at random (ties: the first drawn)."""
    n = len(endpoints)
    if n == 1:
        return endpoints[0]
    i, j = int(rng.random() * n), int(rng.random() * (n - 1))  # two distinct (cheaper than sample())
    a, b = endpoints[i], endpoints[j + (j >= i)]
    if own_only:
        return b if b.in_flight < a.in_flight else a
    return b if b.load < a.load else a


class LeastLoad(Blind):
    """`least-load`: by this router's requests in flight. `queue-aware`: by the engines' own
    counts where they are larger (other router replicas), plus their queues (scraped)."""

    def __init__(self, seed: int | None = None, queue_aware: bool = False) -> None:
        self.rng = random.Random(seed)
        self.queue_aware = queue_aware
        self.name = "queue-aware" if queue_aware else "least-load"

    def pick(self, blocks: list[int], endpoints: list[Endpoint]) -> Endpoint:
        return two_choices(endpoints, self.rng, own_only=not self.queue_aware)


@dataclass
class PrefixAffinity:
    """Longest cached prefix wins, within a load bound."""

    block: int = BLOCK_CHARS  # characters per hashed block (forwarding cuts the prompt with it)
    max_imbalance: float = DEFAULTS.max_imbalance  # requests above the mean the prefix holder may carry
    capacity: int = 200_000  # block hashes remembered (LRU), across the model's endpoints
    seed: int | None = None
    name: str = "prefix-cache"
    index: "OrderedDict[int, str]" = field(default_factory=OrderedDict)
    hits: int = 0  # blocks sent where they were cached, for the hit-rate estimate (counted once served)
    blocks_seen: int = 0  # blocks of prompts served

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def matches(self, blocks: list[int], endpoints: list[Endpoint]) -> dict[str, int]:
        """For each endpoint that holds a prefix of `blocks`: how many blocks it holds."""
        urls = {e.url for e in endpoints}
        found: dict[str, int] = {}
        for n in range(len(blocks), 0, -1):
            url = self.index.get(blocks[n - 1])
            if url is not None and url in urls and url not in found:
                found[url] = n
                if len(found) == len(urls):
                    break
        return found

    def longest(self, blocks: list[int], endpoints: list[Endpoint]) -> tuple[Endpoint | None, int]:
        """The endpoint holding the longest prefix of `blocks`, and how many blocks it holds."""
        found = self.matches(blocks, endpoints)
        if not found:
            return None, 0
        url = max(found, key=found.get)
        return next(e for e in endpoints if e.url == url), found[url]

    def pick(self, blocks: list[int], endpoints: list[Endpoint]) -> Endpoint:
        """The endpoint with the longest prefix among those within the load bound: the holder
        of the longest one, or if it is too busy the holder of the next longest, and so on;
        with no prefix held within the bound, the less loaded of two."""
        found = self.matches(blocks, endpoints)
        if found:
            mean = sum(e.load for e in endpoints) / len(endpoints)
            for e in sorted((e for e in endpoints if e.url in found), key=lambda e: (-found[e.url], e.load)):
                if e.load <= mean + self.max_imbalance:
                    return e
        return two_choices(endpoints, self.rng)

    def served(self, blocks: list[int], endpoint: Endpoint) -> None:
        """Count what `endpoint` already held of these blocks (a retried request is counted
        once, where it was answered), then remember that it now caches them all (the newest
        at the LRU's end)."""
        self.blocks_seen += len(blocks)
        self.hits += self.matches(blocks, [endpoint]).get(endpoint.url, 0)
        for h in blocks:
            self.index[h] = endpoint.url
            self.index.move_to_end(h)
        while len(self.index) > self.capacity:
            self.index.popitem(last=False)

    def forget(self, url: str) -> None:
        """An endpoint is gone: its cache went with it."""
        for h in [h for h, u in self.index.items() if u == url]:
            del self.index[h]


STRATEGIES = ("least-load", "prefix-cache", "queue-aware", "round-robin")


def make(name: str = DEFAULTS.strategy, block: int = BLOCK_CHARS, max_imbalance: float = DEFAULTS.max_imbalance,
         seed: int | None = None) -> Strategy:
    if name == "round-robin":
        return RoundRobin()
    if name in ("least-load", "queue-aware"):
        return LeastLoad(seed, queue_aware=name == "queue-aware")
    if name == "prefix-cache":
        return PrefixAffinity(block=block, max_imbalance=max_imbalance, seed=seed)
    raise ValueError(f"unknown load-balancing strategy {name!r}: one of {', '.join(STRATEGIES)}")
