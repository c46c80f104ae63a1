"""The objects `scale.py` makes on the test bed, and takes away again: its kwok nodes (a pool
of its own, tainted so that no other test's pods land there), a namespace, a volume that
holds the weights already (a PersistentVolume bound to a claim: every ModelDeployment names
it in `storage.existingClaim`), and the ServiceAccount the operator runs as, so that the
API server's audit log tells its requests apart from everyone else's on a shared test bed.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

from kubernetes import client
from kubernetes.client.rest import ApiException
from modelship_testbed.nodepools import create_node, delete_node, kwok_node

POOL = "scale"
BENCH_LABEL = "modelship.io/bench"  # on every cluster-scoped object the bench makes
TAINT = {"key": BENCH_LABEL, "value": POOL, "effect": "NoSchedule"}
CLAIM = "weights"
# The operator's pools for the bench: only its nodes, tolerating their taint (the GPU pool is
# unused, but the operator wants a default one).
POOLS = {POOL: {"nodeSelector": {"modelship.io/pool": POOL}, "tolerations": [
    {"key": BENCH_LABEL, "operator": "Equal", "value": POOL, "effect": "NoSchedule"}]}}
POOLS[f"{POOL}-gpu"] = {**POOLS[POOL], "gpuResource": "nvidia.com/gpu"}


def node(i: int) -> dict:
    """A kwok node of the test bed's CPU shape, named, labelled and tainted as the bench's own."""
    body = kwok_node("cpu", i, "")
    name = body["metadata"]["name"] = f"scale-{i:04d}"
    labels = body["metadata"]["labels"]
    labels.pop("type")
    labels.update({"kubernetes.io/hostname": name, "modelship.io/pool": POOL, BENCH_LABEL: POOL})
    body["spec"]["taints"] = [TAINT]
    return body


def create_nodes(core: client.CoreV1Api, count: int) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda body: create_node(core, body), [node(i) for i in range(count)]))


def delete_nodes(core: client.CoreV1Api) -> int:
    names = [n.metadata.name for n in core.list_node(label_selector=f"{BENCH_LABEL}={POOL}").items]

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: delete_node(core, name), names))
    return len(names)


def ready_nodes(core: client.CoreV1Api) -> int:
    return sum(1 for n in core.list_node(label_selector=f"{BENCH_LABEL}={POOL}").items
               if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or []))


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


def clean_up(api: client.ApiClient, namespace: str) -> None:
    """Everything the bench made: the namespace (and all in it), then the cluster-scoped objects."""
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    for call in (lambda: core.delete_namespace(namespace),
                 lambda: rbac.delete_collection_cluster_role_binding(label_selector=f"{BENCH_LABEL}={POOL}"),
                 lambda: core.delete_collection_persistent_volume(label_selector=f"{BENCH_LABEL}={POOL}")):
        try:
            call()
        except ApiException as e:
            if e.status != 404:
                print(f"clean-up: {e.status} {e.reason}")
    print(f"clean-up: deleted {delete_nodes(core)} nodes, namespace {namespace}", flush=True)


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
