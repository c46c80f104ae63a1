"""kwok node pools: GPU pods go to GPU nodes only."""

from __future__ import annotations

import json
import uuid

import pytest

from ..conftest import wait_for

pytestmark = pytest.mark.integration


def test_gpu_pod_lands_on_a_gpu_node_not_a_cpu_node(cluster, namespace, core):
    from modelship_testbed.nodepools import kwok_node

    # Nodes of this test's own, so the check holds whatever pools the cluster already has.
    tag = "t" + uuid.uuid4().hex[:6]  # a letter first: all digits would read as a YAML number
    gpu, cpu = kwok_node("gpu", 9000, "NVIDIA-H100-80GB-HBM3"), kwok_node("cpu", 9000, "")
    for n in (gpu, cpu):
        n["metadata"]["name"] += f"-{tag}"
        n["metadata"]["labels"]["kubernetes.io/hostname"] = n["metadata"]["name"]
        n["metadata"]["labels"]["test"] = tag
        core.create_node(n)
    try:
        pods = []
        for i in range(3):
            pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"g{i}"}, "spec": {
                "nodeSelector": {"test": tag},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "containers": [{"name": "c", "image": "ghcr.io/huggingface/text-generation-inference:3.0.1",
                                "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}})
        cluster.apply(pods, namespace)

        def placed():
            items = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json"))["items"]
            running = [p for p in items if p["status"].get("phase") == "Running"]
            return items if len(running) == 3 else None

        items = wait_for(placed, 60, "three GPU pods Running",
                         lambda: cluster.kubectl("get", "pods", "-n", namespace, "-o", "wide"))
        assert {p["spec"]["nodeName"] for p in items} == {gpu["metadata"]["name"]}
        assert all(p["status"]["podIP"].startswith("127.") for p in items)
    finally:
        for n in (gpu, cpu):
            core.delete_node(n["metadata"]["name"])
