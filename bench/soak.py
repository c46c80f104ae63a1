"""Soak: the router (a process, `modelship router --static`) at steady load for a bounded
time, in front of several models on loopback, streamed and non-streamed requests mixed.

    .venv/bin/python bench/soak.py [--seconds 600] [--models 3] [--concurrency 6]

Each model is a TGI stand-in (`modelship_testbed.tgi_fake`, one process per endpoint, two
endpoints a model); `--concurrency` clients loop over the models, every other request
streamed (read to the end: `[DONE]`, or TGI's last event with its `finish_reason`). Every `--sample-every` seconds the router's resident memory
(RSS) and open file descriptors are read (psutil); "start" is the first sample after the
warm-up (`--warmup` seconds: connection pools, caches and the allocator settle first).

Prints requests, errors, RSS and FDs at start, middle and end, and exits non-zero when
any request failed, when RSS grew from start to end by more than `--max-rss-growth-mb`, or
when the FDs at the end exceed those in the middle by more than `--max-fd-growth` (from the
middle: the router's connection pools to the engines fill during the first half).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import yaml
from loopback import HOST, free_port, stop_all, wait

HERE = Path(__file__).resolve().parent


@dataclass
class Tally:
    requests: int = 0
    streamed: int = 0
    errors: list[str] = field(default_factory=list)
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (seconds, rss bytes, fds)




def start_engines(models: int, per_model: int, token_ms: float) -> tuple[list[subprocess.Popen], dict[str, list[str]]]:
    """TGI stand-ins: `per_model` processes for each of `models` models."""
    procs, endpoints = [], {}
    for m in range(models):
        name = f"soak-{m}"
        for _ in range(per_model):
            port = free_port()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "modelship_testbed.tgi_fake", "--model-id", name, "--hostname", HOST,
                 "--port", str(port), "--fake-token-delay-ms", str(token_ms), "--fake-load-seconds", "0"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            endpoints.setdefault(name, []).append(f"http://{HOST}:{port}")
    for urls in endpoints.values():
        for url in urls:
            wait(f"{url}/health")
    return procs, endpoints


def start_router(endpoints: dict[str, list[str]], workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    config = workdir / "soak-router.yaml"
    config.write_text(yaml.safe_dump({"models": [{"name": n, "engine": "tgi", "endpoints": urls}
                                                 for n, urls in endpoints.items()]}))
    proc = subprocess.Popen([str(Path(sys.executable).with_name("modelship")), "router", "--static", str(config),
                             "--host", HOST, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://{HOST}:{port}"
    wait(f"{url}/health")
    return proc, url


async def one(client: httpx.AsyncClient, url: str, model: str, stream: bool, tally: Tally) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": f"soak {tally.requests % 97}"}],
            "max_tokens": 8, "stream": stream}
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            data = await r.aread()
        text = data.decode(errors="replace")
        if r.status_code != 200:
            tally.errors.append(f"{model} stream={stream}: HTTP {r.status_code} {text[:200]}")
        elif stream and "data: [DONE]" not in text and '"finish_reason":"' not in text.replace(": ", ":"):
            tally.errors.append(f"{model} stream: ended without [DONE] or a finish_reason: {text[-200:]}")
        elif not stream and not json.loads(text).get("choices"):
            tally.errors.append(f"{model}: no choices: {text[:200]}")
    except (httpx.HTTPError, ValueError) as e:
        tally.errors.append(f"{model} stream={stream}: {type(e).__name__}: {e}")
    tally.requests += 1
    tally.streamed += stream


async def client_loop(i: int, url: str, models: list[str], until: float, tally: Tally) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        n = i
        while time.monotonic() < until:
            await one(client, url, models[n % len(models)], stream=n % 2 == 0, tally=tally)
            n += 1


async def sampler(pid: int, started: float, until: float, every: float, tally: Tally) -> None:
    proc = psutil.Process(pid)
    while True:
        tally.samples.append((time.monotonic() - started, proc.memory_info().rss, proc.num_fds()))
        if time.monotonic() >= until:
            return
        await asyncio.sleep(min(every, max(until - time.monotonic(), 0)))


async def load(url: str, pid: int, models: list[str], args) -> Tally:
    tally = Tally()
    started = time.monotonic()
    until = started + args.seconds
    warm = Tally()  # warm-up: its requests count, its samples do not
    await asyncio.gather(*(client_loop(i, url, models, started + args.warmup, warm) for i in range(args.concurrency)))
    tally.requests, tally.streamed, tally.errors = warm.requests, warm.streamed, warm.errors
    await asyncio.gather(sampler(pid, started, until, args.sample_every, tally),
                         *(client_loop(i, url, models, until, tally) for i in range(args.concurrency)))
    return tally


def verdict(tally: Tally, max_rss_mb: float, max_fds: int) -> tuple[dict, list[str]]:
    """The figures (start, middle and end samples) and what breaks the bounds."""
    s = tally.samples
    start, middle, end = s[0], s[len(s) // 2], s[-1]
    mb = lambda b: round(b / 2 ** 20, 1)  # noqa: E731
    figures = {"requests": tally.requests, "streamed": tally.streamed, "errors": len(tally.errors),
               "rss_mb": [mb(start[1]), mb(middle[1]), mb(end[1])], "rss_max_mb": mb(max(x[1] for x in s)),
               "fds": [start[2], middle[2], end[2]], "fds_max": max(x[2] for x in s), "samples": len(s),
               "at_s": [round(start[0]), round(middle[0]), round(end[0])],
               "series": [[round(t), mb(rss), fds] for t, rss, fds in s]}  # every sample: (s, RSS MB, FDs)
    broken = []
    if tally.errors:
        broken.append(f"{len(tally.errors)} requests failed, the first: {tally.errors[0]}")
    if end[1] - start[1] > max_rss_mb * 2 ** 20:
        broken.append(f"RSS grew {mb(end[1] - start[1])} MB from start to end (bound {max_rss_mb} MB)")
    if end[2] - middle[2] > max_fds:  # from the middle: connection pools to the engines fill up first
        broken.append(f"open file descriptors grew from {middle[2]} (middle) to {end[2]} (bound +{max_fds})")
    return figures, broken


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench/soak.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=600, help="length of the run, warm-up included")
    ap.add_argument("--warmup", type=float, default=20, help="seconds before the first (start) sample")
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--endpoints", type=int, default=2, help="engine processes per model")
    ap.add_argument("--concurrency", type=int, default=6, help="clients, each one request at a time")
    ap.add_argument("--token-ms", type=float, default=5, help="the stand-ins' delay per token")
    ap.add_argument("--sample-every", type=float, default=10)
    ap.add_argument("--max-rss-growth-mb", type=float, default=20)
    ap.add_argument("--max-fd-growth", type=int, default=10)
    args = ap.parse_args(argv)
    if args.warmup >= args.seconds:
        ap.error("--warmup must be shorter than --seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    procs: list[subprocess.Popen] = []
    try:
        procs, endpoints = start_engines(args.models, args.endpoints, args.token_ms)
        with tempfile.TemporaryDirectory() as tmp:
            router, url = start_router(endpoints, Path(tmp))
            procs.append(router)
            tally = asyncio.run(load(url, router.pid, list(endpoints), args))
    finally:
        stop_all(procs)
    figures, broken = verdict(tally, args.max_rss_growth_mb, args.max_fd_growth)
    print(json.dumps(figures))
    for line in broken:
        print(f"soak failed: {line}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    # the engines and the router of this checkout (its processes inherit the path)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent / "operator"), str(HERE.parent / "testbed"),
                                                             os.environ.get("PYTHONPATH")]))
    sys.exit(main())
