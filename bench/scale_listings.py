"""What `scale.py`'s progress cost the machine it measures until stop 36: with N of each
present, the control plane's CPU (`api_costs.control_plane`) and this process's per round
of listing the ModelDeployments (each with a status like the operator's), the Deployments
and the Services of one namespace, as the JSON they come in, less each one's own rate when
idle (the mean of a window before and one after).

    .venv/bin/python bench/scale_listings.py [--count 500] [--rounds 20]

on a test bed with the CRD (`modelship testbed up`, then `kubectl apply -f crds/`). Since stop
36, `scale.py` watches the three kinds instead (`scale_watch.py`): a change is sent once, and
a look at the counts asks nothing of the API server.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
import psutil  # noqa: E402
from kubernetes import client  # noqa: E402

from api_costs import control_plane, cpu_of  # noqa: E402
from scale import model  # noqa: E402
from scale_watch import GROUP, PLURAL, VERSION  # noqa: E402
from testbed_cluster import open_testbed  # noqa: E402


def status_like_the_operators() -> dict:
    from modelship import api as mapi
    from tests.integration.conftest import catalog

    entry = next(e for e in catalog() if e["repo"] == model(0)["spec"]["model"]["repo"])
    conditions = [{"type": t, "status": "False", "reason": "Progressing", "message": "x" * 120,
                   "lastTransitionTime": "2026-12-04T00:00:00Z", "observedGeneration": 1}
                  for t in ("Ready", "Reconciling", "Stalled", "Resolved", "Downloaded", "Available")]
    return {"phase": "Starting", "observedGeneration": 1, "replicas": 2, "readyReplicas": 0,
            "selector": "app=x", "conditions": conditions,
            "resolved": mapi.ResolvedModel.model_validate(entry).wire()}


def make(api: client.ApiClient, namespace: str, count: int) -> None:
    custom, core, apps = client.CustomObjectsApi(api), client.CoreV1Api(api), client.AppsV1Api(api)
    status = status_like_the_operators()

    def one(i: int) -> None:
        name, labels = f"m{i:04d}", {"app": f"m{i:04d}"}
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, model(i))
        custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": status})
        core.create_namespaced_service(namespace, {"metadata": {"name": name, "labels": labels}, "spec": {
            "selector": labels, "ports": [{"port": 80, "targetPort": 8080}]}})
        container = {"name": "engine", "image": "engine", "args": ["--flag"] * 20,
                     "env": [{"name": f"E{j}", "value": "v" * 30} for j in range(15)]}
        apps.create_namespaced_deployment(namespace, {"metadata": {"name": name}, "spec": {
            "replicas": 0, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}}}})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))


def listing_round(api: client.ApiClient, namespace: str) -> int:
    """The three listings of scale.py's progress until stop 36; how many objects came."""
    raw = {"_preload_content": False}
    answers = (client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **raw),
               client.AppsV1Api(api).list_namespaced_deployment(namespace, **raw),
               client.CoreV1Api(api).list_namespaced_service(namespace, **raw))
    return sum(len(orjson.loads(a.data)["items"]) for a in answers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    _, api, namespace = open_testbed("bench-listings")
    try:
        print(f"making {args.count} ModelDeployments, Deployments and Services in {namespace}", flush=True)
        make(api, namespace, args.count)
        time.sleep(30)  # the controllers done with them
        processes, me = control_plane(), psutil.Process()

        def cpu() -> dict[str, float]:
            t = me.cpu_times()
            return {**cpu_of(processes), "this bench": t.user + t.system}

        def window(step: Callable[[], None]) -> tuple[float, dict[str, float]]:
            """`step` args.rounds times: the wall time and each process's CPU seconds."""
            before, start = cpu(), time.monotonic()
            for _ in range(args.rounds):
                step()
            after = cpu()
            return time.monotonic() - start, {n: after[n] - before[n] for n in after}

        def idle_rate(what: str) -> dict[str, float]:
            wall, used = window(lambda: time.sleep(0.5))
            rate = {n: v / wall for n, v in used.items()}
            print(f"{what}: CPU ms a second: " + ", ".join(f"{n} {1000 * v:.0f}" for n, v in rate.items()))
            return rate

        def listing() -> None:
            came = listing_round(api, namespace)
            if came != 3 * args.count:
                raise SystemExit(f"a round listed {came} objects, not {3 * args.count}")

        before = idle_rate("idle")
        wall, used = window(listing)
        after = idle_rate("idle again")
        print(f"listings: {args.rounds} rounds in {wall:.1f} s; CPU ms a round, the mean idle rate taken out: "
              + ", ".join(f"{n} {1000 * (v - (before[n] + after[n]) / 2 * wall) / args.rounds:.0f}"
                          for n, v in used.items()), flush=True)
    finally:
        client.CoreV1Api(api).delete_namespace(namespace)
        print(f"deleted namespace {namespace}")


if __name__ == "__main__":
    main()
