"""Benchmark: tokens per second through `modelship router` against the same llama-server
reached directly, side by side in one run.

    .venv/bin/python bench/router_tokens.py [--rounds 5] [--tokens 128] [-- ROUTER-ARGS...]

One real `llama-server` (the test bed's build) serves SmolLM2 on 127.0.0.1; the router runs
in front of it with a static endpoint. Each round streams one completion of `--tokens`
tokens (temperature 0, `ignore_eos`) directly, then the same through the router. Printed:
tokens per second (median of the rounds; from the first token to the last, and for the
whole request) for both, and the ratio. The goal is >= 98% of direct.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from loopback import HOST, free_port, wait

EXTRA = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []



def stream(base: str, tokens: int) -> tuple[int, float, float]:
    """(chunks, seconds from first to last token, seconds for the whole request)."""
    started = time.perf_counter()
    first = last = None
    n = 0
    with httpx.stream("POST", f"{base}/v1/completions", timeout=300, json={
            "model": "smollm2", "prompt": "Write a long story about a lighthouse keeper.", "max_tokens": tokens,
            "temperature": 0, "ignore_eos": True, "stream": True}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data:") and "[DONE]" not in line:
                now = time.perf_counter()
                first = first or now
                last = now
                n += 1
    return n, (last - first) if first and last else float("nan"), time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="llama-server's -t")
    args = ap.parse_args(sys.argv[1:sys.argv.index("--")] if "--" in sys.argv else None)
    from modelship_testbed import binaries

    port = free_port()
    server = subprocess.Popen([str(binaries.path("llama-server")), "-m", str(binaries.smollm2_gguf()),
                               "--host", HOST, "--port", str(port), "-c", "1024", "-t", str(args.threads),
                               "--parallel", "1", "--alias", "smollm2", "--metrics"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    direct = f"http://{HOST}:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "static.yaml"
        config.write_text(yaml.safe_dump({"models": [{"name": "smollm2", "engine": "llamacpp",
                                                      "endpoints": [direct]}]}))
        rport = free_port()
        router = subprocess.Popen([str(Path(sys.executable).with_name("modelship")), "router", "--static",
                                   str(config), "--host", HOST, "--port", str(rport), *EXTRA],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        routed = f"http://{HOST}:{rport}"
        try:
            wait(f"{direct}/health", timeout=120)  # the model loads
            wait(f"{routed}/health")
            stream(direct, 8)  # warm up
            runs: dict[str, list[tuple[int, float, float]]] = {"direct": [], "router": []}
            for i in range(args.rounds):  # the order alternates, so that neither always goes first
                for name in (("direct", "router") if i % 2 == 0 else ("router", "direct")):
                    runs[name].append(stream(direct if name == "direct" else routed, args.tokens))
        finally:
            router.terminate()
            server.terminate()
            router.wait(10)
            server.wait(10)
    rate = {k: statistics.median((n - 1) / gen for n, gen, _ in v) for k, v in runs.items()}
    whole = {k: statistics.median(n / total for n, _, total in v) for k, v in runs.items()}
    print(f"llama-server, SmolLM2 Q4_1, {args.tokens} tokens x {args.rounds} rounds, -t {args.threads}")
    print(f"{'':<8} {'tokens/s (decode)':>18} {'tokens/s (request)':>19}")
    for k in ("direct", "router"):
        print(f"{k:<8} {rate[k]:18.1f} {whole[k]:19.1f}")
    print(f"router/direct: decode {rate['router'] / rate['direct']:.1%}, request {whole['router'] / whole['direct']:.1%}")


if __name__ == "__main__":
    main()
