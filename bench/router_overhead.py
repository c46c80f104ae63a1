"""Benchmark 1: what the router adds to a small, non-streamed request, side by side with
the same backends reached directly, through nginx (the floor: a C reverse proxy) and through
vllm-router (the peer: a Rust router for LLM engines).

    .venv/bin/python bench/router_overhead.py [--rounds 3] [--seconds 4] [--backends 2] [--baseline TREE]

Every proxy runs pinned to core 0 (one worker, one process); the backends (nginx answering a
fixed chat completion, so that the backend costs next to nothing) and the load generator
(wrk, one thread) share core 1. Each round measures every proxy in turn: latency with one
connection (one request at a time: p50 and p99, and the p50 added to direct), then
throughput with `--connections` connections. Rounds alternate the proxies so that a noisy
machine hits them alike; medians are printed.

`--baseline TREE` also measures the router of another checkout of this repository (for
example `git worktree add /tmp/base <commit>`), in the same rounds, as a row of its own: a
change to the hot path is shown side by side with the code before it.

Needs Debian `nginx` and `wrk`; vllm-router from PyPI
(`python3 -m venv ~/.cache/modelship/bench-venv && ~/.cache/modelship/bench-venv/bin/pip install vllm-router`),
skipped with a line when absent.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from loopback import Nginx, free_port, modelship_router, source_path, start_vllm_router, vllm_router, wait, wrk

ANSWER = ('{"id":"chatcmpl-1","object":"chat.completion","created":0,"model":"bench","choices":[{"index":0,'
          '"message":{"role":"assistant","content":"The capital of France is Paris."},"finish_reason":"stop"}],'
          '"usage":{"prompt_tokens":14,"completion_tokens":8,"total_tokens":22}}')
REQUEST = ('{"model":"bench","messages":[{"role":"system","content":"You are a helpful assistant."},'
           '{"role":"user","content":"What is the capital of France?"}],"max_tokens":16}')
PROXY_CORE, LOAD_CORE = 0, 1


class Proxy:
    def __init__(self, name: str, url: str, stop):
        self.name, self.url, self.stop = name, url, stop


def start_modelship(backends: list[str], strategy: str, workdir: Path, baseline: Path | None = None) -> Proxy:
    source = source_path(baseline, workdir) if baseline else None
    proc, url = modelship_router(backends, strategy, workdir, PROXY_CORE, source=source)
    name = f"modelship@baseline ({strategy})" if baseline else f"modelship ({strategy})"
    return Proxy(name, url, lambda: (proc.terminate(), proc.wait(10)))


def start_peer(exe: str, backends: list[str]) -> Proxy:
    proc, url = start_vllm_router(exe, backends, "power_of_two", "--max-concurrent-requests", "4096",
                                  core=PROXY_CORE)
    return Proxy("vllm-router (power_of_two)", url, lambda: (proc.terminate(), proc.wait(10)))


def start_nginx(backends: list[str]) -> Proxy:
    n = Nginx(PROXY_CORE, free_port(), upstreams=backends)
    wait(f"{n.url}/health")
    return Proxy("nginx (proxy_pass)", n.url, n.stop)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--backends", type=int, default=2)
    ap.add_argument("--strategy", default="least-load", help="the modelship router's strategy")
    ap.add_argument("--baseline", type=Path, help="another checkout whose router is measured too")
    args = ap.parse_args()
    backends = [Nginx(LOAD_CORE, free_port(), body=ANSWER) for _ in range(args.backends)]
    urls = [b.url for b in backends]
    for u in urls:
        wait(f"{u}/health")
    proxies: list[Proxy] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            proxies.append(Proxy("direct (no proxy)", urls[0], lambda: None))
            proxies.append(start_nginx(urls))
            exe = vllm_router()
            if exe:
                proxies.append(start_peer(exe, urls))
            else:
                print("vllm-router is not installed: skipped (see this file's docstring)")
            proxies.append(start_modelship(urls, args.strategy, Path(tmp)))
            if args.baseline:
                proxies.append(start_modelship(urls, args.strategy, Path(tmp), args.baseline))
            results: dict[str, list[dict[str, float]]] = {p.name: [] for p in proxies}
            for r in range(args.rounds):
                order = proxies if r % 2 == 0 else list(reversed(proxies))
                for p in order:
                    one = wrk(f"{p.url}/v1/chat/completions", REQUEST, 1, args.seconds, LOAD_CORE)
                    many = wrk(f"{p.url}/v1/chat/completions", REQUEST, args.connections, args.seconds, LOAD_CORE)
                    results[p.name].append({"p50": one["p50"], "p99": one["p99"], "rps": many["rps"]})
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        finally:
            for p in proxies:
                p.stop()
            for b in backends:
                b.stop()
    med = {name: {k: statistics.median(x[k] for x in rs) for k in ("p50", "p99", "rps")}
           for name, rs in results.items()}
    direct = med["direct (no proxy)"]["p50"]
    print(f"\n{args.backends} nginx backends; proxies pinned to one core; wrk: 1 connection for latency, "
          f"{args.connections} for throughput; medians of {args.rounds} rounds of {args.seconds:g} s")
    width = max(len(name) for name in med) + 1
    print(f"{'':<{width}} {'p50':>9} {'p99':>9} {'added p50':>10} {'req/s':>9}")
    for name, m in med.items():
        added = "" if name.startswith("direct") else f"{(m['p50'] - direct) * 1e6:7.0f} us"
        print(f"{name:<{width}} {m['p50'] * 1e6:6.0f} us {m['p99'] * 1e6:6.0f} us {added:>10} {m['rps']:9.0f}")
    for ours_name, ours in med.items():
        if not ours_name.startswith("modelship"):
            continue
        if ours_name.startswith("modelship@baseline"):
            now = med[f"modelship ({args.strategy})"]
            print(f"modelship vs its baseline: added p50 {(now['p50'] - direct) / (ours['p50'] - direct):.2f}x, "
                  f"throughput {now['rps'] / ours['rps']:.0%}")
            continue
        added_ours = ours["p50"] - direct
        for name, m in med.items():
            if name.startswith(("nginx", "vllm")):
                added = m["p50"] - direct
                print(f"{ours_name} vs {name}: added p50 {added_ours / added:.2f}x, "
                      f"throughput {ours['rps'] / m['rps']:.0%}")


if __name__ == "__main__":
    main()
