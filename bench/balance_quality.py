"""Benchmark 3: balancing quality on a shared-prefix, multi-turn workload, strategy by strategy,
against vllm-router's cache_aware policy.

    .venv/bin/python bench/balance_quality.py [--workload documents|system-prompts] [--backends 4] [--baseline TREE]

Four (by default) TGI-protocol fakes on 127.0.0.1, each with a simulated prefix cache of
`--cache-blocks` blocks of 16 tokens: a prompt's uncached tokens cost `--prefill-ms` each
before the first token, cached ones nothing. Conversations grow turn by turn (each turn sends
the whole conversation again, as chat clients do), `--concurrency` of them at a time. Two
workloads:
- `documents` (the default): one shared system prompt, then a long document of the
  conversation's own (a RAG context, an agent's tool output), then the turns. Only an
  endpoint that served this conversation before has its document cached, and the caches
  cannot hold every conversation four times over.
- `system-prompts`: four long system prompts shared by all conversations, short turns. Every
  endpoint soon caches all four, so round robin hits most of the time too.
For each strategy the backends start afresh (empty caches), `modelship router --static`
runs in front of them, and every turn is a streamed chat completion; time to first token
(TTFT) is measured at the client. Printed side by side: TTFT p50/p90, requests per second,
and the backends' own prefix-cache hit rate (`tgi_prefix_cache_hit_tokens` over
`tgi_request_input_tokens`).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from loopback import HOST, free_port, modelship_router, pct, source_path, start_vllm_router, vllm_router, wait

SYSTEM_PROMPTS = [
    " ".join(f"rule {i}.{j}: answer with care about topic {i} and cite section {j}." for j in range(60))
    for i in range(4)
]
WORDS = ("alpha beta gamma delta river stone cloud paper engine signal harbor lantern meadow copper "
         "violet orbit canyon ember falcon glacier").split()


def document(cid: int, words: int) -> str:
    rng = random.Random(cid * 7919)
    return f"Document {cid}: " + " ".join(rng.choice(WORDS) for _ in range(words))


def first_messages(workload: str, cid: int, doc_words: int) -> list[dict]:
    if workload == "system-prompts":
        return [{"role": "system", "content": SYSTEM_PROMPTS[cid % len(SYSTEM_PROMPTS)]}]
    return [{"role": "system", "content": SYSTEM_PROMPTS[0][:600]},
            {"role": "user", "content": "Read this and answer my questions.\n" + document(cid, doc_words)},
            {"role": "assistant", "content": "I have read it."}]


def start_backends(n: int, prefill_ms: float, cache_blocks: int) -> tuple[list[subprocess.Popen], list[str]]:
    procs, urls = [], []
    for _ in range(n):
        port = free_port()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "modelship_testbed.tgi_fake", "--model-id", "org/bench", "--hostname", HOST,
             "--port", str(port), "--fake-load-seconds", "0", "--fake-token-delay-ms", "2",
             "--fake-prefill-ms-per-token", str(prefill_ms), "--fake-cache-blocks", str(cache_blocks),
             "--max-input-tokens", "16000", "--max-total-tokens", "16384", "--fake-max-batch-size", "8"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        urls.append(f"http://{HOST}:{port}")
    for u in urls:
        wait(f"{u}/health")
    return procs, urls


async def conversation(client: httpx.AsyncClient, url: str, cid: int, turns: int, ttfts: list[float],
                       rng: random.Random, first: list[dict]) -> None:
    messages = list(first)
    for turn in range(turns):
        messages.append({"role": "user", "content": f"conversation {cid} turn {turn}: "
                                                    + " ".join(rng.choice(["why", "how", "what", "more", "explain"])
                                                               for _ in range(20))})
        started = time.perf_counter()
        first, text = None, []
        async with client.stream("POST", f"{url}/v1/chat/completions",
                                 json={"model": "bench", "messages": messages, "max_tokens": 16,
                                       "stream": True}) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if line.startswith("data:") and "[DONE]" not in line:
                    if first is None:
                        first = time.perf_counter() - started
                    text.append(line)
        ttfts.append(first if first is not None else float("nan"))
        messages.append({"role": "assistant", "content": f"answer {cid}.{turn} " * 8})


def cache_hit_rate(urls: list[str]) -> float:
    hit = total = 0.0
    for u in urls:
        for line in httpx.get(f"{u}/metrics").text.splitlines():
            if line.startswith("tgi_prefix_cache_hit_tokens "):
                hit += float(line.split()[-1])
            elif line.startswith("tgi_request_input_tokens "):
                total += float(line.split()[-1])
    return hit / total if total else 0.0


async def workload(url: str, conversations: int, turns: int, concurrency: int, seed: int, kind: str,
                   doc_words: int) -> tuple[list[float], float]:
    ttfts: list[float] = []
    rng = random.Random(seed)
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        async def one(cid: int) -> None:
            async with sem:
                await conversation(client, url, cid, turns, ttfts, random.Random(rng.random()),
                                   first_messages(kind, cid, doc_words))

        started = time.perf_counter()
        await asyncio.gather(*(one(c) for c in range(conversations)))
        return ttfts, time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", choices=("documents", "system-prompts"), default="documents")
    ap.add_argument("--backends", type=int, default=4)
    ap.add_argument("--conversations", type=int, default=48)
    ap.add_argument("--turns", type=int, default=12)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--document-words", type=int, default=1200, help="the documents workload's context")
    ap.add_argument("--prefill-ms", type=float, default=0.5, help="per uncached prompt token")
    ap.add_argument("--cache-blocks", type=int, default=3072, help="per backend, of 16 tokens")
    ap.add_argument("--strategies", default="round-robin,least-load,prefix-cache,vllm-router:cache_aware",
                    help="ours, and vllm-router:<policy> (skipped when vllm-router is not installed)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--baseline", type=Path, help="another checkout (git worktree add ...): each of our strategies "
                                                  "runs with its router too, as a row 'baseline:<strategy>'")
    args = ap.parse_args()
    strategies = args.strategies.split(",")
    if args.baseline and not any(s.startswith("baseline:") for s in strategies):  # (named: as they are, in order)
        strategies = [row for s in strategies for row in ([s] if ":" in s else [s, f"baseline:{s}"])]
    print(f"workload {args.workload}: {args.backends} backends, {args.conversations} conversations x "
          f"{args.turns} turns, {args.concurrency} at a time, prefill {args.prefill_ms} ms per uncached token, "
          f"{args.cache_blocks} cache blocks of 16 tokens per backend")
    print(f"{'strategy':<24} {'TTFT p50':>10} {'TTFT p90':>10} {'req/s':>8} {'cache hits':>11}")
    exe = vllm_router()
    rows: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        source = source_path(args.baseline, Path(tmp)) if args.baseline else None
        for strategy in strategies:
            if strategy.startswith("vllm-router:") and not exe:
                print(f"{strategy:<24} skipped: vllm-router is not installed (see bench/router_overhead.py)")
                continue
            procs, urls = start_backends(args.backends, args.prefill_ms, args.cache_blocks)
            if strategy.startswith("vllm-router:"):
                router, url = start_vllm_router(exe, urls, strategy.split(":", 1)[1])
            elif strategy.startswith("baseline:"):
                router, url = modelship_router(urls, strategy.split(":", 1)[1], Path(tmp), engine="tgi",
                                               scrape_interval=0.5, source=source)
            else:
                router, url = modelship_router(urls, strategy, Path(tmp), engine="tgi", scrape_interval=0.5)
            try:
                ttfts, elapsed = asyncio.run(workload(url, args.conversations, args.turns, args.concurrency,
                                                      args.seed, args.workload, args.document_words))
                rows[strategy] = pct(ttfts, 0.9)
                print(f"{strategy:<24} {pct(ttfts, 0.5) * 1000:8.1f}ms {pct(ttfts, 0.9) * 1000:8.1f}ms "
                      f"{len(ttfts) / elapsed:8.1f} {cache_hit_rate(urls):10.1%}", flush=True)
            finally:
                for p in [router, *procs]:
                    p.terminate()
                for p in [router, *procs]:
                    p.wait(10)
    ours = rows.get("prefix-cache")
    if ours:
        for name, p90 in rows.items():
            if name != "prefix-cache":
                print(f"prefix-cache TTFT p90 is {p90 / ours:.1f}x below {name}'s")


if __name__ == "__main__":
    main()
