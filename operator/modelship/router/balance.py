"""Choosing an endpoint for a request: pure functions of (request, endpoint state).

Every strategy reads what it needs of the request once (`key`: nothing, or the prompt's
prefix blocks and its conversation's home), then `pick`s one of the model's ready endpoints
by their load and whatever the strategy remembers. No I/O, no clock: forwarding owns the
endpoints' counters and calls `pick`, then `served` with the endpoint that answered.

- `round-robin`: the next endpoint in turn (the baseline benchmarks compare with).
- `least-load`: power of two choices on the requests this router has in flight.
- `queue-aware`: the same on the engines' own load, scraped from their metrics (their
  running requests where those are more than this router's, plus their queues; their KV
  cache's use only at `kv_weight`, 0 by default: it did not help, bench/README.md §3b).
- `prefix-cache`: every router replica agrees, with no shared state, on a home for each
  conversation: rendezvous hashing of its opener (the messages up to and including the
  first user message; a completion's first characters) over the model's endpoints. The
  home serves it unless its load is above the mean by more than `max_imbalance`; then the
  next endpoint in the conversation's own rendezvous order that is within the bound. What
  this replica learned comes first: an endpoint known to hold a longer prefix of this
  prompt (past its opener), then the endpoint this replica last sent the conversation to,
  each within the bound. The prompt is cut into fixed-size blocks whose hashes are chained
  (a block's hash covers everything before it) and an LRU index remembers which endpoint
  last served each block. Why: docs/decisions/prefix-affinity-across-replicas.md.
- `prefix-hash`: a baseline for the benchmarks (static files only), like KubeAI's
  PrefixHash: consistent hashing with bounded loads of the first 100 characters of the
  first user message, on this router's own in-flight counts (a load factor of 1.25).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..api import LoadBalancing

DEFAULTS = LoadBalancing()  # a ModelDeployment's `router.loadBalancing` defaults: api.py holds each one
BLOCK_CHARS = DEFAULTS.prefix_block_size  # ~32 tokens: a prefix cache hit is counted in whole blocks
_M64 = (1 << 64) - 1
KV_WEIGHT = 0.0  # queue-aware: requests a full KV cache counts for (0: not counted; bench/README.md §3b)


def stable_hash(text: str) -> int:
    """A 64-bit hash of `text` that every process computes alike (Python's `hash` of a str is
    salted per process, so two router replicas would disagree on it)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def rank(home: int, salt: int) -> int:
    """An endpoint's rendezvous score for a home key (splitmix64's finalizer of the two
    mixed): the endpoint with the highest score is the home, the next ones the fallbacks."""
    z = ((home ^ salt) + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


@dataclass(eq=False)
class Endpoint:
    """One serving pod (or a static address), with the load the router sees."""

    url: str  # http://10.1.2.3:8080
    in_flight: int = 0  # requests this router has open to it
    running: float = 0.0  # requests the engine says it is working on (scraped; other routers' too)
    waiting: float = 0.0  # requests the engine says are queued (scraped)
    kv_usage: float | None = None  # the engine's KV cache's share in use, 0..1, where it says it (scraped)
    ready: bool = True
    scrapes: int = 0  # how many times its metrics were read
    scraped: bool = False  # whether the last read found the engine's load there
    probed_until: float = 0.0  # found healthy by the router itself: ready until then, whatever the slice says
    salt: int = field(init=False, repr=False)  # its rendezvous identity: the same in every router replica

    def __post_init__(self) -> None:
        self.salt = stable_hash(self.url)

    @property
    def load(self) -> float:
        """Requests at the endpoint: this router's, or the engine's own count where that is
        larger (other router replicas send to it too), plus its queue."""
        return max(self.in_flight, self.running) + self.waiting


def block_hashes(text: str, block: int = BLOCK_CHARS) -> list[int]:
    """Chained hashes of the whole blocks of `text`: equal hashes mean equal prefixes. (The
    last, partial block is left out: it is where conversations diverge.) Salted per process:
    only this router's own index reads them."""
    out, h = [], 0
    for i in range(0, len(text) - block + 1, block):
        h = hash((h, text[i:i + block]))
        out.append(h)
    return out


def by_rank(home: int, endpoints: list[Endpoint]) -> list[Endpoint]:
    """The endpoints in a home key's rendezvous order: its home first."""
    return sorted(endpoints, key=lambda e: rank(home, e.salt), reverse=True)


class Strategy(Protocol):
    name: str
    reads_prompt: bool  # whether `key` needs the prompt's text (forwarding renders it only then)
    counts_hits: bool  # whether `hits` and `blocks_seen` are counted (the router's metrics export them then)
    hits: int  # prompt blocks sent to the endpoint that last served them
    blocks_seen: int  # prompt blocks routed

    def key(self, text: str, opener: int, user: int) -> Any:
        """What the strategy reads of a prompt: `text` the rendered prompt, `opener` where its
        conversation's opener ends in it, `user` where its first user message starts."""

    def pick(self, key: Any, endpoints: list[Endpoint]) -> Endpoint: ...

    def served(self, key: Any, endpoint: Endpoint) -> None: ...

    def forget(self, urls: set[str]) -> None: ...


class Blind:
    """A strategy that does not read the prompt: nothing to cut, remember or forget."""

    reads_prompt = counts_hits = False
    hits = blocks_seen = 0

    def key(self, text: str, opener: int, user: int) -> None:
        return None

    def served(self, key: Any, endpoint: Endpoint) -> None:
        pass

    def forget(self, urls: set[str]) -> None:
        pass


class RoundRobin(Blind):
    name = "round-robin"

    def __init__(self) -> None:
        self.turn = 0

    def pick(self, key: Any, endpoints: list[Endpoint]) -> Endpoint:
        self.turn += 1
        return endpoints[self.turn % len(endpoints)]


def two_choices(endpoints: list[Endpoint], rng: random.Random, own_only: bool = False,
                kv_weight: float = 0.0) -> Endpoint:
    """The less loaded of two endpoints drawn at random (ties: the first drawn). `kv_weight`:
    what a full KV cache adds to an endpoint's load, in requests (where its engine says it)."""
    n = len(endpoints)
    if n == 1:
        return endpoints[0]
    i, j = int(rng.random() * n), int(rng.random() * (n - 1))  # two distinct (cheaper than sample())
    a, b = endpoints[i], endpoints[j + (j >= i)]
    if own_only:
        return b if b.in_flight < a.in_flight else a
    if kv_weight:
        return b if b.load + kv_weight * (b.kv_usage or 0.0) < a.load + kv_weight * (a.kv_usage or 0.0) else a
    return b if b.load < a.load else a


class LeastLoad(Blind):
    """`least-load`: by this router's requests in flight. `queue-aware`: by the engines' own
    counts where they are larger (other router replicas), plus their queues (scraped), plus
    `kv_weight` times their KV cache's use where they say it (vLLM, SGLang)."""

    def __init__(self, seed: int | None = None, queue_aware: bool = False, kv_weight: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.queue_aware = queue_aware
        self.kv_weight = kv_weight if queue_aware else 0.0
        self.name = "queue-aware" if queue_aware else "least-load"

    def pick(self, key: Any, endpoints: list[Endpoint]) -> Endpoint:
        return two_choices(endpoints, self.rng, not self.queue_aware, self.kv_weight)


@dataclass(slots=True)
class Prompt:
    """What `prefix-cache` reads of a request."""

    blocks: list[int]  # the prompt's chained block hashes (this process's)
    home: int  # the stable hash of its opener: every router replica computes the same
    own_from: int  # prefixes of at least this many blocks reach past the opener: this conversation's own


@dataclass
class PrefixAffinity:
    """A conversation's agreed home, within a load bound, refined by what this router learned."""

    block: int = BLOCK_CHARS  # characters per hashed block
    max_imbalance: float = DEFAULTS.max_imbalance  # load above the mean an endpoint may carry and still be chosen
    capacity: int = 200_000  # block hashes remembered (LRU), across the model's endpoints
    conversations: int = 50_000  # conversations (homes) whose last endpoint is remembered (LRU)
    name: str = "prefix-cache"
    index: "OrderedDict[int, str]" = field(default_factory=OrderedDict)  # block hash -> endpoint last served it
    placed: "OrderedDict[int, str]" = field(default_factory=OrderedDict)  # home -> endpoint this router last sent it to
    hits: int = 0  # blocks sent where they were cached, for the hit-rate estimate (counted once served)
    blocks_seen: int = 0  # blocks of prompts served
    reads_prompt = counts_hits = True

    def key(self, text: str, opener: int, user: int) -> Prompt:
        return Prompt(block_hashes(text, self.block), stable_hash(text[:opener]), opener // self.block + 1)

    def matches(self, blocks: list[int], endpoints: list[Endpoint], shortest: int = 1) -> dict[str, int]:
        """For each endpoint that holds a prefix of `blocks` of at least `shortest` blocks: how
        many blocks it holds."""
        urls = {e.url for e in endpoints}
        found: dict[str, int] = {}
        for n in range(len(blocks), max(shortest, 1) - 1, -1):
            url = self.index.get(blocks[n - 1])
            if url is not None and url in urls and url not in found:
                found[url] = n
                if len(found) == len(urls):
                    break
        return found

    def pick(self, p: Prompt, endpoints: list[Endpoint]) -> Endpoint:
        """Among the endpoints within the load bound (at most `max_imbalance` above the mean):
        the one known to hold the longest prefix of this prompt past its opener; else the one
        this router last sent the conversation to; else the first in the conversation's
        rendezvous order (its home, then its fallbacks). None within it: the least loaded."""
        if len(endpoints) == 1 or p is None:  # (no prompt: a GET of the engine's info)
            return min(endpoints, key=lambda e: e.load)
        bound = sum(e.load for e in endpoints) / len(endpoints) + self.max_imbalance
        if len(p.blocks) >= p.own_from:
            found = self.matches(p.blocks, endpoints, p.own_from)
            if found:
                for e in sorted((e for e in endpoints if e.url in found), key=lambda e: (-found[e.url], e.load)):
                    if e.load <= bound:
                        return e
        url = self.placed.get(p.home)
        if url is not None:
            e = next((e for e in endpoints if e.url == url), None)
            if e is not None and e.load <= bound:
                return e
        home = p.home
        best = max(endpoints, key=lambda e: rank(home, e.salt))
        if best.load <= bound:
            return best
        for e in by_rank(home, endpoints):
            if e.load <= bound:
                return e
        return min(endpoints, key=lambda e: e.load)  # (not reached: the least loaded is at most the mean)

    def served(self, p: Prompt, endpoint: Endpoint) -> None:
        """Count what `endpoint` already held of these blocks (a retried request is counted
        once, where it was answered), then remember that it now caches them all (the newest
        at the LRU's end) and holds this conversation."""
        blocks = p.blocks
        self.blocks_seen += len(blocks)
        self.hits += self.matches(blocks, [endpoint]).get(endpoint.url, 0)
        index = self.index
        for h in blocks:
            index[h] = endpoint.url
            index.move_to_end(h)
        while len(index) > self.capacity:
            index.popitem(last=False)
        self.placed[p.home] = endpoint.url
        self.placed.move_to_end(p.home)
        if len(self.placed) > self.conversations:
            self.placed.popitem(last=False)

    def forget(self, urls: set[str]) -> None:
        """Endpoints are gone: their caches went with them (one pass, however many went)."""
        for table in (self.index, self.placed):
            for h in [h for h, u in table.items() if u in urls]:
                del table[h]


class PrefixHash(Blind):
    """`prefix-hash`, the benchmarks' stand-in for KubeAI's PrefixHash: consistent hashing with
    bounded loads (CHWBL). The key is the first `chars` characters of the first user message
    (of a completion's prompt); the endpoint is the first in the key's rendezvous order
    (KubeAI walks a hash ring: the same distribution) whose in-flight count, this router's
    own, stays within `load_factor` times the mean once this request is added."""

    name = "prefix-hash"
    reads_prompt = True

    def __init__(self, chars: int = 100, load_factor: float = 1.25) -> None:
        self.chars, self.load_factor = chars, load_factor

    def key(self, text: str, opener: int, user: int) -> int:
        return stable_hash(text[user:user + self.chars])

    def pick(self, key: int | None, endpoints: list[Endpoint]) -> Endpoint:
        if key is None:
            return min(endpoints, key=lambda e: e.in_flight)
        cap = math.ceil(self.load_factor * (sum(e.in_flight for e in endpoints) + 1) / len(endpoints))
        for e in by_rank(key, endpoints):
            if e.in_flight + 1 <= cap:
                return e
        return min(endpoints, key=lambda e: e.in_flight)


STRATEGIES = ("least-load", "prefix-cache", "prefix-hash", "queue-aware", "round-robin")


def make(name: str = DEFAULTS.strategy, block: int = BLOCK_CHARS, max_imbalance: float = DEFAULTS.max_imbalance,
         seed: int | None = None, kv_weight: float | None = None) -> Strategy:
    if name == "round-robin":
        return RoundRobin()
    if name in ("least-load", "queue-aware"):
        return LeastLoad(seed, queue_aware=name == "queue-aware",
                         kv_weight=KV_WEIGHT if kv_weight is None else kv_weight)
    if name == "prefix-cache":
        return PrefixAffinity(block=block, max_imbalance=max_imbalance)
    if name == "prefix-hash":
        return PrefixHash()
    raise ValueError(f"unknown load-balancing strategy {name!r}: one of {', '.join(STRATEGIES)}")
