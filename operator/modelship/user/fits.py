"""Whether a model fits a pool: memory needed against the memory one node of the pool offers.

    needed   = weights x 1.2 + KV allowance
    KV       = 2 (K and V) x layers x KV heads x head dim x context length x 2 bytes (f16),
               where the model's metadata gives all four; else 10% of the weights
    capacity = GPU pool: the node label `nvidia.com/gpu.memory` (MiB) x GPUs (`--gpus`, else
               the pool's `maxGpus`, else 1), of the best node the pool's nodeSelector selects;
               CPU pool (no `gpuResource`): the largest allocatable memory among its nodes

`needed_bytes`, `pool_capacity` and `fits` are pure; `cluster_pool` reads the operator's pools
(its settings ConfigMap) and the pool's nodes from the cluster.
"""

from __future__ import annotations

import math
import re
from typing import Any

OVERHEAD = 1.2  # weights x this: the engine's buffers and activations
KV_FRACTION = 0.10  # KV allowance when the model's shape is not known
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # MiB, set by NVIDIA's GPU feature discovery
OPERATOR_SELECTOR = "app.kubernetes.io/component=operator"
FORMULA = ("needed = weights x 1.2 + KV (2 x layers x KV heads x head dim x context x 2 bytes where known, "
           "else 10% of the weights); capacity = nvidia.com/gpu.memory (MiB) x GPUs of the best node of a GPU "
           "pool, or the largest allocatable memory of a CPU pool's nodes")


def kv_allowance(weights: int, context_length: int | None = None, layers: int | None = None,
                 kv_heads: int | None = None, head_dim: int | None = None) -> int:
    if context_length and layers and kv_heads and head_dim:
        return 2 * layers * kv_heads * head_dim * context_length * 2
    return math.ceil(weights * KV_FRACTION)


def needed_bytes(weights: int, **shape: int | None) -> int:
    return math.ceil(weights * OVERHEAD) + kv_allowance(weights, **shape)


def _quantity_bytes(q: str) -> int:
    from ..units import quantity_bytes

    return quantity_bytes(q)


def pool_capacity(pool: Any, nodes: list[dict], gpus: int | None = None) -> int | None:
    """Memory of the best node of `pool` (a PoolProfile) among `nodes` (Node objects as JSON);
    None when no node tells."""
    best = None
    for node in nodes:
        labels = (node.get("metadata") or {}).get("labels") or {}
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        if pool.gpu_resource:
            per_gpu = labels.get(GPU_MEMORY_LABEL)
            if not per_gpu or not str(per_gpu).isdigit():
                continue
            count = gpus or pool.max_gpus or 1
            if allocatable.get(pool.gpu_resource) is not None:
                count = min(count, int(_quantity_bytes(str(allocatable[pool.gpu_resource]))))
            have = int(per_gpu) * 1024 * 1024 * count
        elif allocatable.get("memory"):
            have = _quantity_bytes(str(allocatable["memory"]))
        else:
            continue
        best = have if best is None else max(best, have)
    return best


def fits(needed: int, capacity: int | None) -> bool | None:
    return None if capacity is None else needed <= capacity


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(I?)B?\s*", re.I)


def parse_size(text: str) -> int:
    """'8GB' -> 8e9, '5GiB' / '5Gi' -> 5 x 2^30, '700M' -> 7e8, '1024' -> 1024 bytes."""
    m = _SIZE.fullmatch(text)
    if not m:
        raise ValueError(f"{text!r} is not a size (examples: 8GB, 5GiB, 700MB)")
    number, unit, binary = m.groups()
    power = "KMGTP".find(unit.upper()) + 1 if unit else 0
    return int(float(number) * ((1024 if binary else 1000) ** power))


# --- the cluster -----------------------------------------------------------------------------

def operator_pools(core: Any, namespace: str | None) -> tuple[dict, str]:
    """The pools of the operator's settings ConfigMap (and where they came from)."""
    import yaml

    from ..settings import PoolProfile, default_pools

    found = (core.list_namespaced_config_map(namespace, label_selector=OPERATOR_SELECTOR) if namespace else
             core.list_config_map_for_all_namespaces(label_selector=OPERATOR_SELECTOR))
    for cm in found.items:
        text = (cm.data or {}).get("settings.yaml")
        if text is None:
            continue
        pools = (yaml.safe_load(text) or {}).get("pools")
        where = f"ConfigMap {cm.metadata.namespace}/{cm.metadata.name}"
        if not pools:
            return default_pools(), where
        return {name: PoolProfile.model_validate(p) for name, p in pools.items()}, where
    return default_pools(), "the operator's default pools (no settings ConfigMap found)"


def cluster_pool(kube: Any, pool_name: str, operator_namespace: str | None, gpus: int | None) -> dict:
    """{'pool', 'capacity' (bytes or None), 'nodes'} for `pool_name`; UserError when the cluster
    cannot be reached or has no such pool."""
    import json

    import urllib3

    from .common import UserError

    core = kube.core()
    try:
        pools, where = operator_pools(core, operator_namespace)
        if pool_name not in pools:
            raise UserError(f"no pool {pool_name!r} in {where}; it has: {', '.join(sorted(pools)) or 'none'}")
        pool = pools[pool_name]
        selector = ",".join(f"{k}={v}" for k, v in pool.node_selector.items())
        raw = core.list_node(label_selector=selector or None, _preload_content=False)
        nodes = json.loads(raw.data).get("items") or []
    except urllib3.exceptions.HTTPError as e:
        raise UserError(f"cannot reach the cluster ({type(e).__name__}) to read pool {pool_name!r}; check "
                        f"`kubectl cluster-info`, or leave out --pool") from None
    return {"pool": pool_name, "capacity": pool_capacity(pool, nodes, gpus), "nodes": len(nodes)}
