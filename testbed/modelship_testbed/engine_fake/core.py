"""What every engine fake shares: a tokenizer stand-in, deterministic output, a simulated
prefix cache, a batch with a queue, simulated KV-cache blocks, prefill and decode timing,
and the `--fake-*` tuning flags (test code only).

Timing: a prefill cost per prompt token not found in the prefix cache (blocks of `BLOCK`
"tokens", chained hashes, LRU), then a fixed delay per generated token; at most
`max_batch_size` requests run at once, and a request also waits until its prompt's KV blocks
fit in `kv_blocks` (the rest wait: the engines' "waiting"/"queue" figures). KV usage is the
fraction of the KV blocks held by running requests (prompt plus tokens generated so far):
like vLLM and SGLang, a cached prefix that no running request holds counts as free, since
the engine evicts it on demand. Prefills run side by side by default; with
`--fake-prefill-shared` they take turns on one engine's compute in chunks of
`PREFILL_CHUNK` tokens through one FIFO lock (an approximation of chunked prefill's
processor sharing), so that a busy engine's prefills slow each other down.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import AsyncIterator

from aiohttp import web

BLOCK = 16
PREFILL_CHUNK = 256  # tokens per turn at the shared prefill (--fake-prefill-shared)
WORDS = ("the model answers in a deterministic way so that tests can compare every token it "
         "streams across runs and replicas while the router balances requests").split()


def tokenize(text: str) -> list[str]:
    """Rough stand-in for a tokenizer: words and punctuation."""
    return re.findall(r"\w+|[^\w\s]", text)


def token_id(piece: str) -> int:
    return int.from_bytes(hashlib.blake2b(piece.encode(), digest_size=4).digest(), "little") % 32000


def render_chat(messages: list[dict]) -> str:
    """A ChatML rendering, as many chat templates produce."""
    parts = [f"<|im_start|>{m.get('role', 'user')}\n{content_text(m.get('content'))}<|im_end|>\n"
             for m in messages]
    return "".join(parts) + "<|im_start|>assistant\n"


def content_text(content) -> str:
    """A message's text: a string, or OpenAI's list of parts (their `text` joined)."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def blocks_for(tokens: int) -> int:
    return -(-tokens // BLOCK)


class PrefixCache:
    """Which prompt blocks were served recently: a chain of block hashes in an LRU."""

    def __init__(self, capacity_blocks: int):
        self.capacity = capacity_blocks
        self.blocks: OrderedDict[bytes, None] = OrderedDict()

    def lookup_and_insert(self, tokens: list[str]) -> int:
        """Cached prefix length in tokens; then remember every full block of this prompt."""
        h = b""
        hits, matching = 0, True
        for i in range(0, len(tokens) - len(tokens) % BLOCK, BLOCK):
            h = hashlib.blake2b(h + "\x00".join(tokens[i:i + BLOCK]).encode(), digest_size=16).digest()
            if matching and h in self.blocks:
                hits += BLOCK
                self.blocks.move_to_end(h)
            else:
                matching = False
                self.blocks[h] = None
                if len(self.blocks) > self.capacity:
                    self.blocks.popitem(last=False)
        return hits


@dataclass
class Settings:
    model_id: str  # the name the model is served under
    max_concurrent_requests: int
    max_batch_size: int
    token_delay: float
    prefill_per_token: float
    load_seconds: float
    cache_blocks: int
    prefill_shared: bool = False
    kv_blocks: int = 2048
    default_tokens: int = 16  # the length of an answer whose request sets no limit (then "stop")


class Observer:
    """What an engine's metrics hear of each request (each protocol has its own)."""

    def admitted(self, prompt_tokens: int) -> None: ...

    def scheduled(self, prompt_tokens: int, cached_tokens: int) -> None: ...

    def first_token(self, seconds: float) -> None: ...

    def finished(self, seconds: float, prompt_tokens: int, generated: int, finish: str | None) -> None:
        """`finish` is "length", "eos" or "stop_sequence"; None when the request failed or was dropped."""


class Overloaded(Exception):
    pass


@dataclass
class Request:
    """One generation: what to produce, and (filled as it runs) what happened."""
    prompt: str
    tokens: list[str]
    max_new: int
    eos: bool = False  # ends with the model's own stop (no limit asked) rather than "length"
    stops: tuple[str, ...] = ()
    seed: int | None = None
    cached: int = 0


class Engine:
    def __init__(self, s: Settings, observer_factory=Observer):
        self.s = s
        self.observer_factory = observer_factory
        self.cache = PrefixCache(s.cache_blocks)
        self.metrics = observer_factory()
        self.inflight = self.waiting = self.running = self.held_blocks = 0
        self.slots = asyncio.Semaphore(s.max_batch_size)
        self.prefill_lock = asyncio.Lock()  # FIFO: a waiter is never overtaken by a later acquire
        self.kv_waiters: list[asyncio.Future] = []
        self.started = time.monotonic()

    def reset(self, cache_blocks: int | None = None) -> None:
        """An empty prefix cache (of `cache_blocks` blocks when given) and zeroed metrics;
        only while no request is in flight (the caller checks)."""
        if cache_blocks is not None:
            self.s.cache_blocks = cache_blocks
        self.cache = PrefixCache(self.s.cache_blocks)
        self.metrics = self.observer_factory()

    @property
    def ready(self) -> bool:
        return time.monotonic() - self.started >= self.s.load_seconds

    @property
    def kv_usage(self) -> float:
        return min(1.0, self.held_blocks / self.s.kv_blocks) if self.s.kv_blocks else 0.0

    async def prefill(self, tokens: int) -> None:
        """The simulated cost of prefilling `tokens` uncached tokens: side by side with other
        requests' prefills, or (prefill_shared) chunk by chunk through the engine's one lock,
        queueing again after each chunk so that concurrent prefills share the compute."""
        if not self.s.prefill_shared:
            await asyncio.sleep(self.s.prefill_per_token * tokens)
            return
        while tokens > 0:
            chunk = min(tokens, PREFILL_CHUNK)
            async with self.prefill_lock:
                await asyncio.sleep(self.s.prefill_per_token * chunk)
            tokens -= chunk

    def output(self, prompt: str, n: int, seed: int | None) -> list[str]:
        digest = hashlib.sha256(f"{prompt}\x00{seed}".encode()).digest()
        return [(" " if i else "") + WORDS[(digest[i % 32] + i) % len(WORDS)] for i in range(n)]

    async def kv_room(self, blocks: int) -> None:
        """Wait until `blocks` more KV blocks fit (always when nothing runs: one request may
        hold more than the whole cache, as a preempted-and-resumed one would)."""
        while self.running and self.held_blocks + blocks > self.s.kv_blocks:
            fut = asyncio.get_running_loop().create_future()
            self.kv_waiters.append(fut)
            await fut

    def release(self, blocks: int) -> None:
        self.held_blocks -= blocks
        waiters, self.kv_waiters = self.kv_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def generate(self, r: Request) -> AsyncIterator[tuple[str, int, str | None]]:
        """Yields (token_text, index, finish) per generated token after a simulated prefill;
        finish is None until the last token ("length", "eos" or "stop_sequence")."""
        if self.inflight >= self.s.max_concurrent_requests:
            raise Overloaded("Model is overloaded")
        self.inflight += 1
        self.waiting += 1
        start, held, queued, generated, finish = time.monotonic(), 0, True, 0, None
        metrics = self.metrics
        metrics.admitted(len(r.tokens))
        try:
            async with self.slots:
                await self.kv_room(blocks_for(len(r.tokens) + 1))
                self.waiting, self.running, queued = self.waiting - 1, self.running + 1, False
                try:
                    held = blocks_for(len(r.tokens) + 1)
                    self.held_blocks += held
                    r.cached = self.cache.lookup_and_insert(r.tokens)
                    metrics.scheduled(len(r.tokens), r.cached)
                    await self.prefill(len(r.tokens) - r.cached)
                    text = ""
                    for i, piece in enumerate(self.output(r.prompt, r.max_new, r.seed)):
                        await asyncio.sleep(self.s.token_delay)
                        if i == 0:
                            metrics.first_token(time.monotonic() - start)
                        grown = blocks_for(len(r.tokens) + i + 2)
                        self.held_blocks += grown - held
                        held = grown
                        text += piece
                        generated = i + 1
                        stop_hit = any(s and text.endswith(s) for s in r.stops)
                        last = "eos" if r.eos else "length"
                        finish = "stop_sequence" if stop_hit else last if i == r.max_new - 1 else None
                        yield piece, i, finish
                        if stop_hit:
                            break
                finally:
                    self.running -= 1
                    self.release(held)
        finally:
            if queued:  # cancelled while waiting for a batch slot
                self.waiting -= 1
            self.inflight -= 1
            metrics.finished(time.monotonic() - start, len(r.tokens), generated, finish)


async def primed(agen: AsyncIterator) -> AsyncIterator:
    """Run a stream to its first item before any response is sent, so that validation and
    overload errors become an HTTP error status rather than a broken event stream."""
    try:
        first = await agen.__anext__()
    except StopAsyncIteration:
        first = None

    async def rest() -> AsyncIterator:
        if first is None:
            return
        yield first
        async for item in agen:
            yield item

    return rest()


def env_value(prefixes: tuple[str, ...], name: str, default):
    """The first of PREFIX_NAME set in the environment (an engine's own prefix, then
    ENGINE_FAKE_), else `default`."""
    for prefix in (*prefixes, "ENGINE_FAKE_"):
        if f"{prefix}{name}" in os.environ:
            return os.environ[f"{prefix}{name}"]
    return default


def add_fake_flags(p: argparse.ArgumentParser, env: tuple[str, ...], batch_default: int | None) -> None:
    """The `--fake-*` tuning flags, each with an environment variable (e.g. TGI_FAKE_TOKEN_DELAY_MS)."""
    batch = env_value(env, "MAX_BATCH_SIZE", batch_default)
    p.add_argument("--fake-max-batch-size", type=int, default=None if batch is None else int(batch))
    p.add_argument("--fake-token-delay-ms", type=float, default=float(env_value(env, "TOKEN_DELAY_MS", 5)))
    p.add_argument("--fake-prefill-ms-per-token", type=float,
                   default=float(env_value(env, "PREFILL_MS_PER_TOKEN", 0.5)))
    p.add_argument("--fake-load-seconds", type=float, default=float(env_value(env, "LOAD_SECONDS", 0.5)))
    p.add_argument("--fake-cache-blocks", type=int, default=int(env_value(env, "CACHE_BLOCKS", 4096)))
    p.add_argument("--fake-kv-blocks", type=int, default=int(env_value(env, "KV_BLOCKS", 2048)))
    p.add_argument("--fake-default-tokens", type=int, default=int(env_value(env, "DEFAULT_TOKENS", 16)))
    p.add_argument("--fake-prefill-shared", action="store_true",
                   default=str(env_value(env, "PREFILL_SHARED", "")).lower() in ("1", "true", "yes"))


def settings_from(args: argparse.Namespace, model_id: str, max_concurrent: int, max_batch: int) -> Settings:
    return Settings(model_id, max_concurrent, args.fake_max_batch_size or max_batch,
                    args.fake_token_delay_ms / 1000, args.fake_prefill_ms_per_token / 1000,
                    args.fake_load_seconds, args.fake_cache_blocks, args.fake_prefill_shared,
                    args.fake_kv_blocks, args.fake_default_tokens)


async def read_body(req: web.Request):
    """The request's JSON (any type), or raise ValueError with the decoder's message."""
    raw = await req.read()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(str(e)) from e


def reset_handler(engine: Engine, error):
    """`POST /fake/reset` with an optional body {"cache_blocks": N}: an empty prefix cache and
    zeroed metrics; refused with 409 while requests are in flight. `error(status, message,
    kind)` answers in the engine's own error shape."""
    async def reset(req: web.Request) -> web.Response:
        try:
            body = await read_body(req) if req.can_read_body else {}
        except ValueError:
            return error(422, "Failed to deserialize the JSON body", "validation")
        blocks = body.get("cache_blocks") if isinstance(body, dict) else None
        if blocks is not None and (not isinstance(blocks, int) or isinstance(blocks, bool) or blocks < 0):
            return error(422, "cache_blocks: expected a non-negative integer", "validation")
        if engine.inflight:
            return error(409, f"{engine.inflight} requests in flight", "conflict")
        engine.reset(blocks)
        return web.json_response({"cache_blocks": engine.s.cache_blocks})
    return reset


def serve(app: web.Application, host: str, port: int) -> None:
    # The engines drop a request whose client went away, generation included: so do the fakes.
    web.run_app(app, host=host, port=port, print=None, access_log=None, handler_cancellation=True)
