"""The objects `scale.py` makes on the test bed, and takes away again: its kwok nodes (a pool
of its own, tainted so that no other test's pods land there), a namespace, a volume that
holds the weights already (a PersistentVolume bound to a claim: every ModelDeployment names
it in `storage.existingClaim`), and the ServiceAccount the operator runs as, so that the
API server's audit log tells its requests apart from everyone else's on a shared test bed.

With `--heartbeats slow`, also a kwok process of the bench's own (`BenchKwok`) that manages
only the bench's nodes (they carry its annotation, not the test bed's kwok's) and heartbeats
them rarely.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kubernetes import client
from kubernetes.client.rest import ApiException
from modelship_testbed.nodepools import KWOK_ANNOTATION, create_node, delete_node, kwok_node

POOL = "scale"
BENCH_LABEL = "modelship.io/bench"  # on every cluster-scoped object the bench makes
TAINT = {"key": BENCH_LABEL, "value": POOL, "effect": "NoSchedule"}
CLAIM = "weights"
# The operator's pools for the bench: only its nodes, tolerating their taint (the GPU pool is
# unused, but the operator wants a default one).
POOLS = {POOL: {"nodeSelector": {"modelship.io/pool": POOL}, "tolerations": [
    {"key": BENCH_LABEL, "operator": "Equal", "value": POOL, "effect": "NoSchedule"}]}}
POOLS[f"{POOL}-gpu"] = {**POOLS[POOL], "gpuResource": "nvidia.com/gpu"}

# --heartbeats slow: the bench's kwok manages the nodes annotated so; the test bed's kwok
# manages those annotated kwok.x-k8s.io/node=fake (supervisor.py), which these are not.
BENCH_KWOK_ANNOTATION = "modelship.io/bench-kwok"
# Its node leases: renewed every quarter of this (kwok, as a kubelet), 15 s against the test
# bed's 10 s. Not longer: the controller-manager marks a node unreachable, and its pods not
# ready for good (kwok's pod stages never make a pod with an IP ready again), when neither its
# lease nor its status moved for --node-monitor-grace-period (50 s); with 30 s, one renewal
# came 53 s after the one before on the loaded test bed (100 on 200).
SLOW_LEASE_SECONDS = 60
SLOW_STAGES = Path(__file__).with_name("kwok_slow_stages.yaml")
NOT_IN_SERVICE = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")  # the node controller's taints
SLOW_POD_CIDR, SLOW_NODE_IP = "127.201.0.0/16", "127.198.0.1"  # apart from the test bed's kwok's


def node(i: int, heartbeats: str = "default") -> dict:
    """A kwok node of the test bed's CPU shape, named, labelled and tainted as the bench's own;
    with slow heartbeats, annotated for the bench's kwok instead of the test bed's."""
    body = kwok_node("cpu", i, "")
    if heartbeats == "slow":
        annotations = body["metadata"]["annotations"]
        annotations.pop(KWOK_ANNOTATION)
        annotations[BENCH_KWOK_ANNOTATION] = POOL
    name = body["metadata"]["name"] = f"scale-{i:04d}"
    labels = body["metadata"]["labels"]
    labels.pop("type")
    labels.update({"kubernetes.io/hostname": name, "modelship.io/pool": POOL, BENCH_LABEL: POOL})
    body["spec"]["taints"] = [TAINT]
    return body


def create_nodes(core: client.CoreV1Api, count: int, heartbeats: str = "default") -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda body: create_node(core, body), [node(i, heartbeats) for i in range(count)]))


class BenchKwok:
    """kwok (the test bed's binary) for the bench's nodes only, heartbeating them rarely: node
    leases every SLOW_LEASE_SECONDS / 4, node status by kwok's lease-mode stage (every 10-20
    minutes), its default pod stages. Started and stopped by its pid."""

    def __init__(self, kubeconfig: str, work: Path):
        from modelship_testbed import binaries

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log_path = work / "kwok.log"
        self.args = [str(binaries.path("kwok")), f"--kubeconfig={kubeconfig}", f"--config={SLOW_STAGES}",
                     "--manage-all-nodes=false", f"--manage-nodes-with-annotation-selector={BENCH_KWOK_ANNOTATION}={POOL}",
                     f"--cidr={SLOW_POD_CIDR}", f"--node-ip={SLOW_NODE_IP}", f"--server-address=127.0.0.1:{self.port}",
                     f"--node-lease-duration-seconds={SLOW_LEASE_SECONDS}"]
        self.proc: subprocess.Popen | None = None

    def start(self) -> "BenchKwok":
        import httpx

        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the bench's kwok exited ({self.proc.returncode}): see {self.log_path}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).status_code == 200:
                    print(f"the bench's kwok (pid {self.proc.pid}) serves 127.0.0.1:{self.port}", flush=True)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"the bench's kwok did not answer /healthz within 60 s: see {self.log_path}")

    def stop(self) -> None:
        """SIGTERM to its pid, SIGKILL after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        print(f"the bench's kwok (pid {self.proc.pid}) stopped", flush=True)


def delete_nodes(core: client.CoreV1Api) -> int:
    names = [n.metadata.name for n in core.list_node(label_selector=f"{BENCH_LABEL}={POOL}").items]

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: delete_node(core, name), names))
    return len(names)


def lapsed(core: client.CoreV1Api, namespace: str) -> int:
    """Pods the node controller marked not ready because their node's heartbeat lapsed (events
    NodeNotReady): kwok never makes them ready again, so the figures after that are not the
    operator's."""
    return len(core.list_namespaced_event(namespace, field_selector="reason=NodeNotReady").items)


def ready_nodes(core: client.CoreV1Api, in_service: bool = False) -> int:
    """The bench's nodes that are Ready; `in_service`: and no longer tainted not-ready (or
    unreachable). The node controller taints a new node `node.kubernetes.io/not-ready` and lifts
    the taint once the node is Ready, a read and a patch of the node each time: for 1,000 new
    nodes some 4,000 requests, which went on for 45 s after they were all Ready (bench/README.md
    §7, "Stop 36"). A node still tainted takes no pod."""
    return sum(1 for n in core.list_node(label_selector=f"{BENCH_LABEL}={POOL}").items
               if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
               and not (in_service and any(t.key in NOT_IN_SERVICE for t in n.spec.taints or [])))


def make_volume(core: client.CoreV1Api, namespace: str, path: str) -> None:
    """A claim bound to a volume from the start (no provisioner, no node affinity), which the
    ModelDeployments use as it is: nothing is downloaded into it."""
    pv = f"{namespace}-weights"
    core.create_persistent_volume({
        "metadata": {"name": pv, "labels": {BENCH_LABEL: POOL}},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                 "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": path},
                 "claimRef": {"namespace": namespace, "name": CLAIM}}})
    core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": CLAIM},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                 "resources": {"requests": {"storage": "1Gi"}}}})


def operator_account(core: client.CoreV1Api, rbac: client.RbacAuthorizationV1Api, namespace: str) -> str:
    """A ServiceAccount bound to cluster-admin (the bench measures requests, not RBAC): its
    user name in the audit log."""
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "operator"}})
    rbac.create_cluster_role_binding({
        "metadata": {"name": namespace, "labels": {BENCH_LABEL: POOL}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": namespace}]})
    return f"system:serviceaccount:{namespace}:operator"


def clean_up(api: client.ApiClient, namespace: str, kwok: BenchKwok | None = None) -> None:
    """Everything the bench made: the namespace (and all in it), then the cluster-scoped objects;
    with a kwok of its own, the namespace's pods are let go first (nothing else deletes a pod
    on its nodes), then the nodes, then that kwok."""
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    for call in (lambda: core.delete_namespace(namespace),
                 lambda: rbac.delete_collection_cluster_role_binding(label_selector=f"{BENCH_LABEL}={POOL}"),
                 lambda: core.delete_collection_persistent_volume(label_selector=f"{BENCH_LABEL}={POOL}")):
        try:
            call()
        except ApiException as e:
            if e.status != 404:
                print(f"clean-up: {e.status} {e.reason}")
    try:
        if kwok is not None and kwok.proc is not None:
            deadline = time.monotonic() + 180
            while core.list_namespaced_pod(namespace, limit=1).items and time.monotonic() < deadline:
                time.sleep(2)
        print(f"clean-up: deleted {delete_nodes(core)} nodes, namespace {namespace}", flush=True)
    finally:
        if kwok is not None:
            kwok.stop()


def request_totals(kubectl) -> dict[tuple[str, str], float]:
    """apiserver_request_total by (verb, resource), from the API server's /metrics (every
    client's requests: on a shared test bed, others' too)."""
    text = kubectl("get", "--raw", "/metrics")
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels, value = line[len("apiserver_request_total{"):].rsplit("} ", 1)
        fields = dict(kv.split("=", 1) for kv in labels.split(",") if "=" in kv)
        key = (json.loads(fields.get("verb", '""')), json.loads(fields.get("resource", '""')))
        out[key] = out.get(key, 0.0) + float(value)
    return out


def wait_until(check, timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
