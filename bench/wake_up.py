"""Benchmark 6: time from a request for a model at zero replicas to its first token, broken
into its parts, on the test bed (real llama-server and SmolLM2 on the local node, the weights
already on the volume).

    .venv/bin/modelship testbed up
    .venv/bin/python bench/wake_up.py [--trials 5]

It runs the operator and the router as processes (as the integration tests do), applies a
ModelDeployment with `minReplicas: 0`, lets it go to zero, then asks for one token,
non-streamed, and times every step from its own clock, with watches on the Deployment and
the pods and a poll of the engine's `/health` every 10 ms:

- signal: the request's arrival until the router's long-poll answers (the bench holds one
  open beside the operator's; both are answered at the same moment);
- decision: until the Deployment's `replicas` is 1 (the operator's decision, its reconcile,
  the apply);
- pod created: until the ReplicaSet's pod exists (kube-controller-manager);
- pod start: until the container runs (the scheduler and the kubelet);
- model load: until llama-server's `/health` answers 200;
- ready: until the pod is Ready (the startup probe, every second) and the router sends the
  held request on (the EndpointSlice, the router's watch), to the first token.

The goal: everything but pod start and model load under one second.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from kubernetes import client, watch  # noqa: E402

from testbed_cluster import open_testbed  # noqa: E402
from tests.conftest import Cluster  # noqa: E402
from tests.integration.conftest import LocalOperator, preload_claim  # noqa: E402
from tests.integration.test_autoscaling import Router, scaled_to_zero, smollm2  # noqa: E402

PARTS = ("signal", "decision", "pod created", "pod start", "model load", "ready + first token")


class Times:
    """When each step was first seen, on this process's clock."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.ip: str | None = None  # the new pod's address, once it runs
        self.lock = threading.Lock()

    def mark(self, what: str) -> None:
        with self.lock:
            self.at.setdefault(what, time.monotonic())


def watch_children(api: client.ApiClient, namespace: str, name: str, times: Times, stop: threading.Event) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)

    def follow(list_fn, on_object, **selector) -> None:
        """Each object the watch sees, until `stop`."""
        w = watch.Watch()
        for ev in w.stream(list_fn, namespace, timeout_seconds=300, **selector):
            if stop.is_set():
                return w.stop()
            if ev["type"] != "DELETED":
                on_object(ev["object"])

    def deployment(d) -> None:
        if (d.spec.replicas or 0) >= 1:
            times.mark("decision")

    def pod(p) -> None:
        if p.metadata.deletion_timestamp:
            return
        times.mark("pod created")
        if any(cs.state and cs.state.running for cs in p.status.container_statuses or []):
            times.mark("pod start")
            times.ip = p.status.pod_ip or times.ip

    threading.Thread(target=follow, args=(apps.list_namespaced_deployment, deployment), daemon=True,
                     kwargs={"field_selector": f"metadata.name={name}"}).start()
    threading.Thread(target=follow, args=(core.list_namespaced_pod, pod), daemon=True,
                     kwargs={"label_selector": f"modelship.io/deployment={name},app.kubernetes.io/component=server"}
                     ).start()


def poll_health(times: Times, stop: threading.Event) -> None:
    while not stop.is_set():
        ip = times.ip
        if ip and ip.startswith("127."):
            try:
                if httpx.get(f"http://{ip}:8080/health", timeout=1).status_code == 200:
                    times.mark("model load")
                    return
            except httpx.HTTPError:
                pass
        time.sleep(0.01)


def long_poll(router: Router, times: Times, stop: threading.Event) -> None:
    version = httpx.get(f"{router.url}/modelship/load", timeout=5).json()["version"]
    while not stop.is_set():
        answer = httpx.get(f"{router.url}/modelship/load", params={"version": version, "wait": 5}, timeout=10).json()
        if answer["version"] != version:
            times.mark("signal")
            return


def trial(cluster: Cluster, api, namespace: str, router: Router) -> dict[str, float]:
    times, stop = Times(), threading.Event()
    watch_children(api, namespace, "wake", times, stop)
    threads = [threading.Thread(target=fn, args=(times, stop) if fn is poll_health else (router, times, stop),
                                daemon=True) for fn in (poll_health, long_poll)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # the watches are open
    start = time.monotonic()
    r = httpx.post(f"{router.url}/v1/chat/completions", timeout=300, json={
        "model": "wake", "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]})
    end = time.monotonic()
    stop.set()
    assert r.status_code == 200, r.text
    at = times.at
    steps = [start, at.get("signal"), at.get("decision"), at.get("pod created"), at.get("pod start"),
             at.get("model load"), end]
    if any(s is None for s in steps):
        raise SystemExit(f"a step was not seen: {at}")
    out = {part: steps[i + 1] - steps[i] for i, part in enumerate(PARTS)}
    out["total"] = end - start
    out["overhead"] = out["total"] - out["pod start"] - out["model load"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    cluster, api, namespace = open_testbed("bench-wake")
    work = Path(tempfile.mkdtemp(prefix="wake-"))
    router = op = None
    try:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
        preload_claim(cluster, namespace)
        router = Router(cluster, namespace)
        op = LocalOperator(cluster, namespace, work)
        op.start(config={"autoscaler": {"routerUrls": [router.url], "intervalSeconds": 2}})
        cluster.apply(smollm2("wake", replicas=0, minReplicas=0, maxReplicas=1,
                              autoscaling={"idleSeconds": 5, "windowSeconds": 2, "scaleDownDelaySeconds": 2}),
                      namespace)
        rows = []
        for i in range(args.trials):
            deadline = time.monotonic() + 180
            while not scaled_to_zero(cluster, namespace, "wake") or pods_left(api, namespace):
                if time.monotonic() > deadline:
                    raise SystemExit("the model did not go to zero: " + op.log()[-2000:])
                time.sleep(0.5)
            rows.append(trial(cluster, api, namespace, router))
            print(f"trial {i + 1}: " + ", ".join(f"{k} {v:.3f} s" for k, v in rows[-1].items()), flush=True)
        print(f"\nwake from zero to first token, {args.trials} trials (median, min, max; seconds)")
        for part in (*PARTS, "total", "overhead"):
            values = [r[part] for r in rows]
            print(f"  {part:<22} {statistics.median(values):7.3f} {min(values):7.3f} {max(values):7.3f}")
        print(json.dumps({"rows": rows}), file=open(work / "wake.json", "w"))
    finally:
        if op:
            op.stop()
        if router:
            router.close()
        client.CoreV1Api(api).delete_namespace(namespace)


def pods_left(api, namespace: str) -> bool:
    selector = "modelship.io/deployment=wake,app.kubernetes.io/component=server"
    return bool(client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items)


if __name__ == "__main__":
    main()
