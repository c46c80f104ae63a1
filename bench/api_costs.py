"""What each kind of request the operator makes costs the test bed's control plane, and why
the Services are the last thing `scale.py`'s 500 ModelDeployments wait for.

    .venv/bin/python bench/api_costs.py [--requests 400] [--at-once 8] [--rounds 2] [--profile FILE]

Part 1, per request: `--requests` of each kind, `--at-once` at a time, and the CPU time the
API server, etcd and the controller-manager used meanwhile (their processes', psutil),
divided by the requests; and the client's own. The kinds are the operator's, built by the
operator's own code (`modelship.manifests`, `reconcile.plan`):
- `configmap patch`: a small merge patch, the baseline (one ConfigMap per thread);
- `get absent`: the GET of a name that is not there (the operator's read before a create);
- `event`: an Event on a ModelDeployment;
- `status write`: the status of a ModelDeployment's first reconcile (resolved, its download
  started: six conditions, 2 KB), as the operator writes it (a JSON patch of the whole
  status); and the same as a merge patch (`status merge`);
- `service apply`, `deployment apply`: the children, by server-side apply as the operator
  makes them (each a new object).

Part 2, what the CRD's schema costs a status write: the same write against copies of the
ModelDeployment CRD under other groups (`VARIANTS`): as shipped; without the CEL rules
(`x-kubernetes-validations`) of its `spec`; without any; with a status that has no schema;
with each rule made to skip a value that did not change (`optionalOldSelf`).
The API server evaluates every rule of the object at every status write, though the status
subresource cannot change the spec (ratcheting drops their errors, not their evaluation).

Part 3, the Services: 200 Services made 4 at once (as the operator does), alone and while
4, 8 and 16 threads write statuses. The API server allocates ClusterIPs one at a time
(`service_rate.py`), so how fast Services come depends on how long each of its requests
waits for the CPU, that is, on everything else it serves.

`--profile FILE` adds, after part 1, 20 s of the API server's CPU profile while `--at-once`
threads write statuses (the test bed started with `MODELSHIP_TESTBED_PROFILING=1`); read it
with `go tool pprof -top -cum ~/.cache/modelship/kubernetes-v*/bin/kube-apiserver FILE`
(bench/README.md §7, "Stop 35": where a status write's CPU goes).

Part 4, the same 200 Services while 8 threads write statuses of each copy of part 2: how much
of what the status writes take from the Services is their schema's (the rules' evaluation
allocates, and the API server's garbage collector then slows every request, the ClusterIP
allocation's too).

Each part runs `--rounds` times, interleaved, so that the spread shows. Run it on a test bed
nothing else uses (`modelship testbed up`; it installs the CRD from `crds/`): the CPU is the
processes', whoever asked. Every namespace and CRD copy it makes is deleted at the end, on
Ctrl-C too, and it waits until they are gone.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import yaml  # noqa: E402
from kubernetes import client  # noqa: E402

from testbed_cluster import open_testbed  # noqa: E402

GROUP, VERSION, PLURAL = "modelship.io", "v1alpha1", "modeldeployments"
CRD = ROOT / "crds" / "modeldeployments.modelship.io.yaml"
SETTLE = 20.0  # seconds after the CRD copies are made, before part 2 measures
CONTROL_PLANE = ("kube-apiserver", "etcd", "kube-controller-manager")
JSON_PATCH, MERGE_PATCH, APPLY = ("application/json-patch+json", "application/merge-patch+json",
                                  "application/apply-patch+yaml")


def spec() -> dict:
    """scale.py's ModelDeployment spec, on a volume of its own."""
    return {"model": {"repo": "modelship-test/tiny-llama-GGUF", "quantization": "Q4_K_M"}, "replicas": 2,
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
            "serving": {"contextLength": 1024, "threads": 1}}


class Bodies:
    """The operator's own bodies for one ModelDeployment: the status of its first reconcile
    (resolved, its volume and download Job made), its Service, its Deployment."""

    def __init__(self, namespace: str):
        from modelship.api import ModelDeployment, ResolvedModel
        from modelship.reconcile.plan import plan
        from modelship.reconcile.policy import place
        from modelship.reconcile.types import Observed
        from modelship.settings import Settings
        from tests.integration.conftest import catalog

        entry = next(e for e in catalog() if e["repo"] == spec()["model"]["repo"])
        resolved = ResolvedModel.model_validate(entry)
        md = ModelDeployment.model_validate({"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment",
                                             "metadata": {"name": "m", "namespace": namespace, "uid": "u",
                                                          "generation": 1}, "spec": spec()})
        settings = Settings()
        p = plan(md, resolved, Observed(), settings, "2026-12-04T00:00:00Z", "http://127.0.0.1:9")
        self.status = p.status
        self.md, self.resolved, self.settings = md, resolved, settings
        self.placement = place(md, resolved.engine, settings)

    def service(self, name: str) -> dict:
        from modelship import manifests
        return manifests.service(self.md.model_copy(update={"metadata": {**self.md.metadata, "name": name}}))

    def deployment(self, name: str) -> dict:
        from modelship import manifests
        md = self.md.model_copy(update={"metadata": {**self.md.metadata, "name": name}})
        body = manifests.deployment(md, self.resolved, self.placement, self.settings, replicas=0)
        body["metadata"].pop("ownerReferences", None)  # (no owner here: the namespace takes them)
        return body


def cpu_of(processes: list[psutil.Process]) -> dict[str, float]:
    out = {name: 0.0 for name in CONTROL_PLANE}
    for p in processes:
        try:
            t = p.cpu_times()
            out[p.name()] += t.user + t.system
        except psutil.Error:
            pass
    return out


def control_plane() -> list[psutil.Process]:
    found = [p for p in psutil.process_iter(["name"]) if p.info["name"] in CONTROL_PLANE]
    missing = set(CONTROL_PLANE) - {p.info["name"] for p in found}
    if missing:
        sys.exit(f"api_costs: no {', '.join(sorted(missing))} process on this machine: run it on the test bed "
                 f"(`modelship testbed up`)")
    return found


def run_all(fn: Callable[[int], None], items: range, at_once: int) -> None:
    """fn over the items, at_once at a time; on an error or Ctrl-C the requests not yet sent
    are dropped, not waited for."""
    pool = ThreadPoolExecutor(at_once)
    try:
        list(pool.map(fn, items))
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()


def measure(processes: list[psutil.Process], fn: Callable[[int], None], count: int, at_once: int,
            offset: int) -> tuple[float, dict[str, float], float]:
    """(requests a second, control-plane CPU ms per request by process, client CPU ms per request)."""
    me = psutil.Process()
    before, mine, start = cpu_of(processes), me.cpu_times(), time.monotonic()
    run_all(fn, range(offset, offset + count), at_once)
    took = time.monotonic() - start
    after, mine_after = cpu_of(processes), me.cpu_times()
    client_ms = (mine_after.user + mine_after.system - mine.user - mine.system) * 1000 / count
    return count / took, {k: (after[k] - before[k]) * 1000 / count for k in CONTROL_PLANE}, client_ms


def _strip_rules(o) -> None:
    if isinstance(o, dict):
        o.pop("x-kubernetes-validations", None)
        for v in o.values():
            _strip_rules(v)
    elif isinstance(o, list):
        for v in o:
            _strip_rules(v)


# The copies of the CRD that part 2 compares: what each takes out of the shipped schema.
VARIANTS: dict[str, Callable[[dict], None]] = {
    "as shipped": lambda schema: None,
    "no CEL rules in spec": lambda schema: _strip_rules(schema["properties"]["spec"]),
    "no CEL rules at all": _strip_rules,
    "status without a schema": lambda schema: schema["properties"].update(
        status={"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
    "rules skip unchanged values": lambda schema: _guard_rules(schema["properties"]["spec"]),
}


def _guard_rules(node: dict, correlatable: bool = True) -> None:
    """Each rule of a node Kubernetes can pair with its old value skips that value unchanged
    (`optionalOldSelf`); the transition rules, which compare with it already, stay as they are."""
    if correlatable:
        for rule in node.get("x-kubernetes-validations") or []:
            if "oldSelf" not in rule["rule"]:
                rule["rule"] = f"(oldSelf.hasValue() && self == oldSelf.value()) || ({rule['rule']})"
                rule["optionalOldSelf"] = True
    for child in (node.get("properties") or {}).values():
        _guard_rules(child, correlatable)
    if isinstance(node.get("additionalProperties"), dict):
        _guard_rules(node["additionalProperties"], correlatable)
    if isinstance(node.get("items"), dict):  # the items of a list pair up only by a map key
        _guard_rules(node["items"], correlatable and node.get("x-kubernetes-list-type") == "map")


def crd_copy(group: str, variant: str) -> dict:
    """The shipped CRD under another group (a resource of its own, so the copies sit side by
    side), less what the variant takes out."""
    crd = yaml.safe_load(CRD.read_text())
    crd["metadata"] = {"name": f"{PLURAL}.{group}"}
    crd["spec"]["group"] = group
    for short in ("shortNames", "categories"):  # (`kubectl get md` stays the real one's)
        crd["spec"]["names"].pop(short, None)
    for version in crd["spec"]["versions"]:
        VARIANTS[variant](version["schema"]["openAPIV3Schema"])
    return crd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=400, help="requests of each kind in a round")
    ap.add_argument("--at-once", type=int, default=8, help="requests at a time")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of each part")
    ap.add_argument("--profile", type=Path, help="save the API server's CPU profile during status writes here")
    args = ap.parse_args()
    processes = control_plane()
    cluster, api, namespace = open_testbed("api-costs")
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    apps, ext = client.AppsV1Api(api), client.ApiextensionsV1Api(api)
    groups: list[str] = []
    threads = max(16, args.at_once)
    try:
        bodies = Bodies(namespace)
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
        cluster.wait_established(f"{PLURAL}.{GROUP}")
        for i in range(threads):
            core.create_namespaced_config_map(namespace, {"metadata": {"name": f"c{i}"}, "data": {"n": "0"}})
        status_of = {}

        def models(group: str) -> None:
            for i in range(threads):
                custom.create_namespaced_custom_object(group, VERSION, namespace, PLURAL, {
                    "apiVersion": f"{group}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": f"m{i}"},
                    "spec": spec()})

        def status_write(group: str, how: str = "json") -> Callable[[int], None]:
            def write(i: int) -> None:
                status = {**bodies.status, "replicas": i % 3}  # (a different status from the last)
                if how == "json":
                    custom.patch_namespaced_custom_object_status(group, VERSION, namespace, PLURAL, f"m{i % threads}",
                                                                 [{"op": "add", "path": "/status", "value": status}],
                                                                 _content_type=JSON_PATCH)
                else:
                    custom.patch_namespaced_custom_object_status(group, VERSION, namespace, PLURAL, f"m{i % threads}",
                                                                 {"status": status}, _content_type=MERGE_PATCH)
            return write

        models(GROUP)
        status_of[GROUP] = status_write(GROUP)

        def configmap(i: int) -> None:
            core.patch_namespaced_config_map(f"c{i % args.at_once}", namespace, {"data": {"n": str(i)}},
                                             _content_type=MERGE_PATCH, _preload_content=False).data

        def get_absent(i: int) -> None:
            try:
                core.read_namespaced_service(f"absent-{i}", namespace, _preload_content=False).data
            except client.ApiException as e:
                if e.status != 404:
                    raise

        def event(i: int) -> None:
            at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            core.create_namespaced_event(namespace, {
                "metadata": {"name": f"m0.{uuid.uuid4().hex[:12]}"}, "type": "Normal", "reason": "Created",
                "message": "Created Deployment m0", "involvedObject": {
                    "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "name": "m0", "namespace": namespace},
                "source": {"component": "modelship-operator"}, "firstTimestamp": at, "lastTimestamp": at, "count": 1},
                _preload_content=False).data

        def service(i: int) -> None:
            core.patch_namespaced_service(f"s{i}", namespace, bodies.service(f"s{i}"), field_manager="bench",
                                          force=True, _content_type=APPLY, _preload_content=False).data

        def deployment(i: int) -> None:
            apps.patch_namespaced_deployment(f"d{i}", namespace, bodies.deployment(f"d{i}"), field_manager="bench",
                                             force=True, _content_type=APPLY, _preload_content=False).data

        kinds = [("configmap patch", configmap), ("get absent", get_absent), ("event", event),
                 ("status write", status_of[GROUP]), ("status merge", status_write(GROUP, "merge")),
                 ("service apply", service), ("deployment apply", deployment)]
        print(f"1. per request, {args.requests} of each kind, {args.at_once} at once (CPU ms per request)", flush=True)
        print(f"   {'kind':18s} {'a second':>9s} {'API server':>11s} {'etcd':>6s} {'ctrl-mgr':>9s} {'client':>7s}")
        offset = 0
        for _ in range(args.rounds):
            for name, fn in kinds:
                rate, cpu, mine = measure(processes, fn, args.requests, args.at_once, offset)
                offset += args.requests
                print(f"   {name:18s} {rate:9.0f} {cpu['kube-apiserver']:11.2f} {cpu['etcd']:6.2f} "
                      f"{cpu['kube-controller-manager']:9.2f} {mine:7.2f}", flush=True)

        if args.profile:
            profile_status_writes(cluster, status_of[GROUP], args.profile, args.at_once, offset)
            offset += 10**6

        print("\n2. the status write against copies of the CRD (CPU ms per write)", flush=True)
        for k, variant in enumerate(VARIANTS):
            group = f"v{k}-{uuid.uuid4().hex[:5]}.bench.modelship.io"
            groups.append(f"{PLURAL}.{group}")  # (before it exists: deleted at the end whatever happens)
            ext.create_custom_resource_definition(crd_copy(group, variant))
            cluster.wait_established(f"{PLURAL}.{group}")
            time.sleep(1.0)  # (the new resource's handler is served a moment after)
            models(group)
            status_of[variant] = status_write(group)
        time.sleep(SETTLE)  # (each new CRD has the API server rebuild its OpenAPI documents for a while)
        for _ in range(args.rounds):
            for variant in VARIANTS:
                rate, cpu, _ = measure(processes, status_of[variant], args.requests, args.at_once, offset)
                offset += args.requests
                print(f"   {variant:28s} {rate:5.0f} a second, API server {cpu['kube-apiserver']:5.2f} ms, "
                      f"etcd {cpu['etcd']:4.2f} ms", flush=True)

        print("\n3. 200 Services made 4 at once, alone and while threads write statuses", flush=True)
        for r in range(args.rounds):
            for writers in (0, 4, 8, 16):
                services_under_writes(service, status_of[GROUP], writers, 10**6 * (r + 1) + writers * 1000, threads)

        print("\n4. 200 Services made 4 at once while 8 threads write statuses of each copy of the CRD", flush=True)
        for r in range(args.rounds):
            for k, variant in enumerate(VARIANTS):
                services_under_writes(service, status_of[variant], 8, 10**7 * (r + 1) + k * 1000, threads, variant)
    finally:
        clean_up(core, ext, namespace, groups)


class Writers:
    """`count` threads that write statuses (`write(i)`, i from `first + k` by `step`) until the
    block ends, whatever happens; their writes and failures are counted, not lost."""

    def __init__(self, write: Callable[[int], None], count: int, first: int, step: int):
        self.write, self.first, self.step = write, first, step
        self.stop = threading.Event()
        self.written, self.failed = [0] * count, [0] * count
        self.threads = [threading.Thread(target=self._load, args=(k,), daemon=True) for k in range(count)]

    def _load(self, k: int) -> None:
        n = self.first + k
        while not self.stop.is_set():
            try:
                self.write(n)
                self.written[k] += 1
            except Exception:  # noqa: BLE001 - counted and said
                self.failed[k] += 1
                time.sleep(0.1)
            n += self.step

    def __enter__(self) -> "Writers":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()

    def note(self) -> str:
        return f" ({sum(self.failed)} failed)" if sum(self.failed) else ""


def profile_status_writes(cluster, write: Callable[[int], None], path: Path, at_once: int, offset: int) -> None:
    """The API server's CPU profile (20 s) while `at_once` threads write statuses."""
    with Writers(write, at_once, offset, at_once) as writers:
        time.sleep(2.0)  # (the writes under way before the profile starts)
        proc = subprocess.run([cluster.kubectl_bin, f"--kubeconfig={cluster.kubeconfig}", "get", "--raw",
                               "/debug/pprof/profile?seconds=20"], capture_output=True, timeout=60)
    if proc.returncode != 0:
        sys.exit(f"api_costs: the API server gave no profile ({proc.stderr.decode(errors='replace').strip()}): "
                 f"start the test bed with MODELSHIP_TESTBED_PROFILING=1")
    path.write_bytes(proc.stdout)
    print(f"\n   the API server's CPU profile, 20 s of {sum(writers.written)} status writes{writers.note()}, "
          f"{at_once} at once: {path}", flush=True)


def services_under_writes(service: Callable[[int], None], write: Callable[[int], None], writers: int,
                          first: int, threads: int, label: str = "") -> None:
    """200 Services made 4 at once while `writers` threads write statuses (`Writers`)."""
    took: list[float] = []

    def one(i: int) -> None:
        t0 = time.monotonic()
        service(i)
        took.append(time.monotonic() - t0)

    with Writers(write, writers, 0, threads) as load:
        time.sleep(1.0 if writers else 0.0)
        w0, start = sum(load.written), time.monotonic()
        run_all(one, range(first, first + 200), 4)
        elapsed = time.monotonic() - start
        w1 = sum(load.written)
    note = load.note()
    print(f"   {label or f'{writers:2d} status writers':28s} {200 / elapsed:5.0f} Services a second, "
          f"{statistics.median(took) * 1000:5.0f} ms each (median); "
          f"{(w1 - w0) / elapsed:4.0f} status writes a second meanwhile{note}", flush=True)


def clean_up(core: client.CoreV1Api, ext: client.ApiextensionsV1Api, namespace: str, groups: list[str]) -> None:
    """Delete the CRD copies and the namespace, each whatever became of the others, and wait
    until they are gone (so that the next run starts on a quiet API server)."""
    for name in groups:
        try:
            ext.delete_custom_resource_definition(name)
        except Exception as e:  # noqa: BLE001 - said; the rest is still deleted
            if getattr(e, "status", None) != 404:
                print(f"api_costs: could not delete CRD {name}: {e}", file=sys.stderr)
    try:
        core.delete_namespace(namespace)
    except Exception as e:  # noqa: BLE001
        print(f"api_costs: could not delete namespace {namespace}: {e}", file=sys.stderr)
        return
    print(f"deleting namespace {namespace} and {len(groups)} CRD copies ...", flush=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        left = [n for n in groups if _exists(lambda n=n: ext.read_custom_resource_definition(n))]
        if not left and not _exists(lambda: core.read_namespace(namespace)):
            return
        time.sleep(2.0)
    print(f"api_costs: namespace {namespace} or a CRD copy was still there after 180 s", file=sys.stderr)


def _exists(read: Callable[[], object]) -> bool:
    try:
        read()
        return True
    except client.ApiException as e:
        if e.status == 404:
            return False
        raise


if __name__ == "__main__":
    try:
        main()
    except client.ApiException as e:
        sys.exit(f"api_costs: the API server refused a request: {e.status} {e.reason}: "
                 f"{(e.body or '').strip()[:300]}")
