"""Faults while serving: a serving pod killed under steady load (real llama-server replicas on
the local node behind the router, a process), and a node deleted under a model's pods (kwok
nodes of the test's own: the pods are replaced on the pool's other node and the router's view
follows; the router is only asked about its registry, never to send traffic to kwok pods).

(test_router_cluster.py deletes a pod gracefully during a 3 s burst of plain requests; here
the pod is force-deleted, its process killed, during 20 s of streamed and plain requests.)"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import httpx
import pytest

from ..conftest import wait_for
from .conftest import md_status, preload_claim, wait_phase
from .test_autoscaling import router_factory, smollm2  # noqa: F401 - the fixture

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def serving_pods(cluster, ns: str, name: str) -> list[dict]:
    pods = json.loads(cluster.kubectl("get", "pods", "-n", ns, "-l", f"modelship.io/deployment={name},"
                                      "app.kubernetes.io/component=server", "-o", "json"))["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def one_request(url: str, model: str, stream: bool, i: int) -> str:
    """One chat completion; its outcome: "ok", "failed before streaming" (an error status or
    no byte of the answer), or "broken mid-stream" (the stream began, then ended without [DONE])."""
    body = {"model": model, "max_tokens": 12, "temperature": 0, "stream": stream,
            "messages": [{"role": "user", "content": f"Question {i}: name a colour."}]}
    started = False
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
            if r.status_code != 200:
                r.read()
                return f"failed before streaming: HTTP {r.status_code} {r.text[:200]}"
            text = ""
            for piece in r.iter_text():
                started = started or bool(piece)
                text += piece
        if stream:
            return "ok" if "data: [DONE]" in text else "broken mid-stream: no [DONE]"
        return "ok" if json.loads(text).get("choices") else f"failed before streaming: {text[:200]}"
    except (httpx.HTTPError, ValueError) as e:
        return f"broken mid-stream: {type(e).__name__}" if started and stream else \
            f"failed before streaming: {type(e).__name__}: {e}"


@pytest.mark.localnode
def test_a_serving_pod_killed_under_steady_load_fails_no_request_that_had_not_started_streaming(
        cluster, namespace, local_node, local_operator, router_factory):
    """Two llama-server replicas, four clients (two streaming, two not) for 20 s; one pod
    force-deleted (its process killed) 8 s in. Every plain request and every stream that had
    not begun is answered (the router retries those on the other replica)."""
    preload_claim(cluster, namespace)
    local_operator.start()
    cluster.apply(smollm2("steady", replicas=2), namespace)
    wait_phase(cluster, local_operator, "steady", "Ready", timeout=240)
    router = router_factory()
    wait_for(lambda: (router.load().get(f"{namespace}/steady") or {}).get("readyEndpoints") == 2, 30,
             "the router to see both replicas", lambda: json.dumps(router.load()))
    outcomes: list[tuple[bool, str, float]] = []
    stop = threading.Event()

    def client(c: int) -> None:
        i = 0
        while not stop.is_set():
            outcomes.append((c % 2 == 0, one_request(router.url, "steady", c % 2 == 0, c * 1000 + i), time.monotonic()))
            i += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(8)
        victim = serving_pods(cluster, namespace, "steady")[0]["metadata"]["name"]
        killed_at = time.monotonic()
        cluster.kubectl("delete", "pod", victim, "-n", namespace, "--grace-period=0", "--force", "--wait=false")
        time.sleep(12)
    finally:
        stop.set()
        for t in threads:
            t.join(90)
    tally = Counter((("stream" if s else "plain"), o.split(":")[0]) for s, o, _ in outcomes)
    after = sum(1 for _, _, t in outcomes if t > killed_at)
    print(f"{len(outcomes)} requests ({after} ended after the kill): {dict(tally)}")
    failed = [o for _, o, _ in outcomes if o.startswith("failed before streaming")]
    assert not failed, failed[:5]
    assert not [o for s, o, _ in outcomes if not s and o != "ok"]  # no plain request lost
    assert after >= 8, "the load ended before the pod went"
    assert tally[("stream", "ok")] >= 4 and tally[("plain", "ok")] >= 4
    # ... and the Deployment replaces the pod; the router sees two ready replicas again
    wait_for(lambda: (router.load().get(f"{namespace}/steady") or {}).get("readyEndpoints") == 2, 180,
             "the replacement pod to be ready in the router", lambda: json.dumps(router.load()))


class RegistryOnly:
    """A router process that is only asked what it knows (`/modelship/load`): no network filter
    (kwok pods' addresses are not on loopback) and no scraping, so nothing is sent to them."""

    def __init__(self, cluster, namespace: str):
        import os
        import subprocess
        import sys
        from pathlib import Path

        from modelship_testbed.procs import collect_stderr

        from .conftest import free_port

        self.namespace = namespace
        self.url = f"http://127.0.0.1:{(port := free_port())}"
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("modelship")), "router", "-n", namespace, "--host", "127.0.0.1",
             "--port", str(port), "--scrape-interval", "0"],
            env={**os.environ, "KUBECONFIG": cluster.kubeconfig}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        self.said = collect_stderr(self.proc)
        wait_for(lambda: httpx.get(f"{self.url}/health", timeout=2).status_code == 200, 20, "the router to start")

    def models(self) -> dict:
        try:
            return httpx.get(f"{self.url}/modelship/load", timeout=5).json()["models"]
        except httpx.HTTPError:
            return {}

    def ready(self, model: str) -> int | None:
        return (self.models().get(f"{self.namespace}/{model}") or {}).get("readyEndpoints")

    def endpoints(self, model: str) -> int | None:
        return (self.models().get(f"{self.namespace}/{model}") or {}).get("endpoints")

    def close(self) -> None:
        from modelship_testbed.procs import stop

        code = stop(self.proc, 20)
        said = self.said()
        assert code in (0, -15) and "Traceback" not in said, said[-3000:]


def restore_node(core, metadata: dict) -> None:
    from modelship_testbed.nodepools import kwok_node

    node = kwok_node("cpu", 9100, "")
    node["metadata"].update(name=metadata["name"], labels=metadata["labels"])
    core.create_node(node)


def second_node(core, pools: dict) -> str:
    """Another kwok node in the CPU pool of `kwok_pools` (same labels, its own name)."""
    from modelship_testbed.nodepools import kwok_node

    tag = pools["cpu"]["nodeSelector"]["test"]
    node = kwok_node("cpu", 9101, "")
    node["metadata"]["name"] += f"-{tag}"
    node["metadata"]["labels"].update({"kubernetes.io/hostname": node["metadata"]["name"], "test": tag})
    core.create_node(node)
    return node["metadata"]["name"]


def test_a_node_deleted_under_a_models_pods_they_are_replaced_and_the_router_follows(
        cluster, core, namespace, local_node, local_operator, kwok_pools):
    """Two replicas on a kwok CPU pool of two nodes; the node under one of them deleted: the
    pod is replaced on the other node, and the router's registry (`/modelship/load`, with
    scraping off: nothing is sent to kwok pods) counts two ready endpoints again."""
    from .conftest import TINY_SHA, seed_volume

    extra = second_node(core, kwok_pools)
    cpu_node = next(n.metadata.name for n in core.list_node(label_selector=(
        f"test={kwok_pools['cpu']['nodeSelector']['test']},modelship.io/pool=cpu")).items if n.metadata.name != extra)
    try:
        local_operator.start(pools=kwok_pools)
        cluster.apply({"apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment",
                       "metadata": {"name": "spread"},
                       "spec": {"model": {"repo": "modelship-test/tiny-llama-GGUF"}, "pool": "cpu", "replicas": 2,
                                "storage": {"accessMode": "ReadWriteMany"}}}, namespace)
        seed_volume(cluster, namespace, "spread-weights", "modelship-test/tiny-llama-GGUF", TINY_SHA,
                    {"tiny.Q4_K_M.gguf": b"gguf"})
        wait_phase(cluster, local_operator, "spread", "Ready", timeout=120)
        watcher = RegistryOnly(cluster, namespace)
        try:
            wait_for(lambda: watcher.ready("spread") == 2, 30, "the router to see both replicas",
                     lambda: json.dumps(watcher.models()))
            pods = serving_pods(cluster, namespace, "spread")
            nodes = {p["spec"]["nodeName"] for p in pods}
            victim_node = pods[0]["spec"]["nodeName"]
            victim_body = core.read_node(victim_node).to_dict()["metadata"]
            core.delete_node(victim_node)
            survivor = ({extra, cpu_node} - {victim_node})
            print(f"pods on {sorted(nodes)}; deleted node {victim_node}")

            def replaced() -> list[dict] | None:
                now = serving_pods(cluster, namespace, "spread")
                ok = [p for p in now if p["spec"].get("nodeName") in survivor
                      and any(c["type"] == "Ready" and c["status"] == "True"
                              for c in (p.get("status") or {}).get("conditions") or [])]
                return ok if len(ok) == 2 else None

            wait_for(replaced, 120, "both pods to run on the remaining node",
                     lambda: cluster.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False))
            wait_for(lambda: watcher.ready("spread") == 2 and watcher.endpoints("spread") == 2, 60,
                     "the router's registry to count two endpoints again", lambda: json.dumps(watcher.models()))
            assert md_status(cluster, namespace, "spread")["phase"] == "Ready"
            if victim_node != extra:  # the fixture's own node: made again, for the fixture to delete
                restore_node(core, victim_body)
        finally:
            watcher.close()
    finally:
        from kubernetes.client.exceptions import ApiException

        try:
            core.delete_node(extra)
        except ApiException as e:  # (the test deleted it already)
            assert e.status == 404, e
