"""How fast the test bed's API server makes Services, with no operator: N Services (a
selector and one port, as the operator's), made by server-side apply and by create, at
each of the given numbers at once; the rate and the median time each. The API server
allocates ClusterIPs under one lock (`ipallocator.MetaAllocator`), so the number at once
changes the time each takes more than the rate (bench/README.md §7, "Stop 31").

    .venv/bin/python bench/service_rate.py [--services 200] [--at-once 4,16] [--goroutines FILE]

`--goroutines FILE` saves the API server's goroutine dump one second into the last batch
(the test bed started with MODELSHIP_TESTBED_PROFILING=1). The namespace is deleted at the
end (on Ctrl-C too)."""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubernetes import client  # noqa: E402

from testbed_cluster import open_testbed  # noqa: E402


def service(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


def batch(core: client.CoreV1Api, namespace: str, how: str, at_once: int, count: int) -> tuple[float, float]:
    """(Services a second, median seconds each)."""
    took: list[float] = []

    def one(i: int) -> None:
        name, start = f"{how}-{at_once}-{i}", time.monotonic()
        if how == "apply":
            core.patch_namespaced_service(name, namespace, service(name), field_manager="bench", force=True,
                                          _content_type="application/apply-patch+yaml")
        else:
            core.create_namespaced_service(namespace, service(name))
        took.append(time.monotonic() - start)

    start = time.monotonic()
    with ThreadPoolExecutor(at_once) as pool:
        list(pool.map(one, range(count)))
    return count / (time.monotonic() - start), statistics.median(took)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=200, help="Services per batch")
    ap.add_argument("--at-once", default="4,16", help="comma-separated numbers of Services made at once")
    ap.add_argument("--goroutines", type=Path, help="save the API server's goroutine dump during the last batch")
    args = ap.parse_args()
    cluster, api, namespace = open_testbed("services")
    core = client.CoreV1Api(api)
    runs = [(how, int(n)) for n in args.at_once.split(",") for how in ("apply", "create")]
    try:
        for k, (how, at_once) in enumerate(runs):
            if args.goroutines and k == len(runs) - 1:
                def dump() -> None:
                    args.goroutines.write_text(cluster.kubectl("get", "--raw", "/debug/pprof/goroutine?debug=2"))

                threading.Timer(1.0, dump).start()
            rate, each = batch(core, namespace, how, at_once, args.services)
            print(f"{args.services} Services by {how}, {at_once} at once: {rate:.0f} a second, "
                  f"{each * 1000:.0f} ms each (median)", flush=True)
    finally:
        core.delete_namespace(namespace)


if __name__ == "__main__":
    main()
