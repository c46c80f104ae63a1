"""Benchmark 3: balancing quality on a shared-prefix, multi-turn workload, strategy by strategy,
against vllm-router's cache_aware policy.

    .venv/bin/python bench/balance_quality.py [--workload documents|system-prompts] [--backends 4] [--baseline TREE]
    .venv/bin/python bench/balance_quality.py --matrix [--matrix-backends 4,8] [--matrix-turns 3,12]
        [--matrix-cache fits,tight] [--matrix-replicas 1,2,4] [--strategies ...] [--json results.json]

Four (by default) TGI-protocol fakes on 127.0.0.1, each with a simulated prefix cache of
`--cache-blocks` blocks of 16 tokens: a prompt's uncached tokens cost `--prefill-ms` each
before the first token, cached ones nothing. With `--prefill parallel` (the single run's
default) each request's prefill runs on its own, as if the engine's compute were endless; with
`--prefill shared` (the matrix's default) the prefills of one fake take turns, in chunks of 256
tokens, as on one GPU, so that a busy engine's prefills slow each other down and load counts
as well as cache hits. Conversations grow turn by turn (each turn sends the whole conversation
again, as chat clients do), `--concurrency` of them at a time. Two workloads:
- `documents` (the default): one shared system prompt, then a long document of the
  conversation's own (a RAG context, an agent's tool output), then the turns. Only an
  endpoint that served this conversation before has its document cached, and the caches
  cannot hold every conversation four times over.
- `system-prompts`: four long system prompts shared by all conversations, short turns. Every
  endpoint soon caches all four, so round robin hits most of the time too.
For each strategy `modelship router --static` runs in front of the backends (`--router-replicas`
of them, each with state of its own, as a Deployment's replicas behind a Service: the client
sends each request to one picked at random, `--client random`, or each conversation to one of
its own, `--client sticky`, as keep-alive clients do), and every turn is a streamed chat
completion; time to first token (TTFT) is measured at the client. The backends start once and
are reset between runs (`POST /fake/reset`: empty caches, zeroed metrics); the routers start
afresh for every run. Per run one line: TTFT p50/p90/mean, requests per second, and the
backends' own prefix-cache hit rate (`tgi_prefix_cache_hit_tokens` over
`tgi_request_input_tokens`).

Two modes:
- a single run (the default): the workload and backends the flags give, strategy by strategy,
  then how far prefix-cache's TTFT p90 is below each other strategy's.
- `--matrix`: every combination of backends (4, 8), turns per conversation (3: the openers,
  always a cache miss, are a third of the requests and set the p90; 12), cache size (`fits`:
  twice what the conversations living on a backend need; `tight`: half of what its active
  conversations need, sizes computed from the workload's own last prompt), router replicas
  (1, 2, 4) and strategy, each dimension narrowed by a flag. Sized to take about 10 s a run
  (the 120 runs of the whole matrix about 20 minutes on 2 cores): 4 conversations at a time
  per backend, about `--matrix-requests` requests a run (in whole rounds of that concurrency),
  600-word documents, prefills of 0.25 ms a token. It ends with a summary per cell:
  prefix-cache's TTFT p90 and requests per second at 2 and 4 replicas against its own at 1,
  and whether it is ahead of every other strategy (lower p90 and more requests per second) at
  each replica count.
`--json PATH` writes every run's figures (a list of objects) for the docs.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import httpx
from modelship_testbed.tgi_fake import render_chat, tokenize

from loopback import (HOST, free_port, modelship_router, pct, source_path, start_vllm_router, stop_all, vllm_router,
                      wait)

SYSTEM_PROMPTS = [
    " ".join(f"rule {i}.{j}: answer with care about topic {i} and cite section {j}." for j in range(60))
    for i in range(4)
]
WORDS = ("alpha beta gamma delta river stone cloud paper engine signal harbor lantern meadow copper "
         "violet orbit canyon ember falcon glacier").split()
BLOCK_TOKENS = 16  # the fake's prefix-cache block
CONCURRENCY_PER_BACKEND = 4  # the matrix's: 16 conversations at a time on 4 backends, 32 on 8
STRATEGIES = "round-robin,least-load,prefix-cache,prefix-hash,vllm-router:cache_aware"  # both modes' rows


def document(cid: int, words: int) -> str:
    rng = random.Random(cid * 7919)
    return f"Document {cid}: " + " ".join(rng.choice(WORDS) for _ in range(words))


def first_messages(workload: str, cid: int, doc_words: int) -> list[dict]:
    if workload == "system-prompts":
        return [{"role": "system", "content": SYSTEM_PROMPTS[cid % len(SYSTEM_PROMPTS)]}]
    return [{"role": "system", "content": SYSTEM_PROMPTS[0][:600]},
            {"role": "user", "content": "Read this and answer my questions.\n" + document(cid, doc_words)},
            {"role": "assistant", "content": "I have read it."}]


def question(cid: int, turn: int, rng: random.Random) -> dict:
    return {"role": "user", "content": f"conversation {cid} turn {turn}: "
                                       + " ".join(rng.choice(["why", "how", "what", "more", "explain"])
                                                  for _ in range(20))}


def answer(cid: int, turn: int) -> dict:
    return {"role": "assistant", "content": f"answer {cid}.{turn} " * 8}


def conversation_blocks(kind: str, turns: int, doc_words: int) -> int:
    """Cache blocks one conversation needs: its last turn's prompt, tokenized and rendered as the
    fake does (every earlier turn's prompt is a prefix of it; all conversations are as long)."""
    rng = random.Random(0)
    messages = list(first_messages(kind, 0, doc_words))
    for turn in range(turns):
        messages += [question(0, turn, rng)] + ([answer(0, turn)] if turn < turns - 1 else [])
    return math.ceil(len(tokenize(render_chat(messages))) / BLOCK_TOKENS)


ENGINE_ARGV = {  # each engine's fake, as the operator starts the engine (the served name: "bench")
    "tgi": lambda port: ["-m", "modelship_testbed.tgi_fake", "--model-id", "org/bench", "--hostname", HOST,
                         "--port", str(port), "--max-input-tokens", "16000", "--max-total-tokens", "16384"],
    "vllm": lambda port: ["-m", "modelship_testbed.engine_fake.vllm", "serve", "org/bench", "--served-model-name",
                          "bench", "--host", HOST, "--port", str(port), "--max-model-len", "16384"],
    "sglang": lambda port: ["-m", "modelship_testbed.engine_fake.sglang", "--model-path", "org/bench",
                            "--served-model-name", "bench", "--host", HOST, "--port", str(port), "--context-length",
                            "16384", "--enable-metrics"],
}
HIT_RATE = {  # each engine's prefix-cache counters: (tokens found cached, prompt tokens)
    "tgi": ("tgi_prefix_cache_hit_tokens", "tgi_request_input_tokens"),
    "vllm": ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"),
    "sglang": ("sglang:cached_tokens_total", "sglang:prompt_tokens_total"),
}


class Backends:
    """`n` fakes of `engine`, started once and reset (`POST /fake/reset`) before each run."""

    def __init__(self, n: int, prefill_ms: float, cache_blocks: int, shared: bool, engine: str = "tgi",
                 kv_blocks: int | None = None):
        self.procs: list[subprocess.Popen] = []
        self.urls: list[str] = []
        self.engine = engine
        for _ in range(n):
            port = free_port()
            self.procs.append(subprocess.Popen(
                [sys.executable, *ENGINE_ARGV[engine](port), "--fake-load-seconds", "0", "--fake-token-delay-ms", "2",
                 "--fake-prefill-ms-per-token", str(prefill_ms), "--fake-cache-blocks", str(cache_blocks),
                 "--fake-max-batch-size", "8", *(["--fake-prefill-shared"] if shared else []),
                 *(["--fake-kv-blocks", str(kv_blocks)] if kv_blocks else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.urls.append(f"http://{HOST}:{port}")
        self.http = httpx.Client(timeout=10)
        try:
            for u in self.urls:
                wait(f"{u}/health")
        except BaseException:
            self.stop()
            raise

    def reset(self, cache_blocks: int) -> None:
        """Empty caches of `cache_blocks` blocks, zeroed metrics (a request a client gave up on
        may still be finishing: the fake refuses until it is done)."""
        for u in self.urls:
            deadline = time.monotonic() + 30
            while (r := self.http.post(f"{u}/fake/reset", json={"cache_blocks": cache_blocks})).status_code == 409:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{u}: still busy 30 s after a run")
                time.sleep(0.1)
            r.raise_for_status()

    def hit_rate(self) -> float:
        hit = total = 0.0
        hits, prompts = HIT_RATE[self.engine]
        for u in self.urls:
            for line in self.http.get(f"{u}/metrics").text.splitlines():
                name = line.split("{", 1)[0].split(" ", 1)[0]
                if name == hits:
                    hit += float(line.split()[-1])
                elif name == prompts:
                    total += float(line.split()[-1])
        return hit / total if total else 0.0

    def stop(self) -> None:
        self.http.close()
        stop_all(self.procs)


class RouterFailed(Exception):
    pass


def start_routers(strategy: str, backends: list[str], replicas: int, workdir: Path, source: str | None,
                  exe: str | None, engine: str = "tgi") -> tuple[list[subprocess.Popen], list[str]]:
    """`replicas` routers for one row (`<ours>`, `baseline:<ours>` or `vllm-router:<policy>`), each
    with state of its own: all started, then waited for (they start faster side by side)."""
    started = []
    for _ in range(replicas):
        if strategy.startswith("vllm-router:"):
            started.append(start_vllm_router(exe, backends, strategy.split(":", 1)[1], ready=False))
        else:
            name, src = (strategy.split(":", 1)[1], source) if strategy.startswith("baseline:") else (strategy, None)
            started.append(modelship_router(backends, name, workdir, engine=engine, scrape_interval=0.5, source=src,
                                            ready=False))
    procs, urls = [p for p, _ in started], [u for _, u in started]
    try:
        for p, u in started:
            deadline = time.monotonic() + 60
            while True:  # as loopback.wait, but a router that exits (a strategy it lacks) fails at once
                if p.poll() is not None:
                    raise RouterFailed(f"exited with status {p.returncode}")
                try:
                    if httpx.get(f"{u}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RouterFailed("not up within 60 s")
                time.sleep(0.1)
    except BaseException:
        stop_all(procs)
        raise
    return procs, urls


@dataclass
class Run:
    """One run's parameters and figures, as printed and as written by --json (times in ms)."""
    backends: int
    turns: int
    conversations: int
    concurrency: int
    cache: str  # fits, tight, or (a single run) the --cache-blocks figure
    cache_blocks: int
    replicas: int
    client: str
    prefill: str
    strategy: str
    ttft_p50_ms: float = math.nan
    ttft_p90_ms: float = math.nan
    ttft_mean_ms: float = math.nan
    req_per_s: float = math.nan
    cache_hit: float = math.nan
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0


async def conversation(client: httpx.AsyncClient, pick, cid: int, turns: int, ttfts: list[float],
                       rng: random.Random, first: list[dict], errors: list[str]) -> None:
    messages = list(first)
    for turn in range(turns):
        messages.append(question(cid, turn, rng))
        started = time.perf_counter()
        ttft = None
        try:
            async with client.stream("POST", f"{pick()}/v1/chat/completions",
                                     json={"model": "bench", "messages": messages, "max_tokens": 16,
                                           "stream": True}) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if line.startswith("data:") and "[DONE]" not in line and ttft is None:
                        ttft = time.perf_counter() - started
            ttfts.append(ttft if ttft is not None else math.nan)
        except httpx.HTTPError as e:  # counted, and the conversation goes on (as a client would retry)
            errors.append(f"{type(e).__name__}: {e}")
        messages.append(answer(cid, turn))


async def workload(routers: list[str], client_mode: str, conversations: int, turns: int, concurrency: int,
                   seed: int, kind: str, doc_words: int) -> tuple[list[float], list[str], float]:
    """TTFTs (s), errors and the wall time of `conversations` conversations, `concurrency` at a time.
    Which replica serves a request comes from the conversation's own seeded generator, so a
    run picks the same replicas whatever the timing: a fresh pick per request (`random`: new
    connections through a Service) or one per conversation (`sticky`: a keep-alive client)."""
    ttfts: list[float] = []
    errors: list[str] = []
    rng = random.Random(seed)
    sem = asyncio.Semaphore(concurrency)
    pool = concurrency * (len(routers) + 1)  # keep-alive connections to every replica
    limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        async def one(cid: int) -> None:
            route = random.Random(f"route/{seed}/{cid}")
            sticky = route.choice(routers)
            pick = (lambda: sticky) if client_mode == "sticky" else (lambda: route.choice(routers))
            async with sem:  # (FIFO: conversation k is the k-th in, so rng's draws are reproducible)
                await conversation(client, pick, cid, turns, ttfts, random.Random(rng.random()),
                                   first_messages(kind, cid, doc_words), errors)

        started = time.perf_counter()
        await asyncio.gather(*(one(c) for c in range(conversations)))
        return ttfts, errors, time.perf_counter() - started


def run_one(r: Run, backends: Backends, workdir: Path, source: str | None, exe: str | None, seed: int, kind: str,
            doc_words: int) -> Run | None:
    """One row: backends reset, fresh routers, the workload; None when the routers do not start."""
    backends.reset(r.cache_blocks)
    try:
        procs, urls = start_routers(r.strategy, backends.urls, r.replicas, workdir, source, exe, backends.engine)
    except RouterFailed as e:
        print(f"{cell_label(r)}  {r.strategy:<24} skipped: the router {e}", flush=True)
        return None
    try:
        ttfts, errors, elapsed = asyncio.run(workload(urls, r.client, r.conversations, r.turns, r.concurrency,
                                                      seed, kind, doc_words))
    finally:
        stop_all(procs)
    done = [t for t in ttfts if t == t]  # (a stream without a token has no TTFT)
    if done:
        r.ttft_p50_ms, r.ttft_p90_ms = pct(done, 0.5) * 1000, pct(done, 0.9) * 1000
        r.ttft_mean_ms = sum(done) / len(done) * 1000
    r.req_per_s, r.requests, r.errors, r.seconds = len(ttfts) / elapsed, len(ttfts), len(errors), elapsed
    r.cache_hit = backends.hit_rate()
    print(f"{cell_label(r)}  {r.strategy:<24} {r.ttft_p50_ms:7.1f} {r.ttft_p90_ms:7.1f} "
          f"{r.ttft_mean_ms:7.1f} {r.req_per_s:7.1f} {r.cache_hit:7.1%}"
          + (f"  {len(errors)} errors, the first: {errors[0]}" if errors else ""), flush=True)
    return r


HEADER = f"{'be':>3} {'turns':>5} {'cache':<6} {'rep':>3}  {'strategy':<24} {'p50 ms':>7} {'p90 ms':>7} " \
         f"{'mean ms':>7} {'req/s':>7} {'hits':>7}"


def cell_label(r: Run) -> str:
    return f"{r.backends:>3} {r.turns:>5} {r.cache:<6} {r.replicas:>3}"


def expand(strategies: str, baseline: Path | None) -> list[str]:
    rows = strategies.split(",")
    if baseline and not any(s.startswith("baseline:") for s in rows):  # (named: as they are, in order)
        rows = [row for s in rows for row in ([s] if ":" in s else [s, f"baseline:{s}"])]
    return rows


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def single(args: argparse.Namespace, strategies: list[str], exe: str | None, tmp: Path,
           source: str | None) -> list[Run]:
    """The workload the flags give, strategy by strategy."""
    prefill = args.prefill or "parallel"
    doc_words = args.document_words or 1200
    prefill_ms = args.prefill_ms or 0.5
    print(f"workload {args.workload}: {args.backends} {args.engine} backends, {args.conversations} conversations x "
          f"{args.turns} turns, {args.concurrency} at a time, prefill {prefill_ms} ms per uncached token "
          f"({prefill}), {args.cache_blocks} cache blocks of 16 tokens per backend"
          + (f", KV caches of {args.kv_blocks} blocks" if args.kv_blocks else "") + ", router replicas: "
          f"{args.router_replicas} (client: {args.client})")
    print(HEADER)
    backends = Backends(args.backends, prefill_ms, args.cache_blocks, prefill == "shared", args.engine, args.kv_blocks)
    results = []
    try:
        for strategy in strategies:
            if strategy.startswith("vllm-router:") and not exe:
                print(f"{strategy:<24} skipped: vllm-router is not installed (see bench/router_overhead.py)")
                continue
            r = run_one(Run(args.backends, args.turns, args.conversations, args.concurrency, str(args.cache_blocks),
                        args.cache_blocks, args.router_replicas, args.client, prefill, strategy),
                    backends, tmp, source, exe, args.seed, args.workload, doc_words)
            results += [r] if r else []
    finally:
        backends.stop()
    p90 = {r.strategy: r.ttft_p90_ms for r in results}
    ours = p90.get("prefix-cache")
    if ours:
        for name, theirs in p90.items():
            if name != "prefix-cache":
                print(f"prefix-cache TTFT p90 is {theirs / ours:.1f}x below {name}'s")
    return results


def matrix(args: argparse.Namespace, strategies: list[str], exe: str | None, tmp: Path,
           source: str | None) -> list[Run]:
    """Every cell of the matrix, the backends started once per backend count."""
    prefill = args.prefill or "shared"
    doc_words = args.document_words or 600
    prefill_ms = args.prefill_ms or 0.25
    if not exe:
        print("vllm-router is not installed (see bench/router_overhead.py): its rows are skipped")
        strategies = [s for s in strategies if not s.startswith("vllm-router:")]
    dims = [ints(args.matrix_backends), ints(args.matrix_turns), args.matrix_cache.split(","),
            ints(args.matrix_replicas)]
    total = math.prod(len(d) for d in dims) * len(strategies)
    print(f"matrix: backends {dims[0]} x turns {dims[1]} x cache {dims[2]} x router replicas {dims[3]} x "
          f"{len(strategies)} strategies = {total} runs; workload {args.workload} ({doc_words}-word documents), "
          f"{CONCURRENCY_PER_BACKEND} conversations at a time per backend, prefill {prefill_ms} ms per "
          f"uncached token ({prefill}), client {args.client}, seed {args.seed}")
    results: list[Run] = []
    started, i = time.monotonic(), 0
    for n in dims[0]:
        backends = Backends(n, prefill_ms, 1, prefill == "shared", args.engine, args.kv_blocks)
        try:
            for turns in dims[1]:
                concurrency = CONCURRENCY_PER_BACKEND * n
                # about --matrix-requests requests, in whole rounds of `concurrency` conversations (at
                # least one): a last round of a few would run on its own, at a concurrency of its own
                conversations = concurrency * max(1, round(args.matrix_requests / turns / concurrency))
                blocks = conversation_blocks(args.workload, turns, doc_words)
                sizes = {"fits": round(2 * conversations / n * blocks), "tight": round(0.5 * concurrency / n * blocks)}
                print(f"\n{n} backends, {turns} turns: {conversations} conversations ({conversations * turns} "
                      f"requests), {concurrency} at a time; a conversation's last prompt fills {blocks} blocks; "
                      f"cache per backend: " + ", ".join(f"{c} {sizes[c]} blocks" for c in dims[2]))
                print(HEADER)
                for cache, replicas in itertools.product(dims[2], dims[3]):
                    for strategy in strategies:
                        i += 1
                        elapsed = time.monotonic() - started
                        eta = f", about {elapsed / (i - 1) * (total - i + 1) / 60:.0f} min left" if i > 1 else ""
                        print(f"[{i}/{total}, {elapsed / 60:.1f} min{eta}] {n} backends, {turns} turns, {cache}, "
                              f"router replicas: {replicas}: {strategy}", file=sys.stderr, flush=True)
                        r = run_one(Run(n, turns, conversations, concurrency, cache, sizes[cache], replicas,
                                        args.client, prefill, strategy),
                                    backends, tmp, source, exe, args.seed, args.workload, doc_words)
                        results += [r] if r else []
        finally:
            backends.stop()
    print(f"\n{total} runs in {(time.monotonic() - started) / 60:.1f} min")
    summary(results)
    return results


def medians(runs: list[list[Run]]) -> list[Run]:
    """One Run per row (cell, replicas, strategy) with the median of each figure over the
    repetitions given (one list of runs per repetition); errors are summed."""
    rows: dict[tuple, list[Run]] = {}
    for rep in runs:
        for r in rep:
            rows.setdefault((r.backends, r.turns, r.cache, r.replicas, r.strategy), []).append(r)
    out = []
    for same in rows.values():
        def med(field: str) -> float:
            return statistics.median(getattr(r, field) for r in same)
        out.append(replace(same[0], ttft_p50_ms=med("ttft_p50_ms"), ttft_p90_ms=med("ttft_p90_ms"),
                           ttft_mean_ms=med("ttft_mean_ms"), req_per_s=med("req_per_s"), cache_hit=med("cache_hit"),
                           errors=sum(r.errors for r in same)))
    return out


def summary(results: list[Run]) -> None:
    """Per cell and replica count: prefix-cache against its own 1-replica figures, and whether it
    is ahead of every other strategy there (a lower TTFT p90 and more requests per second)."""
    cells: dict[tuple, dict[int, dict[str, Run]]] = {}
    for r in results:
        cells.setdefault((r.backends, r.turns, r.cache), {}).setdefault(r.replicas, {})[r.strategy] = r
    if not any("prefix-cache" in by for reps in cells.values() for by in reps.values()):
        return
    print("\nprefix-cache by router replicas (change against its own 1-replica figures; ahead: a lower TTFT p90 "
          "and more req/s than every other strategy with as many replicas)")
    print(f"{'be':>3} {'turns':>5} {'cache':<6} {'rep':>3}  {'p90 ms':>7} {'change':>7} {'req/s':>7} {'change':>7}  "
          f"{'ahead':<5}  best other by p90")
    for (n, turns, cache), reps in cells.items():
        one = reps.get(1, {}).get("prefix-cache")
        for replicas, by in sorted(reps.items()):
            ours = by.get("prefix-cache")
            if not ours:
                continue

            def change(field: str) -> str:  # against the 1-replica run, blank for that run itself
                return f"{getattr(ours, field) / getattr(one, field) - 1:+7.1%}" if one and one is not ours else " " * 7

            others = [r for s, r in by.items() if s != "prefix-cache"]
            best = min(others, key=lambda r: r.ttft_p90_ms, default=None)
            ahead = "-" if not others else "yes" if all(
                ours.ttft_p90_ms < r.ttft_p90_ms and ours.req_per_s > r.req_per_s for r in others) else "no"
            failed = sum(r.errors for r in by.values())  # a row with failed turns is not comparable
            print(f"{n:>3} {turns:>5} {cache:<6} {replicas:>3}  {ours.ttft_p90_ms:7.1f} {change('ttft_p90_ms')} "
                  f"{ours.req_per_s:7.1f} {change('req_per_s')}  {ahead:<5}  "
                  + (f"{best.strategy} ({best.ttft_p90_ms:.1f} ms, {best.req_per_s:.1f} req/s)" if best else "-")
                  + (f"  ({failed} failed turns in this cell)" if failed else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=("documents", "system-prompts"), default="documents")
    ap.add_argument("--backends", type=int, default=4)
    ap.add_argument("--engine", choices=tuple(ENGINE_ARGV), default="tgi",
                    help="the engine the fakes speak (vllm and sglang report KV-cache use)")
    ap.add_argument("--kv-blocks", type=int, help="each fake's KV cache, in blocks of 16 tokens (the fakes' "
                                                  "default: 2048); requests wait when it is full")
    ap.add_argument("--conversations", type=int, default=48)
    ap.add_argument("--turns", type=int, default=12)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--document-words", type=int, help="the documents workload's context (1200; 600 in a matrix)")
    ap.add_argument("--prefill-ms", type=float, help="per uncached prompt token (0.5; 0.25 in a matrix)")
    ap.add_argument("--prefill", choices=("parallel", "shared"),
                    help="each prefill on its own, or one engine's shared by its prefills "
                         "(parallel; shared in a matrix)")
    ap.add_argument("--cache-blocks", type=int, default=3072, help="per backend, of 16 tokens")
    ap.add_argument("--router-replicas", type=int, default=1, help="routers side by side, each with its own state")
    ap.add_argument("--client", choices=("random", "sticky"), default="random",
                    help="a replica per request (a Service's new connections), or one per conversation (keep-alive)")
    ap.add_argument("--strategies", help=f"ours, and vllm-router:<policy> (skipped when vllm-router is not "
                                         f"installed; a strategy the router lacks is skipped too); "
                                         f"default {STRATEGIES}")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--baseline", type=Path, help="another checkout (git worktree add ...): each of our strategies "
                                                  "runs with its router too, as a row 'baseline:<strategy>'")
    ap.add_argument("--json", type=Path, help="write every run's figures here (a list of objects)")
    m = ap.add_argument_group("matrix")
    m.add_argument("--matrix", action="store_true", help="every combination of the dimensions below")
    m.add_argument("--matrix-backends", default="4,8")
    m.add_argument("--matrix-turns", default="3,12", help="turns per conversation")
    m.add_argument("--matrix-cache", default="fits,tight",
                   help="fits: 2x what a backend's share of the conversations needs; "
                        "tight: 0.5x what its share of the active ones needs")
    m.add_argument("--matrix-replicas", default="1,2,4", help="router replicas")
    m.add_argument("--matrix-requests", type=int, default=200,
                   help="requests a run, about: this / turns conversations, in whole rounds of as many as "
                        "run at once")
    ap.add_argument("--summary-of", type=Path, nargs="+", metavar="JSON",
                    help="print the matrix summary of runs written by --json (several files: the median of "
                         "each row's figures over them), and run nothing")
    args = ap.parse_args()
    if args.summary_of:
        summary(medians([[Run(**{k: math.nan if v is None else v for k, v in row.items()})
                          for row in json.loads(path.read_text())] for path in args.summary_of]))
        return
    strategies = expand(args.strategies or STRATEGIES, args.baseline)
    exe = vllm_router()
    with tempfile.TemporaryDirectory() as tmp:
        source = source_path(args.baseline, Path(tmp)) if args.baseline else None
        results = (matrix if args.matrix else single)(args, strategies, exe, Path(tmp), source)
    if args.json:
        rows = [{k: None if v != v else v for k, v in asdict(r).items()} for r in results]  # (NaN: null)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
        print(f"wrote {len(results)} runs to {args.json}")


if __name__ == "__main__":
    main()
