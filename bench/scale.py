"""Benchmark 7: the operator and the router at scale, on the test bed: N ModelDeployments
(two replicas each) on M kwok nodes in service, with the weights already present.

    .venv/bin/python bench/scale.py [--models 500] [--nodes 1000] [--heartbeats default|slow] [--no-router]

Weights already present: every ModelDeployment uses one claim bound to a volume from the
start (`storage.existingClaim`), and the operator's download pool is the bench's kwok pool,
where kwok completes a Job's pod as soon as it runs: the operator goes through its download
stage (the verifying Job, which the ModelDeployments on one claim share, is made and seen
complete) and nothing is fetched. The models come from the integration tests' catalog, so no
Hub is asked either.

`--heartbeats slow` gives the bench's nodes a kwok of their own that renews their leases every
15 s and patches their status every 10-20 minutes (`scale_cluster.BenchKwok`), instead of the
test bed's kwok (leases every 10 s, status every 20-45 s): the API server then serves the
operator more than the nodes' heartbeats.

It runs the operator as a process (as the integration tests do), under a ServiceAccount of
its own so that the API server's audit log tells its requests apart from those of the other
users of a shared test bed, and measures:

- reconciled: from the first create until every ModelDeployment's `status.observedGeneration`
  is its `metadata.generation` and its Service and Deployment (2 replicas) exist; and until
  every one is `phase: Ready` (this also takes the scheduler, kwok and the EndpointSlices);
  both as a watch of each of the three kinds tells them, looked at every 0.25 s
  (`scale_watch.py`; until stop 36, listings of all three every second);
- the operator's peak RSS (psutil, every 0.2 s);
- once idle: the operator's requests per object per minute, watches left out, over
  `--idle-seconds` (the audit log; and apiserver_request_total's deltas over the same
  window, which count every client of the test bed);
- one change among the N: a patch of one spec until its Deployment's template says it, and
  until its status's observedGeneration does;
- from the operator's own metrics, its CPU against the time its reconciles took (how much of
  it was waiting), and from its log, how long each step of a ModelDeployment's path took.

Then the router part (`scale_router.py`). Everything is deleted at the end, on Ctrl-C too.

`--cluster-only` runs no operator: the bench itself makes what the operator would, the least
of it (`scale_floor.py`), to measure the cluster's floor under "all reconciled".
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from kubernetes import client  # noqa: E402

import scale_cluster as sc  # noqa: E402
import scale_report as sr  # noqa: E402
from scale_watch import GROUP, PLURAL, POLL, VERSION, Progress  # noqa: E402
from testbed_cluster import open_testbed  # noqa: E402
from tests.conftest import Cluster  # noqa: E402
from tests.integration.conftest import LocalOperator, service_account_kubeconfig  # noqa: E402

SPEC_HASH = "modelship.io/spec-hash"


def model(i: int) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": f"m{i:04d}"},
            "spec": {"model": {"repo": "modelship-test/tiny-llama-GGUF", "quantization": "Q4_K_M"},
                     "pool": sc.POOL, "replicas": 2, "storage": {"existingClaim": sc.CLAIM},
                     "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                     "serving": {"contextLength": 1024, "threads": 1}}}


class Peak:
    """A process's peak RSS, sampled in a thread."""

    def __init__(self, pid: int):
        self.proc, self.peak, self.stop = psutil.Process(pid), 0, threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return


def apply_all(api: client.ApiClient, namespace: str, count: int) -> dict[str, float]:
    """Create them; each one's create time (epoch seconds), by name."""
    custom, created = client.CustomObjectsApi(api), {}

    def create(i: int) -> None:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, model(i))
        created[f"m{i:04d}"] = time.time()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(count)))
    return created


def reconcile_all(api: client.ApiClient, namespace: str, count: int, timeout: float,
                  op: LocalOperator) -> dict[str, float]:
    start, out = time.monotonic(), {}
    metrics, cpu = sr.scrape(op.metrics()), sr.CpuByProcess()
    watched = Progress(api, namespace)  # (watched, not listed: scale_watch.py)
    try:
        out["created"] = apply_all(api, namespace, count)
        out["applied"] = time.monotonic() - start
        last, said = -1, 0.0
        while time.monotonic() - start < timeout:
            if op.proc.poll() is not None:
                raise SystemExit("the operator exited: " + op.log()[-2000:])
            done, ready, lacking = watched.counts()
            now = time.monotonic() - start
            if done == count and "reconciled" not in out:
                out["reconciled"] = now
            if ready == count:
                out["ready"] = now
                out["to ready"] = sr.cpu_vs_wait(metrics, sr.scrape(op.metrics()), out["ready"])
                out["machine"] = cpu.took(out["ready"])
                return out
            if done + ready != last and now - said >= 1.0:
                lacks = ", ".join(f"{n} {what}" for what, n in sorted(lacking.items()))
                print(f"  {now:6.1f} s: {done}/{count} reconciled, {ready} Ready"
                      + (f" (the others lack: {lacks})" if lacks else ""), flush=True)
                last, said = done + ready, now
            time.sleep(POLL)
        # Not all Ready in time (the scheduler, kwok and the API server saturated): the rest is
        # measured all the same, and the report says how far it got.
        done, out["ready count"], _ = watched.counts()
    finally:
        watched.stop()
    out["to ready"] = sr.cpu_vs_wait(metrics, sr.scrape(op.metrics()), time.monotonic() - start)
    out["machine"] = cpu.took(time.monotonic() - start)
    out.setdefault("reconciled", float("inf"))
    print(f"  not all Ready after {timeout:.0f} s: {done} reconciled, {out['ready count']} Ready", flush=True)
    return out


def idle_requests(cluster: Cluster, user: str, seconds: float) -> tuple[Counter, Counter]:
    """The operator's requests in a window of `seconds` (audit log, by verb and resource, no
    watches), and every client's (apiserver_request_total deltas)."""
    from modelship_testbed import audit

    before, since = sc.request_totals(cluster.kubectl), datetime.now(timezone.utc)
    time.sleep(seconds)
    after, until = sc.request_totals(cluster.kubectl), datetime.now(timezone.utc)
    time.sleep(3)  # the audit log is written a moment after the answers
    mine = Counter(f"{r.verb} {r.resource}{'/' + r.subresource if r.subresource else ''}"
                   for r in audit.requests_by(user, since) if r.time <= until and r.verb != "watch")
    every = Counter({f"{v.lower()} {res}": after[(v, res)] - before.get((v, res), 0) for v, res in after
                     if v != "WATCH" and after[(v, res)] > before.get((v, res), 0)})
    return mine, every


def one_change(api: client.ApiClient, namespace: str, name: str) -> dict[str, float]:
    custom, apps = client.CustomObjectsApi(api), client.AppsV1Api(api)
    hash_of = lambda: (apps.read_namespaced_deployment(name, namespace).spec.template.metadata.annotations or {}  # noqa: E731
                       ).get(SPEC_HASH)
    before = hash_of()
    threads = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)["spec"]["serving"]["threads"]
    start = time.monotonic()
    md = custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                               {"spec": {"serving": {"threads": threads + 1}}})
    out: dict[str, float] = {}
    while len(out) < 2 and time.monotonic() - start < 60:
        if "deployment" not in out and hash_of() != before:
            out["deployment"] = time.monotonic() - start
        if "status" not in out:
            got = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            if (got.get("status") or {}).get("observedGeneration") == md["metadata"]["generation"]:
                out["status"] = time.monotonic() - start
        time.sleep(0.01)
    return out


def metrics_up(op: LocalOperator) -> bool:
    if op.proc.poll() is not None:
        raise SystemExit("the operator exited: " + op.log()[-2000:])
    import httpx

    try:
        op.metrics()
        return True
    except httpx.HTTPError:  # not serving yet
        return False


def operator_part(args, api, cluster: Cluster, namespace: str, work: Path) -> tuple[dict, Counter, Counter]:
    core = client.CoreV1Api(api)
    user = sc.operator_account(core, client.RbacAuthorizationV1Api(api), namespace)
    sc.make_volume(core, namespace, str(work / "weights"))
    kubeconfig = service_account_kubeconfig(cluster, namespace, "operator", work / "operator.kubeconfig")
    op = LocalOperator(cluster, namespace, work)
    op.start(pools=sc.POOLS, config={"downloadPool": sc.POOL, "defaultGpuPool": f"{sc.POOL}-gpu",
                                         "defaultCpuPool": sc.POOL, "resyncSeconds": args.resync},
             KUBECONFIG=str(kubeconfig))
    try:
        peak = Peak(op.proc.pid)
        sc.wait_until(lambda: metrics_up(op), 120, "the operator's /metrics")
        time.sleep(3)  # its watches are open
        figures = reconcile_all(api, namespace, args.models, args.timeout, op)
        if "ready" in figures:
            print(f"  all reconciled in {figures['reconciled']:.1f} s, all Ready in {figures['ready']:.1f} s",
                  flush=True)
        time.sleep(args.settle)
        before, idle_start = sr.scrape(op.metrics()), time.monotonic()
        mine, every = idle_requests(cluster, user, args.idle_seconds)
        figures["idle"] = sr.cpu_vs_wait(before, sr.scrape(op.metrics()), time.monotonic() - idle_start)
        changes = [one_change(api, namespace, f"m{i * max(1, args.models // 5):04d}") for i in range(5)]
        for key in ("deployment", "status"):
            figures[f"change {key}"] = sorted(c.get(key, float("inf")) for c in changes)[len(changes) // 2]
        figures["peak rss"] = peak.peak / 2**20
        figures["rss now"] = peak.proc.memory_info().rss / 2**20
        peak.stop.set()
        created = figures.pop("created")
        figures["lapsed"] = sc.lapsed(core, namespace)
        figures["steps"] = sr.steps(op.log(), created, sr.cluster_times(api, namespace))
        figures["latency"] = sr.request_latency(user, min(created.values()) - 1,
                                                min(created.values()) + figures["to ready"]["wall"])
        return figures, mine, every
    finally:
        op.stop()
        if "Traceback" in op.log():
            print(op.log()[-3000:])


def report(args, figures: dict, mine: Counter, every: Counter) -> None:
    per_min = 60 / args.idle_seconds / args.models
    beats = ("slow (the bench's own kwok: leases every 15 s, node status every 10-20 min)" if args.heartbeats == "slow"
             else "default (the test bed's kwok: leases every 10 s, node status every 20-45 s)")
    print(f"\n{args.models} ModelDeployments (2 replicas each) on {args.nodes} kwok nodes; "
          f"resyncSeconds {args.resync:g}; idle window {args.idle_seconds:g} s\nnode heartbeats: {beats}")
    rows = [("time until all reconciled", f"{figures['reconciled']:.1f} s", "<= 60 s"),
            ("time until all Ready (scheduler, kwok, too)", f"{figures['ready']:.1f} s" if "ready" in figures
             else f"{figures['ready count']} in {args.timeout:.0f} s", ""),
            ("operator peak RSS", f"{figures['peak rss']:.0f} MiB", "<= 200 MiB"),
            ("operator requests / object / minute, idle, no watches",
             f"{sum(mine.values()) * per_min:.2f}", "about 0"),
            ("one change: Deployment updated (median of 5)", f"{figures['change deployment'] * 1e3:.0f} ms", "<= 1 s"),
            ("one change: status observedGeneration (median of 5)", f"{figures['change status'] * 1e3:.0f} ms",
             "<= 1 s")]
    print(f"{'figure':<56} {'measured':>10}   goal")
    for name, got, goal in rows:
        print(f"{name:<56} {got:>10}   {goal}")
    print("  the operator's idle requests (audit log), per object per minute: "
          + ", ".join(f"{k} {v * per_min:.2f}" for k, v in mine.most_common()))
    print("  every client's (apiserver_request_total), per object per minute: "
          + ", ".join(f"{k} {v * per_min:.2f}" for k, v in every.most_common(8)))
    if figures.get("lapsed"):
        print(f"  WARNING: {figures['lapsed']} pods were marked not ready when their node's heartbeat lapsed "
              "(events NodeNotReady): the API server or kwok fell behind; the figures after that are not the operator's")
    print("the operator's own metrics:")
    print(sr.describe("first create until all Ready", figures["to ready"]))
    print(figures["machine"])
    print(sr.describe("idle window", figures["idle"]))
    print("  its requests until all Ready, as the API server timed them (audit log; how many, median, p90, "
          "in all):\n    " + "; ".join(f"{w} {n}, {m * 1e3:.0f} ms, {p * 1e3:.0f} ms, {t:.0f} s"
                                    for w, n, m, p, t in figures["latency"][:8]))
    f, api_s = figures["to ready"], sum(t for w, _, _, _, t in figures["latency"] if w != "create events")
    print(f"  so of the {f['reconcile seconds']:.0f} s the reconciles took until all Ready: at most {f['cpu']:.0f} s the "
          f"operator's CPU, at most {api_s:.0f} s the API server's answers (Events, posted in the background, left out; "
          f"a reconcile's reads go at once, so this counts them more than once), and at least "
          f"{max(0.0, f['reconcile seconds'] - f['cpu'] - api_s):.0f} s waiting for a thread or the event loop")
    print("a ModelDeployment's path, from the operator's log (median, max, of how many):")
    for label, median, most, n in figures["steps"]:
        print(f"  {label}: {median:.1f} s, {most:.1f} s, {n}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=500)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--idle-seconds", type=float, default=60)
    ap.add_argument("--settle", type=float, default=10, help="seconds after all are Ready before the idle window")
    ap.add_argument("--resync", type=float, default=60, help="the operator's resyncSeconds (its default: 60)")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--no-router", action="store_true", help="the operator part only")
    ap.add_argument("--heartbeats", choices=("default", "slow"), default="default",
                    help="default: the test bed's kwok keeps the nodes; slow: a kwok of the bench's own, which "
                    "renews their leases every 15 s and patches their status every 10-20 minutes")
    ap.add_argument("--cluster-only", action="store_true", help="no operator: the bench makes each one's Service, "
                    "Job and (once the Job completed) Deployment itself, to measure the cluster's floor "
                    "(scale_floor.py)")
    ap.add_argument("--floor-extras", default="", help="with --cluster-only: comma-separated requests of the "
                    "operator's to add to the floor (status, gets, events)")
    ap.add_argument("--router-only", action="store_true", help="the router part only, with ModelDeployments and "
                    "EndpointSlices made by the bench (no operator, nodes or pods)")
    args = ap.parse_args()
    cluster, api, namespace = open_testbed("bench-scale")
    # The CRD, as the integration tests install it (a fresh test bed has none).
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    cluster.wait_established(f"{PLURAL}.{GROUP}")
    work = Path(tempfile.mkdtemp(prefix="scale-"))
    core = client.CoreV1Api(api)
    kwok = sc.BenchKwok(cluster.kubeconfig, work) if args.heartbeats == "slow" and not args.router_only else None
    try:
        if args.router_only:
            import scale_router

            scale_router.fake_endpoints(api, namespace, args.models)
            return scale_router.run(args, api, cluster, namespace, work)
        start = time.monotonic()
        if kwok is not None:
            kwok.start()
        sc.create_nodes(core, args.nodes, args.heartbeats)
        sc.wait_until(lambda: sc.ready_nodes(core) >= args.nodes, 300, f"{args.nodes} Ready nodes", every=2)
        print(f"{args.nodes} kwok nodes Ready in {time.monotonic() - start:.1f} s", flush=True)
        # The burst starts on a cluster of nodes in service, not on one still taking them in
        sc.wait_until(lambda: sc.ready_nodes(core, in_service=True) >= args.nodes, 300,
                      f"{args.nodes} nodes in service", every=2)
        print(f"{args.nodes} kwok nodes in service (the node controller's not-ready taint lifted) in "
              f"{time.monotonic() - start:.1f} s", flush=True)
        if args.cluster_only:
            import scale_floor

            sc.make_volume(core, namespace, str(work / "weights"))
            extras = frozenset(x for x in args.floor_extras.split(",") if x)
            cpu, began = sr.CpuByProcess(), time.monotonic()
            floor = scale_floor.run(api, namespace, args.models, model, args.timeout, extras)
            print(f"the cluster alone, {args.models} ModelDeployments on {args.nodes} nodes: Services and Jobs made "
                  f"{floor['services and jobs made']:.1f} s, all Jobs complete and Deployments made (the floor of "
                  f"\"all reconciled\") {floor['all made']:.1f} s, all Deployments Available "
                  f"{floor['all available']:.1f} s")
            print(cpu.took(time.monotonic() - began))
            return
        figures, mine, every = operator_part(args, api, cluster, namespace, work)
        report(args, figures, mine, every)
        if not args.no_router:
            import scale_router

            scale_router.run(args, api, cluster, namespace, work)
    finally:
        sc.clean_up(api, namespace, kwok)


if __name__ == "__main__":
    main()
