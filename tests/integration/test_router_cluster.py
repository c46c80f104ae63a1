"""`modelship router` on the test bed: endpoints discovered from the operator's Services,
requests routed by model to real llama-server pods on the local node."""

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
from modelship_testbed.procs import collect_stderr, stop

from ..conftest import wait_for
from .conftest import free_port, md_status, preload_claim

pytestmark = [pytest.mark.integration, pytest.mark.localnode, pytest.mark.slow]


def smollm2(name: str, replicas: int = 1, fallback: list[str] | None = None) -> dict:
    md = {"apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
          "spec": {"model": {"repo": "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", "quantization": "Q4_1"},
                   "pool": "local", "replicas": replicas, "storage": {"existingClaim": "preloaded"},
                   "serving": {"contextLength": 1024, "chatTemplate": "chatml", "threads": 1, "parallel": 2}}}
    if fallback:
        md["spec"]["router"] = {"fallback": fallback}
    return md


def start_router(cluster, namespace: str, port: int, *flags: str) -> subprocess.Popen:
    proc = subprocess.Popen([str(Path(sys.executable).with_name("modelship")), "router", "-n", namespace,
                             "--host", "127.0.0.1", "--port", str(port), "--allow-cidr", "127.0.0.0/8", *flags],
                            env={**os.environ, "KUBECONFIG": cluster.kubeconfig}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    proc.said = collect_stderr(proc)
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200, 20,
             "the router to start")
    return proc


def stop_router(proc: subprocess.Popen) -> None:
    code = stop(proc, 20)  # killed rather than left running; the assert below says so
    said = proc.said()
    print("\n".join(line for line in said.splitlines() if '"path"' not in line)[-5000:])  # (with a failure's report)
    assert code in (0, -15) and "Traceback" not in said, said[-3000:]


@pytest.fixture
def router(cluster, namespace):
    port = free_port()
    proc = start_router(cluster, namespace, port)
    yield f"http://127.0.0.1:{port}"
    stop_router(proc)


def served(router: str) -> set[str]:
    try:
        return {m["id"] for m in httpx.get(f"{router}/v1/models", timeout=5).json()["data"]}
    except httpx.HTTPError:
        return set()


def ask(router: str, model: str, max_tokens: int = 4,
        question: str = "What is the capital of France?") -> httpx.Response:
    return httpx.post(f"{router}/v1/chat/completions", timeout=120, json={
        "model": model, "max_tokens": max_tokens, "temperature": 0,
        "messages": [{"role": "user", "content": question}]})


def predicted(cluster, namespace: str, name: str) -> dict[str, float]:
    """Tokens each of the ModelDeployment's pods has generated, from llama-server's metrics."""
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", f"modelship.io/deployment={name},"
                                      "app.kubernetes.io/component=server", "-o", "json"))["items"]
    out = {}
    for pod in pods:
        ip = pod["status"].get("podIP")
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])
        if not ready or not ip or not ip.startswith("127.") or pod["metadata"].get("deletionTimestamp"):
            continue  # serving, and on loopback (the local node's pods)
        text = httpx.get(f"http://{ip}:8080/metrics", timeout=20).text
        out[pod["metadata"]["name"]] = sum(float(line.split()[-1]) for line in text.splitlines()
                                          if line.startswith("llamacpp:tokens_predicted_total"))
    return out


def test_models_are_routed_by_name_spread_over_replicas_and_survive_a_pod_going(cluster, namespace, local_node,
                                                                                operator, router):
    preload_claim(cluster, namespace)
    operator.start()
    cluster.apply(smollm2("alpha", replicas=3), namespace)
    cluster.apply(smollm2("beta"), namespace)
    for name in ("alpha", "beta"):
        wait_for(lambda: md_status(cluster, namespace, name).get("phase") == "Ready", 240, f"{name} to be Ready")
    wait_for(lambda: {"alpha", "beta", f"{namespace}/alpha"} <= served(router), 30, "the router to see both")
    # Routed by model: llama-server answers with its --alias, the ModelDeployment's name.
    assert ask(router, "beta").json()["model"] == "beta"
    r = ask(router, "alpha", max_tokens=16)
    assert r.json()["model"] == "alpha" and "paris" in r.json()["choices"][0]["message"]["content"].lower()
    # A burst of 24 conversations spreads over all three replicas (their own counters say so):
    # each conversation has its home (one question asked 24 times would stay on one or two,
    # as many as the load needs: prefix-cache's bound).
    before = predicted(cluster, namespace, "alpha")
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(lambda i: ask(router, "alpha", question=f"Conversation {i}: what is the capital of "
                                                                       f"France?").status_code, range(24)))
    assert codes == [200] * 24
    after = predicted(cluster, namespace, "alpha")
    assert len(after) == 3 and all(after[p] > before.get(p, 0) for p in after), (before, after)
    # A pod deleted during a burst: no request is lost (the ones it had not answered go elsewhere).
    victim = sorted(after)[0]

    # The burst lasts a set time, not a set count (a fast machine ended 40 requests before the
    # pod went): four clients ask one after another until 3 s past the deletion.
    stop = threading.Event()

    def client(_: int) -> list[tuple[int, float]]:
        out: list[tuple[int, float]] = []
        while not stop.is_set() and len(out) < 500:  # (a cap, should a request take no time at all)
            out.append((ask(router, "alpha", max_tokens=8).status_code, time.monotonic()))
        return out

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client, i) for i in range(4)]
        try:
            time.sleep(0.5)
            deleted_at = time.monotonic()
            cluster.kubectl("delete", "pod", victim, "-n", namespace, "--wait=false")
            time.sleep(max(0.0, deleted_at + 3 - time.monotonic()))
        finally:
            stop.set()
        results = [r for f in futures for r in f.result()]
    assert [code for code, _ in results] == [200] * len(results), results
    assert sum(1 for _, t in results if t > deleted_at + 1) >= 4, "the burst ended before the pod went"


def test_a_primary_whose_pods_go_is_answered_by_its_fallback_and_two_routers_hold_one_limit(
        cluster, namespace, local_node, operator, tmp_path):
    preload_claim(cluster, namespace)
    operator.start()
    cluster.apply(smollm2("alpha", fallback=["beta"]), namespace)
    cluster.apply(smollm2("beta"), namespace)
    for name in ("alpha", "beta"):
        wait_for(lambda: md_status(cluster, namespace, name).get("phase") == "Ready", 240, f"{name} to be Ready")
    # Two router replicas that share their counters: 20 requests a minute for everyone (no keys).
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    procs = []
    try:
        for i, port in enumerate(ports):
            config = tmp_path / f"router-{i}.yaml"
            config.write_text(json.dumps({"defaultCaller": {"requestsPerMinute": 20}, "peers": [urls[1 - i]],
                                          "peerInterval": 0.5}))
            procs.append(start_router(cluster, namespace, port, "--config", str(config)))
        wait_for(lambda: all({"alpha", "beta"} <= served(u) for u in urls), 30, "the routers to see both")
        # The primary's pod deleted during a burst: every request is answered, by alpha while it
        # can, by beta (its fallback) while alpha has no ready replica.
        pod = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", "modelship.io/deployment=alpha,"
                                         "app.kubernetes.io/component=server", "-o", "json"))["items"][0]
        answered: list[tuple[int, str]] = []
        started = time.monotonic()
        cluster.kubectl("delete", "pod", pod["metadata"]["name"], "-n", namespace, "--wait=false")
        i = 0
        while time.monotonic() - started < 12:
            r = ask(urls[i % 2], "alpha")
            answered.append((r.status_code, r.headers.get("x-modelship-model", "")))
            i += 1
            time.sleep(max(0.0, started + i / 4 - time.monotonic()))  # 4 a second, every other to each router
        took = time.monotonic() - started
    finally:
        for p in procs:
            stop_router(p)
    codes = [c for c, _ in answered]
    assert set(codes) <= {200, 429}, answered
    by = {m for c, m in answered if c == 200}
    assert f"{namespace}/beta" in by, answered  # the fallback answered while alpha had no ready replica
    ideal = 20 + took / 3
    admitted = codes.count(200)
    print(f"two routers on the test bed: {admitted} admitted of {len(codes)} in {took:.1f} s; one bucket: "
          f"{ideal:.1f}; error {(admitted - ideal) / ideal:+.1%}")
    assert abs(admitted - ideal) <= 0.15 * ideal, (admitted, ideal, answered)
