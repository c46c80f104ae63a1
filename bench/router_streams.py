"""Benchmark 2: streaming through the router. Side by side with the backend reached
directly, nginx (the floor) and vllm-router (the peer):

1. time to first byte of a streamed answer (p50/p99 over `--requests` sequential requests,
   a new connection each), and what each proxy adds to it;
2. how many concurrent streams one proxy process holds, and at what memory: `--streams`
   clients open streams (in batches), each receiving an event every `--every` seconds for
   `--hold` seconds; the proxy's resident memory (its whole process tree) is sampled
   throughout, and every stream must end with `data: [DONE]`.

    .venv/bin/python bench/router_streams.py [--streams 9900] [--requests 300]

Proxies run pinned to core 0; the backend (bench/sse_backend.py, raw asyncio) and the
clients share core 1. A proxied stream takes two sockets in the proxy, so the number of
streams is capped by the open-file limit (`ulimit -Hn`) at about half of it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvloop

from loopback import (CORES, HOST, Nginx, free_port, modelship_router, pct, pinned, start_vllm_router, vllm_router,
                      wait)

PROXY_CORE, LOAD_CORE = 0, 1 % CORES
REQUEST = (b'{"model":"bench","stream":true,"max_tokens":64,'
           b'"messages":[{"role":"user","content":"Tell me a story."}]}')
BENCH = Path(__file__).resolve().parent
HOLD_EVENTS = [0]  # events a held stream must receive (set from the arguments)


def rss_tree(pid: int) -> int:
    """Resident bytes of a process and its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


class Proxy:
    def __init__(self, name: str, url: str, proc: subprocess.Popen | None, stop=None):
        self.name, self.url, self.proc = name, url, proc
        self.stop = stop or (lambda: proc and (proc.terminate(), proc.wait(10)))


def start_modelship(backend: str, workdir: Path) -> Proxy:
    proc, url = modelship_router([backend], "least-load", workdir, PROXY_CORE)
    return Proxy("modelship", url, proc)


def start_peer(exe: str, backend: str, streams: int) -> Proxy:
    proc, url = start_vllm_router(exe, [backend], "round_robin",  # power_of_two wants two workers
                                  "--max-concurrent-requests", str(streams + 100), "--queue-size", "0",
                                  "--request-timeout-secs", "600", core=PROXY_CORE)
    return Proxy("vllm-router", url, proc)


def start_nginx(backend: str) -> Proxy:
    n = Nginx(PROXY_CORE, free_port(), upstreams=[backend])
    wait(f"{n.url}/health")
    return Proxy("nginx", n.url, n.proc, n.stop)


async def stream(url: str, hold: bool) -> tuple[float, int]:
    """One streamed request: (seconds to the first event, events received). With hold=False
    the connection is closed after the first event (the router then cancels upstream)."""
    host, port = url.removeprefix("http://").split(":")
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(REQUEST), REQUEST))
        tail, first, events = b"", None, 0
        while True:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("the stream ended without data: [DONE]")
            joined = tail + data  # a marker may be cut between two reads
            if first is None and b"data:" in joined[1:]:
                first = time.perf_counter() - started
                if not hold:
                    return first, 1
            events += joined[1:].count(b"data:")  # 4 bytes of tail: a marker is never counted twice
            if b"[DONE]" in joined:
                return first, events - 1  # [DONE] is not an event
            tail = joined[-5:]
    finally:
        writer.close()


async def ttfb(url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        first, _ = await stream(url, hold=False)
        out.append(first)
    return out


async def hold_many(proxy: Proxy, n: int, batch: int) -> dict:
    """n streams at once through the proxy; its memory is sampled all along."""
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(rss_tree(proxy.proc.pid))
            time.sleep(0.25)

    idle = rss_tree(proxy.proc.pid)
    threading.Thread(target=sample, daemon=True).start()
    tasks = []
    started = time.perf_counter()
    try:
        for i in range(0, n, batch):
            tasks += [asyncio.create_task(stream(proxy.url, hold=True)) for _ in range(min(batch, n - i))]
            await asyncio.sleep(0.2)
        opened = time.perf_counter() - started
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        done.set()
    least = int(HOLD_EVENTS[0])  # every stream must get at least its first event and hold/every more
    failed = [r for r in results if isinstance(r, BaseException) or r[1] < least]
    ok = [r for r in results if not isinstance(r, BaseException) and r[1] >= least]
    return {"idle": idle, "peak": max(samples, default=idle), "failed": len(failed), "ok": len(ok),
            "first": statistics.median(r[0] for r in ok) if ok else float("nan"),
            "events": min((r[1] for r in ok), default=0), "opened_s": opened,
            "why": (repr(failed[0]) if isinstance(failed[0], BaseException) else f"{failed[0][1]} events")
            if failed else ""}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=9900)
    ap.add_argument("--batch", type=int, default=500, help="streams opened together, every 0.2 s")
    ap.add_argument("--every", type=float, default=2.0, help="seconds between two events of a stream")
    ap.add_argument("--hold", type=float, default=30.0, help="seconds a held stream lasts")
    ap.add_argument("--requests", type=int, default=300, help="sequential requests for time to first byte")
    ap.add_argument("--only", default="", help="comma-separated proxies (direct,nginx,vllm-router,modelship)")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.streams * 2 + 50 > hard:
        print(f"note: {args.streams} streams need {args.streams * 2 + 50} open files in a proxy; "
              f"this machine's hard limit is {hard}", file=sys.stderr)
    os.sched_setaffinity(0, {LOAD_CORE})
    HOLD_EVENTS[0] = int(args.hold // args.every)  # the first, then one per period until the end
    port = free_port()
    backend_proc = subprocess.Popen(pinned([sys.executable, str(BENCH / "sse_backend.py"), "--port", str(port),
                                            "--every", str(args.every), "--hold", str(args.hold)], LOAD_CORE))
    backend = f"http://{HOST}:{port}"
    wait(f"{backend}/health")
    proxies: list[Proxy] = []
    rows = []
    wanted = set(args.only.split(",")) if args.only else None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            starters = [("direct", lambda: Proxy("direct", backend, None, lambda: None)),
                        ("nginx", lambda: start_nginx(backend)),
                        ("vllm-router", lambda: start_peer(exe, backend, args.streams)),
                        ("modelship", lambda: start_modelship(backend, Path(tmp)))]
            exe = vllm_router()
            for name, start in starters:
                if wanted and name not in wanted:
                    continue
                if name == "vllm-router" and not exe:
                    print("vllm-router is not installed: skipped (see bench/router_overhead.py)", file=sys.stderr)
                    continue
                proxies.append(start())
            for p in proxies:
                print(f"{p.name}: time to first byte, {args.requests} requests", file=sys.stderr, flush=True)
                firsts = uvloop.run(ttfb(p.url, args.requests))
                held = None
                if p.proc is not None:
                    print(f"{p.name}: {args.streams} streams for {args.hold:g} s", file=sys.stderr, flush=True)
                    held = uvloop.run(hold_many(p, args.streams, args.batch))
                rows.append((p.name, pct(firsts, 0.5), pct(firsts, 0.99), held))
        finally:
            for p in proxies:
                p.stop()
            backend_proc.terminate()
            backend_proc.wait(10)
    direct = rows[0][1] if rows and rows[0][0] == "direct" else None
    print(f"\nStreams: first event at once, then one every {args.every:g} s for {args.hold:g} s. "
          f"Proxies pinned to one core.")
    print(f"{'':<12} {'TTFB p50':>9} {'p99':>9} {'added':>8} | {'streams ok':>10} {'idle RSS':>9} "
          f"{'peak RSS':>9} {'per stream':>10} {'events':>6}")
    for name, p50, p99, held in rows:
        added = f"{(p50 - direct) * 1e6:5.0f} us" if direct is not None and name != "direct" else ""
        line = f"{name:<12} {p50 * 1e6:6.0f} us {p99 * 1e6:6.0f} us {added:>8} |"
        if held:
            per = (held["peak"] - held["idle"]) / max(1, held["ok"] + held["failed"])
            line += (f" {held['ok']:>5}/{held['ok'] + held['failed']:<4} {held['idle'] / 2**20:6.0f} MiB "
                     f"{held['peak'] / 2**20:6.0f} MiB {per / 1024:7.1f} KiB {held['events']:>6}")
            if held["failed"]:
                line += f"  first failure: {held['why']}"
        print(line)


if __name__ == "__main__":
    main()
