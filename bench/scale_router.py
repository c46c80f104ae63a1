"""The router part of `scale.py`: the router discovering the bench's N ModelDeployments (two
endpoints each, the kwok pods' addresses in 127.200.0.0/16, which get no traffic: scraping
is off), and the per-request overhead with N targets against one.

- discovery: the router started with `-n <the bench's namespace>` until `/modelship/load`
  lists every model with two ready endpoints; its RSS then;
- a new endpoint: an EndpointSlice of one model's Service, made by the bench with one more
  ready address, until `/modelship/load` counts it (polled every 5 ms), 5 times;
- per-request overhead: `router --static` in front of two nginx backends as model "bench",
  alone or beside N-1 other models (two endpoints each, on loopback ports where nothing
  listens, never chosen), `router_overhead.py`'s setup (router on core 0, nginx and wrk on
  core 1), rounds alternating.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import yaml
from kubernetes import client

from loopback import HOST, Nginx, free_port, pinned, wait, wrk
from router_overhead import ANSWER, LOAD_CORE, PROXY_CORE, REQUEST

MODELSHIP = str(Path(sys.executable).with_name("modelship"))


def discovery(namespace: str, count: int, kubeconfig: str) -> dict[str, float]:
    port = free_port()
    url = f"http://{HOST}:{port}"
    start = time.monotonic()
    proc = subprocess.Popen([MODELSHIP, "router", "-n", namespace, "--host", HOST, "--port", str(port),
                             "--allow-cidr", "127.0.0.0/8", "--scrape-interval", "0"],
                            env={**os.environ, "KUBECONFIG": kubeconfig}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait(f"{url}/health")
        while True:
            models = httpx.get(f"{url}/modelship/load", timeout=10).json()["models"]
            full = [m for m in models.values() if m["readyEndpoints"] == 2]
            if len(full) >= count:
                break
            if time.monotonic() - start > 300:
                raise SystemExit(f"the router found {len(full)} of {count} models with two endpoints")
            time.sleep(0.05)
        out = {"discovered": time.monotonic() - start, "rss": psutil.Process(proc.pid).memory_info().rss / 2**20}
        out["new endpoint"] = statistics.median(new_endpoint(url, namespace, i) for i in range(5))
        out["rss after"] = psutil.Process(proc.pid).memory_info().rss / 2**20
        return out
    finally:
        proc.terminate()
        proc.wait(10)


def new_endpoint(url: str, namespace: str, i: int) -> float:
    """Seconds from creating an EndpointSlice with one more ready address for model m0000 to
    the router counting it."""
    disc = client.DiscoveryV1Api()
    name = f"m0000-bench-{i}"
    body = {"metadata": {"name": name, "labels": {"kubernetes.io/service-name": "m0000",
                                                    "app.kubernetes.io/managed-by": "modelship"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [f"127.200.255.{10 + i}"], "conditions": {"ready": True}}]}
    start = time.monotonic()
    disc.create_namespaced_endpoint_slice(namespace, body)
    try:
        while ready_endpoints(url, "m0000") < 3:
            if time.monotonic() - start > 30:
                raise SystemExit("the router did not learn the new endpoint in 30 s")
            time.sleep(0.005)
        return time.monotonic() - start
    finally:
        disc.delete_namespaced_endpoint_slice(name, namespace)
        gone = time.monotonic() + 30
        while ready_endpoints(url, "m0000") > 2 and time.monotonic() < gone:
            time.sleep(0.05)


def ready_endpoints(url: str, model: str) -> int:
    """The router's count for `model` (named `namespace/name` in `/modelship/load`)."""
    models = httpx.get(f"{url}/modelship/load", timeout=10).json()["models"]
    return max((m["readyEndpoints"] for k, m in models.items() if k == model or k.endswith(f"/{model}")), default=0)


def static_router(workdir: Path, backends: list[str], others: int) -> tuple[subprocess.Popen, str]:
    """`router --static` with model "bench" on `backends` and `others` more models."""
    port = free_port()
    dead = [f"http://127.0.0.1:{p}" for p in (1, 2)]  # nothing listens there; never chosen
    models = [{"name": "bench", "engine": "llamacpp", "endpoints": backends, "strategy": "least-load"}]
    models += [{"name": f"other-{i:04d}", "engine": "llamacpp", "endpoints": dead} for i in range(others)]
    config = workdir / f"static-{port}.yaml"
    config.write_text(yaml.safe_dump({"models": models}))
    cmd = [MODELSHIP, "router", "--static", str(config), "--host", HOST, "--port", str(port), "--scrape-interval", "0"]
    proc = subprocess.Popen(pinned(cmd, PROXY_CORE), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait(f"http://{HOST}:{port}/health")
    return proc, f"http://{HOST}:{port}"


def overhead(workdir: Path, count: int, rounds: int = 3, seconds: float = 4) -> dict[str, dict[str, float]]:
    backends = [Nginx(LOAD_CORE, free_port(), body=ANSWER) for _ in range(2)]
    routers = {}
    try:
        for b in backends:
            wait(f"{b.url}/health")
        urls = [b.url for b in backends]
        routers = {"1 model": static_router(workdir, urls, 0), f"{count} models": static_router(workdir, urls, count - 1)}
        got: dict[str, list[dict]] = {name: [] for name in routers}
        for r in range(rounds):
            for name in (list(routers) if r % 2 == 0 else list(reversed(routers))):
                u = f"{routers[name][1]}/v1/chat/completions"
                one, many = wrk(u, REQUEST, 1, seconds, LOAD_CORE), wrk(u, REQUEST, 32, seconds, LOAD_CORE)
                got[name].append({"p50": one["p50"], "p99": one["p99"], "rps": many["rps"]})
        direct = wrk(f"{urls[0]}/v1/chat/completions", REQUEST, 1, seconds, LOAD_CORE)["p50"]
        out = {name: {k: statistics.median(x[k] for x in rs) for k in ("p50", "p99", "rps")} for name, rs in got.items()}
        for name, (proc, _) in routers.items():
            out[name]["rss"] = psutil.Process(proc.pid).memory_info().rss / 2**20
            out[name]["added"] = out[name]["p50"] - direct
        return out
    finally:
        for proc, _ in routers.values():
            proc.terminate()
            proc.wait(10)
        for b in backends:
            b.stop()


def fake_endpoints(api, namespace: str, count: int) -> None:
    """`--router-only`: the N ModelDeployments without an operator, nodes or pods, and for each
    the EndpointSlice its Service would have (two ready addresses in kwok's range): what the
    router watches, at a fraction of the API server's work."""
    from concurrent.futures import ThreadPoolExecutor

    from scale import GROUP, PLURAL, VERSION, model

    custom, disc = client.CustomObjectsApi(api), client.DiscoveryV1Api(api)

    def make(i: int) -> None:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, model(i))
        disc.create_namespaced_endpoint_slice(namespace, {
            "metadata": {"name": f"m{i:04d}-x", "labels": {"kubernetes.io/service-name": f"m{i:04d}",
                                                         "app.kubernetes.io/managed-by": "modelship"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [f"127.200.{i // 100}.{2 * (i % 100) + k + 1}"], "conditions": {"ready": True}}
                          for k in range(2)]})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(make, range(count)))


def run(args, api, cluster, namespace: str, work: Path) -> None:
    print("\nthe router: discovery of the same models, then overhead with many targets", flush=True)
    found = discovery(namespace, args.models, cluster.kubeconfig)
    costs = overhead(work, args.models)
    many = costs[f"{args.models} models"]
    print(f"\n{'figure':<56} {'measured':>10}   baseline")
    rows = [(f"router: start until {args.models} models x 2 endpoints found", f"{found['discovered']:.2f} s", ""),
            ("router RSS with them (cluster discovery)", f"{found['rss']:.0f} MiB", ""),
            ("router: a new endpoint (EndpointSlice created) learnt, median of 5",
             f"{found['new endpoint'] * 1e3:.0f} ms", ""),
            (f"added p50, one connection, {args.models} models", f"{many['added'] * 1e6:.0f} us",
             f"{costs['1 model']['added'] * 1e6:.0f} us with 1"),
            (f"p99, one connection, {args.models} models", f"{many['p99'] * 1e6:.0f} us",
             f"{costs['1 model']['p99'] * 1e6:.0f} us with 1"),
            (f"req/s, 32 connections, one core, {args.models} models", f"{many['rps']:.0f}",
             f"{costs['1 model']['rps']:.0f} with 1"),
            (f"static router RSS, {args.models} models", f"{many['rss']:.0f} MiB",
             f"{costs['1 model']['rss']:.0f} MiB with 1")]
    for name, got, base in rows:
        print(f"{name:<56} {got:>10}   {base}")
