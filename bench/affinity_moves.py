"""Benchmark 5: how many conversations change engine when engines or router replicas come and go.

    .venv/bin/python bench/affinity_moves.py [--conversations 20000] [--sizes 2,4,8,16,32]

`prefix-cache` gives each conversation a home by rendezvous hashing of its opener over the
model's endpoints (operator/modelship/router/balance.py). For each endpoint count N, with
no load (so each conversation goes to its home), it prints the share of conversations whose
engine changes when one engine leaves (N -> N-1: the ideal is 1/N, only its own) or joins
(N -> N+1: the ideal is 1/(N+1), only those the newcomer takes), next to `hash mod N`, the
naive alternative; and when a router replica is replaced (a rollout): a new process, with its
own hash salt and nothing learned, must agree with the old one on every home (0 moves).
Pure computation: no network.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from modelship.router.balance import Endpoint, PrefixAffinity, stable_hash
from modelship.router.exchange import prompt_text


def opener(cid: int) -> dict:
    return {"messages": [{"role": "system", "content": "You answer questions about documents."},
                         {"role": "user", "content": f"Document {cid}: the text of the document."}]}


def homes(n_endpoints: int, conversations: int, extra: str = "") -> list[str]:
    eps = [Endpoint(f"http://10.0.0.{i}:8080") for i in range(n_endpoints)] + \
          ([Endpoint(extra)] if extra else [])
    pa = PrefixAffinity()
    return [pa.pick(pa.key(*prompt_text("chat", opener(c))), eps).url for c in range(conversations)]


def moved(a: list[str], b: list[str]) -> float:
    return sum(x != y for x, y in zip(a, b)) / len(a)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--conversations", type=int, default=20000)
    ap.add_argument("--sizes", default="2,4,8,16,32")
    args = ap.parse_args()
    c = args.conversations
    print(f"{c} conversations; share whose engine changes (ideal: only those the change must move)")
    print(f"{'endpoints':>10} {'one leaves':>11} {'ideal':>7} {'hash mod N':>11} {'one joins':>10} {'ideal':>7} "
          f"{'hash mod N':>11}")
    keys = [stable_hash(prompt_text("chat", opener(i))[0]) for i in range(c)]
    for n in (int(s) for s in args.sizes.split(",")):
        base, fewer = homes(n, c), homes(n - 1, c)
        more = homes(n, c, extra="http://10.0.1.1:8080")
        mod_leave = sum(k % n != k % (n - 1) for k in keys) / c
        mod_join = sum(k % n != k % (n + 1) for k in keys) / c
        print(f"{n:>10} {moved(base, fewer):>10.1%} {1 / n:>7.1%} {mod_leave:>10.1%} {moved(base, more):>9.1%} "
              f"{1 / (n + 1):>7.1%} {mod_join:>10.1%}")
    # A router rollout: another process (another hash salt, an empty index) computes the homes.
    code = ("import json, sys; sys.path[:0] = [sys.argv[1]]; import affinity_moves as m; "
            f"print(json.dumps(m.homes(8, {min(c, 5000)})))")
    other = json.loads(subprocess.run([sys.executable, "-c", code, os.path.dirname(os.path.abspath(__file__))],
                                      capture_output=True, text=True, check=True,
                                      env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout)
    print(f"a router replica replaced (8 endpoints): {moved(homes(8, min(c, 5000)), other):.1%} of "
          f"{min(c, 5000)} conversations change engine (ideal 0%)")


if __name__ == "__main__":
    main()
