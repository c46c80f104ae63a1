"""End to end: the vLLM and SGLang examples (examples/vllm-gpu.yaml, examples/sglang-gpu.yaml)
applied with kubectl while the operator runs, (a) scheduled on a kwok GPU pool, (b) on a
process-backed GPU node where the pod runs the engine's fake and answers through the router
to the real `openai` client."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import httpx
import pytest

from ..conftest import wait_for

# The operator's fixtures come from the integration layer. `local_operator` (the operator as a
# process of this checkout) rather than the chart's: the chart's runs on the test bed's local
# node, whose code is the checkout that started the test bed, not necessarily this one.
from ..integration.conftest import (POOLS, TINY_SHA, crd_installed, fake_hub, kwok_pools,  # noqa: F401
                                    local_operator)
from ..integration.conftest import free_port, md_status, seed_volume
from ..integration.test_operator import node_labels, serving_pods
from ..integration.test_router_cluster import served, start_router, stop_router

pytestmark = [pytest.mark.integration, pytest.mark.localnode, pytest.mark.slow]


def test_the_extra_gpu_node_runs_pods_of_its_own_apart_from_the_local_node(cluster, namespace, gpu_node,
                                                                          local_node):
    from modelship_testbed.demo import pod_ready
    from modelship_testbed.localnode.extra import tolerations

    node = json.loads(cluster.kubectl("get", "node", gpu_node.name, "-o", "json"))
    assert node["metadata"]["labels"]["modelship.io/pool"] == "gpu"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "2"
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


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# What each engine's pod is, as the contract between the operator and the test bed says.
ENGINES = {
    "vllm": {"file": "vllm-gpu.yaml", "image": "vllm/vllm-openai:", "command": ["vllm", "serve"],
             "tp": "--tensor-parallel-size"},
    "sglang": {"file": "sglang-gpu.yaml", "image": "lmsysorg/sglang:",
               "command": ["python3", "-m", "sglang.launch_server"], "tp": "--tp-size"},
}
# The Hub is not reachable from the test bed: the example's repo becomes a test repo of the
# operator's catalog (safetensors), whose files the test puts on the volume as a download would.
TEST_REPO = "modelship-test/tiny-llama"
TEST_FILES = {"config.json": b"{}", "model.safetensors": b"abc"}


def user_example(engine: str) -> dict:
    """The example as a user has it, with only its repo changed for the test bed."""
    import yaml

    doc = yaml.safe_load((EXAMPLES / ENGINES[engine]["file"]).read_text())
    assert doc["spec"]["engine"]["type"] == engine and doc["spec"]["model"]["repo"].count("/") == 1
    doc["spec"]["model"]["repo"] = TEST_REPO
    return doc


def deploy(cluster, namespace: str, operator, pools: dict, engine: str) -> tuple[dict, dict]:
    """Apply the example with the operator running; wait until it is Ready. Returns the
    manifest applied and its status."""
    md = user_example(engine)
    name = md["metadata"]["name"]
    token = (md["spec"]["model"].get("tokenSecretRef") or {}).get("name")
    if token:  # a gated model's example names its token's Secret: there is one, as the example says
        cluster.kubectl("create", "secret", "generic", token, "--from-literal=token=hf_test", "-n", namespace)
    operator.start(pools=pools)
    cluster.apply(md, namespace)
    seed_volume(cluster, namespace, f"{name}-weights", TEST_REPO, TINY_SHA, TEST_FILES)
    status = wait_for(lambda: (st := md_status(cluster, namespace, name)).get("phase") == "Ready" and st, 240,
                      f"ModelDeployment {name} to be Ready", lambda: cluster.kubectl(
                          "get", "md,deploy,job,pod", "-n", namespace, "-o", "wide", check=False)
                      + "\n--- the engine's log\n" + cluster.kubectl(
                          "logs", "-n", namespace, "-l", "app.kubernetes.io/component=server", "--tail=20",
                          "--prefix", check=False) + "\n--- operator log\n" + operator.log()[-2000:])
    assert status["resolved"]["engine"] == engine and status["resolved"]["sha"] == TINY_SHA
    assert status["readyReplicas"] == md["spec"]["replicas"]
    return md, status


def check_pods(cluster, namespace: str, md: dict, engine: str) -> list[dict]:
    """The serving pods are the engine's, as the contract says, on gpu pool nodes."""
    name, gpus = md["metadata"]["name"], md["spec"]["gpus"]
    want = ENGINES[engine]
    pods = [p for p in serving_pods(cluster, namespace, name) if not p["metadata"].get("deletionTimestamp")]
    assert len(pods) == md["spec"]["replicas"], [p["metadata"]["name"] for p in pods]
    for pod in pods:
        assert node_labels(cluster, pod["spec"]["nodeName"])["modelship.io/pool"] == "gpu"
        assert pod["metadata"]["labels"]["modelship.io/engine"] == engine
        c = pod["spec"]["containers"][0]
        assert c["image"].startswith(want["image"]), c["image"]
        assert c["command"] == want["command"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)
        args = c["args"]
        model_dir = args[0] if engine == "vllm" else args[args.index("--model-path") + 1]
        assert model_dir.endswith(f"/snapshots/{TINY_SHA}"), args
        assert args[args.index("--served-model-name") + 1] == name
        assert args[args.index("--port") + 1] == "8080" and args[args.index(want["tp"]) + 1] == str(gpus)
        assert c["readinessProbe"]["httpGet"]["path"] == "/health"
        assert {"name": "HF_HUB_OFFLINE", "value": "1"} in c["env"]
    return pods


@pytest.mark.parametrize("engine", ENGINES)
def test_example_is_scheduled_on_the_kwok_gpu_pool(engine, cluster, namespace, local_operator, kwok_pools):
    md, status = deploy(cluster, namespace, local_operator, kwok_pools, engine)
    pods = check_pods(cluster, namespace, md, engine)
    tag = kwok_pools["gpu"]["nodeSelector"]["test"]
    assert all(node_labels(cluster, p["spec"]["nodeName"])["test"] == tag for p in pods)  # this test's kwok node
    assert status["endpoint"]["openAIBaseURL"] == f"http://{md['metadata']['name']}.{namespace}.svc/v1"


@pytest.mark.parametrize("engine", ENGINES)
def test_example_on_a_process_backed_gpu_node_answers_through_the_router(engine, cluster, namespace,
                                                                        local_operator, gpu_node):
    import openai
    from modelship_testbed.localnode.extra import tolerations

    pools = {**POOLS, "gpu": {"nodeSelector": {"modelship.io/pool": "gpu", "test": gpu_node.labels["test"]},
                              "gpuResource": "nvidia.com/gpu", "maxGpus": gpu_node.gpus,
                              "tolerations": tolerations(gpu_node.name, gpu_node.gpus)}}
    md, _ = deploy(cluster, namespace, local_operator, pools, engine)
    name, alias = md["metadata"]["name"], md["spec"]["router"]["aliases"][0]
    for pod in check_pods(cluster, namespace, md, engine):
        assert pod["spec"]["nodeName"] == gpu_node.name
        assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(gpu_node.pod_cidr)
    port = free_port()
    router = f"http://127.0.0.1:{port}"
    proc = start_router(cluster, namespace, port)
    try:
        wait_for(lambda: {name, alias, f"{namespace}/{name}"} <= served(router), 60, "the router to list the model")
        client = openai.OpenAI(base_url=f"{router}/v1", api_key="unused", timeout=60, max_retries=0)
        question = [{"role": "user", "content": "What is the capital of France?"}]
        answer = client.chat.completions.create(model=name, messages=question, max_tokens=12, temperature=0)
        assert answer.model == name and answer.choices[0].message.content
        assert answer.usage.completion_tokens > 0 and answer.usage.prompt_tokens > 0
        chunks = list(client.chat.completions.create(model=alias, messages=question, max_tokens=12, temperature=0,
                                                     stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == answer.choices[0].message.content  # the fake is deterministic: the same answer
        assert chunks[-1].choices == [] and chunks[-1].usage is not None  # usage last, in a chunk of its own
        assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == \
            (answer.usage.prompt_tokens, answer.usage.completion_tokens)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model", messages=question, max_tokens=4)
    finally:
        stop_router(proc)
