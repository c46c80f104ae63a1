"""Autoscaling on the test bed: real llama-server pods on the local node, the router as a
process, the operator as a process (so that a test can restart it).

- a burst scales a model up, a quiet period down, and the ModelDeployment's spec is never
  written (`kubectl diff` of the applied YAML stays empty, its generation stays 1); an
  operator restarted during the burst scales nothing down;
- a model at zero answers a request the router held (streamed and not); a full queue gets a
  clear 429; a held client that leaves is dropped;
- on a pool with room for one model, two models asked for in turn both answer, each yielding
  to the other; a model of higher priority does not yield to one of lower.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from modelship_testbed.procs import collect_stderr, stop

from ..conftest import wait_for
from .conftest import free_port, md_status, preload_claim

pytestmark = [pytest.mark.integration, pytest.mark.localnode, pytest.mark.slow]


def smollm2(name: str, pool: str = "local", resources: dict | None = None, **spec) -> dict:
    body = {"apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": {"model": {"repo": "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", "quantization": "Q4_1"},
                     "pool": pool, "storage": {"existingClaim": "preloaded"},
                     "serving": {"contextLength": 1024, "chatTemplate": "chatml", "threads": 1, "parallel": 2},
                     **spec}}
    if resources:
        body["spec"]["resources"] = resources
    return body


class Router:
    def __init__(self, cluster, namespace: str, *flags: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("modelship")), "router", "-n", namespace, "--host", "127.0.0.1",
             "--port", str(self.port), "--allow-cidr", "127.0.0.0/8", "--scrape-interval", "0.5", *flags],
            env={**os.environ, "KUBECONFIG": cluster.kubeconfig}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        self.said = collect_stderr(self.proc)
        wait_for(lambda: httpx.get(f"{self.url}/health", timeout=2).status_code == 200, 20, "the router to start")

    def close(self) -> None:
        code = stop(self.proc, 20)
        said = self.said()
        assert code in (0, -15) and "Traceback" not in said, said[-3000:]

    def load(self) -> dict:
        return httpx.get(f"{self.url}/modelship/load", timeout=5).json()["models"]


@pytest.fixture
def router_factory(cluster, namespace):
    made: list[Router] = []

    def make(*flags: str) -> Router:
        made.append(Router(cluster, namespace, *flags))
        return made[-1]

    yield make
    for r in made:
        r.close()


def start_operator(op, router: Router) -> None:
    op.start(config={"autoscaler": {"routerUrls": [router.url], "intervalSeconds": 0.5}, "resyncSeconds": 10})


def chat(router: Router, model: str, max_tokens: int = 8, stream: bool = False, timeout: float = 180,
         question: str = "What is the capital of France?") -> httpx.Response:
    return httpx.post(f"{router.url}/v1/chat/completions", timeout=timeout, json={
        "model": model, "max_tokens": max_tokens, "temperature": 0, "stream": stream,
        "messages": [{"role": "user", "content": question}]})


def deployment_replicas(cluster, namespace: str, name: str) -> int | None:
    out = cluster.kubectl("get", "deployment", name, "-n", namespace, "-o", "json", check=False)
    try:
        return json.loads(out)["spec"]["replicas"]
    except (ValueError, KeyError):
        return None


def md_object(cluster, namespace: str, name: str) -> dict:
    return json.loads(cluster.kubectl("get", "md", name, "-n", namespace, "-o", "json"))


def events(cluster, namespace: str, name: str) -> list[tuple[str, str]]:
    items = json.loads(cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                                       f"involvedObject.name={name},involvedObject.kind=ModelDeployment", "-o",
                                       "json"))["items"]
    return [(e["reason"], e["message"]) for e in items]


def kubectl_diff(cluster, path: Path, namespace: str) -> subprocess.CompletedProcess:
    from modelship_testbed import binaries

    return subprocess.run([str(binaries.path("kubectl")), f"--kubeconfig={cluster.kubeconfig}", "diff",
                           "--server-side", "-n", namespace, "-f", str(path)], capture_output=True, text=True)


def test_a_burst_scales_up_a_quiet_period_down_and_the_spec_is_never_written(cluster, namespace, local_node,
                                                                           local_operator, router_factory,
                                                                           tmp_path):
    preload_claim(cluster, namespace)
    router = router_factory()
    start_operator(local_operator, router)
    md = smollm2("burst", replicas=1, minReplicas=1, maxReplicas=2,
                 autoscaling={"metrics": [{"type": "InFlight", "targetPerReplica": 1}], "windowSeconds": 3,
                              "scaleDownDelaySeconds": 12})
    applied = tmp_path / "burst.yaml"
    applied.write_text(yaml.safe_dump(md))
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", str(applied))
    wait_for(lambda: md_status(cluster, namespace, "burst").get("phase") == "Ready", 240, "burst to be Ready")
    before = md_object(cluster, namespace, "burst")
    assert before["metadata"]["generation"] == 1

    # Four clients keep answers open (2 per replica at target 1 would ask for 4; maxReplicas is 2).
    quiet = threading.Event()

    def client(i: int) -> int:
        n = 0
        while not quiet.is_set() and n < 200:
            assert chat(router, "burst", max_tokens=48, question=f"Client {i}: tell me about Paris.").status_code == 200
            n += 1
        return n

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client, i) for i in range(4)]
        try:
            wait_for(lambda: deployment_replicas(cluster, namespace, "burst") == 2, 90, "a scale-up to 2",
                     lambda: json.dumps(md_status(cluster, namespace, "burst"), indent=1) + local_operator.log()[-3000:])
            st = md_status(cluster, namespace, "burst")["autoscaling"]
            assert st["desiredReplicas"] == 2 and st["reason"] == "ScaledUp" and st["metric"] == "InFlight"
            assert st["target"] == 1 and st["value"] > 1
            # The burst goes on past the scale-down delay (so that only the restart guard can
            # hold the replicas after the restart, not the time since the scale-up); then the
            # operator restarts mid-burst, and the burst ends right after.
            time.sleep(13)
            local_operator.stop()
            restarted = time.monotonic()  # the operator starts after this: its guard lasts 12 s from then
            start_operator(local_operator, router)
        finally:
            quiet.set()
        # No scale-down storm: for the delay after the restart, 2 replicas stay, whatever the load.
        # Sampled while the clients' last answers end (each can take seconds on a busy machine).
        samples = 0
        while time.monotonic() < restarted + 9:
            assert deployment_replicas(cluster, namespace, "burst") == 2, local_operator.log()[-3000:]
            samples += 1
            time.sleep(0.5)
        assert samples > 0, "the operator took over 9 s to start: the restart guard was not looked at"
        assert all(f.result() > 0 for f in futures)
    wait_for(lambda: deployment_replicas(cluster, namespace, "burst") == 1, 60, "the scale-down to 1",
             lambda: json.dumps(md_status(cluster, namespace, "burst"), indent=1) + local_operator.log()[-3000:])
    after = md_object(cluster, namespace, "burst")
    assert after["metadata"]["generation"] == 1 and after["spec"] == before["spec"]
    assert after["status"]["autoscaling"]["reason"] == "ScaledDown"
    said = kubectl_diff(cluster, applied, namespace)
    assert said.returncode == 0 and not said.stdout, said.stdout + said.stderr
    reasons = [r for r, _ in events(cluster, namespace, "burst")]
    assert "ScaledUp" in reasons and "ScaledDown" in reasons, reasons


def scaled_to_zero(cluster, namespace: str, name: str) -> bool:
    st = md_status(cluster, namespace, name)
    return (st.get("autoscaling") or {}).get("desiredReplicas") == 0 and st.get("replicas") == 0


def test_a_model_at_zero_answers_held_requests_and_a_full_queue_is_told_so(cluster, namespace, local_node,
                                                                          local_operator, router_factory):
    preload_claim(cluster, namespace)
    router = router_factory("--hold-max-requests", "2", "--hold-keepalive-seconds", "0.2")
    start_operator(local_operator, router)
    cluster.apply(smollm2("sleepy", replicas=1, minReplicas=0, maxReplicas=1,
                          autoscaling={"idleSeconds": 5, "windowSeconds": 2, "scaleDownDelaySeconds": 2}), namespace)
    wait_for(lambda: md_status(cluster, namespace, "sleepy").get("phase") == "Ready", 240, "sleepy to be Ready")

    def asleep() -> None:
        """At zero, and the router knows it (its pod's endpoint has left the EndpointSlice)."""
        wait_for(lambda: scaled_to_zero(cluster, namespace, "sleepy")
                 and router.load()[f"{namespace}/sleepy"]["endpoints"] == 0, 90, "sleepy to scale to zero",
                 lambda: json.dumps(md_status(cluster, namespace, "sleepy"), indent=1) + local_operator.log()[-2000:])

    asleep()
    st = md_status(cluster, namespace, "sleepy")
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert (st["phase"], ready["reason"]) == ("Ready", "ScaledToZero")
    assert "sleepy" in {m["id"] for m in httpx.get(f"{router.url}/v1/models").json()["data"]}

    # Not streamed: held, then answered.
    started = time.monotonic()
    r = chat(router, "sleepy", max_tokens=16)
    woke_in = time.monotonic() - started
    assert r.status_code == 200 and "paris" in r.json()["choices"][0]["message"]["content"].lower(), r.text
    print(f"woke from zero and answered in {woke_in:.2f} s")
    assert md_status(cluster, namespace, "sleepy")["autoscaling"]["reason"] == "Woken"

    # Streamed: SSE comments while held, then the answer's events.
    asleep()
    lines = []
    with httpx.stream("POST", f"{router.url}/v1/chat/completions", timeout=180, json={
            "model": "sleepy", "max_tokens": 8, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}) as s:
        assert s.status_code == 200
        lines = [line for line in s.iter_lines() if line]
    assert lines[0].startswith(":") and "starting" in lines[0], lines[:3]
    assert any(line.startswith("data: {") for line in lines) and lines[-1] == "data: [DONE]", lines[-3:]

    # With the operator away (nothing wakes the model), held requests stay held: a full queue
    # (two) tells the third to retry; a held client that leaves is dropped; the operator back,
    # the two held are answered.
    asleep()
    local_operator.stop()
    with httpx.stream("POST", f"{router.url}/v1/chat/completions", timeout=30, json={
            "model": "sleepy", "max_tokens": 8, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}) as s:
        lines = s.iter_lines()
        first = next(lines)  # the first keep-alive comment: it is held
        assert s.status_code == 200 and first.startswith(": modelship"), (s.status_code, first)
        assert router.load()[f"{namespace}/sleepy"]["held"] == 1, (router.load(), list(lines))
    wait_for(lambda: router.load()[f"{namespace}/sleepy"]["held"] == 0, 5, "the client that left to be dropped")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        held = [pool.submit(chat, router, "sleepy") for _ in range(2)]
        wait_for(lambda: router.load()[f"{namespace}/sleepy"]["held"] == 2, 10, "two held requests")
        third = chat(router, "sleepy", timeout=10)
        assert third.status_code == 429 and third.headers.get("retry-after"), third.text
        assert third.json()["error"]["code"] == "model_starting" and "starting" in third.json()["error"]["message"]
        start_operator(local_operator, router)
        assert [f.result().status_code for f in held] == [200, 200]


def local_cpu_free(cluster, node: str) -> int:
    """Millicores of the local node no pod has asked for."""
    def milli(q: str) -> int:
        return int(q[:-1]) if q.endswith("m") else int(float(q) * 1000)

    n = json.loads(cluster.kubectl("get", "node", node, "-o", "json"))
    pods = json.loads(cluster.kubectl("get", "pods", "-A", "--field-selector", f"spec.nodeName={node}", "-o",
                                      "json"))["items"]
    used = sum(milli(((c.get("resources") or {}).get("requests") or {}).get("cpu", "0"))
               for p in pods if p["status"].get("phase") not in ("Succeeded", "Failed")
               for c in p["spec"]["containers"])
    return milli(n["status"]["allocatable"]["cpu"]) - used


def test_two_models_on_a_pool_with_room_for_one_take_turns_and_priority_holds(cluster, namespace, local_node,
                                                                             local_operator, router_factory):
    preload_claim(cluster, namespace)
    router = router_factory("--hold-max-seconds", "120")
    start_operator(local_operator, router)
    # Each asks for a little more than half of the local node's free CPU: one fits, not two.
    half = local_cpu_free(cluster, local_node) // 2 + 50
    small = {"requests": {"cpu": f"{half}m", "memory": "64Mi"}}
    turns = {"autoscaling": {"idleSeconds": 600, "minResidencySeconds": 3, "windowSeconds": 2}}
    cluster.apply(smollm2("left", resources=small, replicas=1, minReplicas=0, maxReplicas=1, **turns), namespace)
    wait_for(lambda: md_status(cluster, namespace, "left").get("phase") == "Ready", 240, "left to be Ready")
    cluster.apply(smollm2("right", resources=small, replicas=0, minReplicas=0, maxReplicas=1, **turns), namespace)
    wait_for(lambda: (md_status(cluster, namespace, "right").get("autoscaling") or {}).get("desiredReplicas") == 0,
             60, "right to start at zero")
    for model in ("right", "left", "right"):
        r = chat(router, model, timeout=150)
        assert r.status_code == 200 and r.json()["model"] == model, r.text
    st = md_status(cluster, namespace, "left")
    assert st["autoscaling"]["reason"] == "Yielded" and st["autoscaling"]["yieldedTo"] == "right"
    assert "make room in pool local for ModelDeployment right" in st["autoscaling"]["message"]
    assert any(r == "Yielded" for r, _ in events(cluster, namespace, "left"))
    assert any(r == "RoomMade" for r, _ in events(cluster, namespace, "right"))

    # A model of higher priority serving; one of lower priority asks for a replica: no yield.
    cluster.apply(smollm2("right", resources=small, replicas=0, minReplicas=0, maxReplicas=1,
                          autoscaling={**turns["autoscaling"], "priority": 10}), namespace)
    cluster.apply(smollm2("left", resources=small, replicas=1, minReplicas=1, maxReplicas=1,
                          autoscaling=turns["autoscaling"]), namespace)
    # (left may have waited for room before, for right's residency: the event that counts is
    # the one that names right's priority)
    wait_for(lambda: any(r == "WaitingForRoom" and "right: priority 10 above 0" in m
                         for r, m in events(cluster, namespace, "left")), 60,
             "left to wait for room, right staying for its priority",
             lambda: f"{events(cluster, namespace, 'left')}\n{local_operator.log()[-3000:]}")
    time.sleep(5)
    assert deployment_replicas(cluster, namespace, "right") == 1
