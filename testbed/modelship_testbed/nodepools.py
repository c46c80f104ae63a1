"""kwok node pools and the cluster-level objects the test bed adds after start-up.

Pool nodes are plain Node objects annotated `kwok.x-k8s.io/node=fake`; kwok keeps them Ready
and moves the pods bound to them to Running, without running anything. Pool sizes are
reconciled: `up --gpu-nodes 5` on a running test bed adds or removes nodes to reach 5.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from kubernetes import client
from kubernetes.client.rest import ApiException

from .config import TestbedConfig

POOL_LABEL = "modelship.io/pool"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
STORAGE_CLASS = "modelship-local"
PROVISIONER = "modelship.io/local-node"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}

# What one fake node of each pool declares.
POOLS = {
    "gpu": {"cpu": "48", "memory": "512Gi", "gpus": 8},
    "cpu": {"cpu": "32", "memory": "128Gi", "gpus": 0},
}


def pool_labels(pool: str, name: str, gpu_product: str, gpus: int) -> dict[str, str]:
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        POOL_LABEL: pool,
    }
    if gpus:
        # As NVIDIA's GPU feature discovery labels a node (gpu.memory in MiB: an H100 80GB's).
        labels.update({"nvidia.com/gpu.product": gpu_product, "nvidia.com/gpu.count": str(gpus),
                       "nvidia.com/gpu.present": "true", "nvidia.com/gpu.memory": "81559"})
    return labels


def kwok_node(pool: str, index: int, gpu_product: str) -> dict:
    shape = POOLS[pool]
    name = f"kwok-{pool}-{index:04d}"
    capacity = {"cpu": shape["cpu"], "memory": shape["memory"], "pods": "110", "ephemeral-storage": "1Ti"}
    if shape["gpus"]:
        capacity[GPU_RESOURCE] = str(shape["gpus"])
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {**pool_labels(pool, name, gpu_product, shape["gpus"]), "type": "kwok"},
        },
        "spec": {"taints": [GPU_TAINT] if shape["gpus"] else []},
        "status": {"allocatable": capacity, "capacity": capacity,
                   "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "osImage": "kwok",
                                "kernelVersion": "", "kubeletVersion": "fake", "kubeProxyVersion": "fake",
                                "containerRuntimeVersion": "", "machineID": "", "systemUUID": "", "bootID": ""}},
    }


def create_node(api: client.CoreV1Api, body: dict) -> None:
    """Create a node; one that exists already is left as it is."""
    try:
        api.create_node(body)
    except ApiException as e:
        if e.status != 409:
            raise


def delete_node(api: client.CoreV1Api, name: str) -> None:
    """Delete a node; one that is gone already is fine."""
    try:
        api.delete_node(name)
    except ApiException as e:
        if e.status != 404:
            raise


def reconcile_pools(api: client.CoreV1Api, cfg: TestbedConfig, sizes: dict[str, int],
                    log: Callable[[str], None]) -> None:
    existing = {
        n.metadata.name: n.metadata.labels.get(POOL_LABEL)
        for n in api.list_node(label_selector="type=kwok").items
        if n.metadata.name.startswith("kwok-")
    }
    to_create, to_delete = [], []
    for pool, size in sizes.items():
        want = {f"kwok-{pool}-{i:04d}" for i in range(size)}
        have = {name for name, p in existing.items() if p == pool and name.startswith(f"kwok-{pool}-")}
        to_create += [kwok_node(pool, int(n.rsplit("-", 1)[1]), cfg.gpu_product) for n in sorted(want - have)]
        to_delete += sorted(have - want)
    if not to_create and not to_delete:
        return

    with ThreadPoolExecutor(max_workers=16) as pool:
        for i, _ in enumerate(pool.map(lambda body: create_node(api, body), to_create), 1):
            if i % 250 == 0 or i == len(to_create):
                log(f"  created {i}/{len(to_create)} kwok nodes")
        list(pool.map(lambda name: delete_node(api, name), to_delete))
    if to_delete:
        log(f"  deleted {len(to_delete)} kwok nodes")


def ensure_storage_class(api: client.StorageV1Api) -> None:
    body = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": STORAGE_CLASS,
                     "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }
    try:
        api.create_storage_class(body)
    except ApiException as e:
        if e.status != 409:
            raise
