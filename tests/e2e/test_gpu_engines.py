"""End to end: the vLLM and SGLang examples (examples/vllm-gpu.yaml, examples/sglang-gpu.yaml)
applied with kubectl while the operator runs, (a) scheduled on a kwok GPU pool, (b) on a
process-backed GPU node where the pod runs the engine's fake and answers through the router
to the real `openai` client."""

from __future__ import annotations

import ipaddress
import json

import httpx
import pytest

from ..conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.localnode, pytest.mark.slow]


def test_the_extra_gpu_node_runs_pods_of_its_own_apart_from_the_local_node(cluster, namespace, gpu_node,
                                                                          local_node):
    from modelship_testbed.demo import pod_ready
    from modelship_testbed.localnode.extra import tolerations

    node = json.loads(cluster.kubectl("get", "node", gpu_node.name, "-o", "json"))
    assert node["metadata"]["labels"]["modelship.io/pool"] == "gpu"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "1"
    cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}, "spec": {
        "nodeSelector": {"kubernetes.io/hostname": gpu_node.name}, "tolerations": tolerations(gpu_node.name, 1),
        "terminationGracePeriodSeconds": 2, "containers": [{
            "name": "web", "image": "busybox", "resources": {"limits": {"nvidia.com/gpu": "1"}},
            "command": ["sh", "-c", "echo started; exec python3 -m http.server 8000 --bind $(POD_IP)"],
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "readinessProbe": {"tcpSocket": {"port": 8000}, "periodSeconds": 1}}]}}, namespace)
    get = lambda: json.loads(cluster.kubectl("get", "pod", "web", "-n", namespace, "-o", "json"))  # noqa: E731
    pod = wait_for(lambda: (p := get()) and pod_ready(p) and p, 60, "pod web Ready on the GPU node",
                   lambda: cluster.kubectl("get", "pods", "-n", namespace, "-o", "wide") + gpu_node.log()[-2000:])
    assert pod["spec"]["nodeName"] == gpu_node.name
    ip = pod["status"]["podIP"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(gpu_node.pod_cidr)
    assert httpx.get(f"http://{ip}:8000/", timeout=10).status_code == 200
    assert "started" in cluster.kubectl("logs", "-n", namespace, "web")  # through its own kubelet-streaming
    # The test bed's local node is as it was: untainted, its pool, Ready.
    local = json.loads(cluster.kubectl("get", "node", local_node, "-o", "json"))
    assert not local["spec"].get("taints")
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in local["status"]["conditions"])
