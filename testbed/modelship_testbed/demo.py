"""`modelship demo` (also `modelship testbed demo`): the operator's whole path, for a newcomer.

`run()` brings the test bed up, installs the CRD, starts the operator (its Hub is the test
bed's mirror) and the router, applies examples/smollm2.yaml with the test bed's kubectl,
shows progress until the ModelDeployment is Ready, then asks the model a question through
the router. The helpers here (`render_example`, `wait_ready_pod`, `ask`, ...) also serve the
end-to-end tests, which apply examples/testbed/llama-server-smollm2.yaml without the operator.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import httpx

from . import binaries, cluster, procs
from .config import TestbedConfig
from .paths import kubeconfig_path, state_dir

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "testbed" / "llama-server-smollm2.yaml"
QUESTION = "What is the capital of France?"


def render_example(path: Path = EXAMPLE) -> str:
    """The example with ${SMOLLM2_DIR} set to the folder of SmolLM2's GGUF (fetched if needed)."""
    return path.read_text().replace("${SMOLLM2_DIR}", str(binaries.smollm2_gguf().parent))


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


OPERATOR_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "smollm2.yaml"
DEMO_NAMESPACE = "modelship-demo"


def endpoint_address(status: dict, run: Callable[..., str] | None = None, timeout: float = 30) -> str:
    """The Service that status.endpoint names (`http://NAME.NAMESPACE.svc`), as the router
    resolves it: a ready address from its EndpointSlices (the test bed has no cluster DNS and
    no kube-proxy). The slice follows the pod's readiness a moment later, so wait for it.
    `run(*kubectl_args)` returns kubectl's output (default: the test bed's kubectl)."""
    svc, namespace = status["endpoint"]["url"].split("//", 1)[1].split(".")[:2]
    run = run or kubectl
    deadline = time.monotonic() + timeout
    while True:
        slices = json.loads(run("get", "endpointslices", "-n", namespace, "-l",
                                f"kubernetes.io/service-name={svc}", "-o", "json"))["items"]
        for sl in slices:
            for ep in sl.get("endpoints") or []:
                if (ep.get("conditions") or {}).get("ready"):
                    return f"http://{ep['addresses'][0]}:{sl['ports'][0]['port']}"
        if time.monotonic() > deadline:
            raise cluster.TestbedError(f"Service {svc} has no ready endpoint after {timeout:.0f}s")
        time.sleep(0.5)


def md_line(md: dict | None) -> str:
    """What the demo says about a ModelDeployment: its phase, and the message that explains it."""
    st = (md or {}).get("status") or {}
    if not st.get("phase"):
        return "waiting for the operator to pick it up"
    conds = {c["type"]: c for c in st.get("conditions") or []}
    shown = {"Downloading": conds.get("Downloaded"), "Resolving": conds.get("Resolved")}.get(st["phase"]) \
        or conds.get("Ready", {})
    return f"{st['phase']}: {shown.get('message', '')}"


class MDWatch:
    """Every version of one ModelDeployment that the API server stores, in order: a list (which
    gives the resourceVersion to watch from), then a watch from there (`kubectl get --raw
    ...?watch=1`: one JSON event a line). Made before the apply, it sees every phase, even one
    that lasts a few milliseconds (polling every half second missed them). Should the watch
    end (the server closes watches after a while), it lists and watches again."""

    def __init__(self, namespace: str, name: str, kubectl_argv: list[str] | None = None):
        self.kubectl_argv = kubectl_argv or [str(binaries.path("kubectl")), f"--kubeconfig={kubeconfig_path()}"]
        self.path = (f"/apis/modelship.io/v1alpha1/namespaces/{namespace}/modeldeployments"
                     f"?fieldSelector={quote(f'metadata.name={name}')}")
        self.proc: subprocess.Popen | None = None
        self.lines: queue.Queue = queue.Queue()
        self.pending: list[dict] = []
        self.since = 0.0  # when the current watch started

    def _list_and_watch(self) -> None:
        got = subprocess.run([*self.kubectl_argv, "get", "--raw", self.path], capture_output=True, text=True)
        if got.returncode != 0:
            raise cluster.TestbedError(f"kubectl get --raw {self.path}: {got.stderr.strip()}")
        listed = json.loads(got.stdout)
        self.pending += listed.get("items") or []
        rv = listed["metadata"]["resourceVersion"]
        self.since = time.monotonic()
        self.proc = subprocess.Popen([*self.kubectl_argv, "get", "--raw", f"{self.path}&watch=1&resourceVersion={rv}"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        lines, proc = queue.Queue(), self.proc
        self.lines = lines

        def read() -> None:
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)  # the watch ended

        threading.Thread(target=read, name="md-watch", daemon=True).start()

    def start(self) -> "MDWatch":
        self._list_and_watch()
        return self

    def next(self, timeout: float) -> dict | None:
        """The next version of the ModelDeployment; None when none came within `timeout`."""
        if self.pending:
            return self.pending.pop(0)
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            return None
        event = json.loads(line) if line and line.strip() else None
        if event and event.get("type") in ("ADDED", "MODIFIED"):
            return event["object"]
        if line is None or (event and event.get("type") == "ERROR"):  # ended, or too old a version: again
            self.close()
            time.sleep(max(0.0, self.since + 1 - time.monotonic()))  # not a loop of kubectl runs
            self._list_and_watch()
        return None

    def close(self) -> None:
        if self.proc:
            procs.stop(self.proc, 10)


def start_operator(workdir: Path, hub: str) -> tuple[subprocess.Popen, Path]:
    import yaml

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    workdir.mkdir(parents=True, exist_ok=True)
    # The local node is this demo's CPU pool: its pods really run. The Hub is the mirror.
    config = {"namespaces": [DEMO_NAMESPACE], "hubEndpoint": hub,
              "pools": {"gpu": {"nodeSelector": {"modelship.io/pool": "gpu"}, "gpuResource": "nvidia.com/gpu",
                                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                 "effect": "NoSchedule"}]},
                        "cpu": {"nodeSelector": {"modelship.io/local-node": "true"}}},
              "metricsPort": free_port(), "healthPort": free_port(), "bindHost": "127.0.0.1"}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    log_path = workdir / "operator.log"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig_path()), "MODELSHIP_CONFIG": str(workdir / "config.yaml")}
    with open(log_path, "w") as out:  # the operator has its own copy of the descriptor
        proc = subprocess.Popen([str(Path(sys.executable).with_name("modelship")), "operator"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log_path


def start_router(workdir: Path, port: int) -> tuple[subprocess.Popen, Path]:
    """`modelship router` for the demo's namespace, discovering endpoints through the API
    server, sending only to loopback addresses (the test bed's pods)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "router.log"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig_path())}
    with open(log_path, "w") as out:  # the router has its own copy of the descriptor
        proc = subprocess.Popen([str(Path(sys.executable).with_name("modelship")), "router", "-n", DEMO_NAMESPACE,
                                 "--host", "127.0.0.1", "--port", str(port), "--allow-cidr", "127.0.0.0/8"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log_path


def wait_routed(router: str, model: str, proc: subprocess.Popen, log_path: Path, timeout: float = 30) -> None:
    """Until the router lists `model` (it has seen a ready endpoint)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise cluster.TestbedError(f"the router exited ({proc.returncode}); see {log_path}")
        try:
            if model in {m["id"] for m in httpx.get(f"{router}/v1/models", timeout=5).json()["data"]}:
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise cluster.TestbedError(f"the router does not list {model!r} after {timeout:.0f}s; see {log_path}")
        time.sleep(0.3)


def run(log: Callable[[str], None], hub_mirror: str | None = None) -> str:
    """The operator's path end to end: CRD, operator and router, `kubectl apply` of
    examples/smollm2.yaml, progress until Ready, and a question through the router.
    `hub_mirror`: a Hub for the operator instead of the test bed's mirror (the tests put the
    mirror behind a slow link, so that the download's progress shows on any machine)."""
    start = time.monotonic()
    cluster.up(cluster.UpOptions(), log)
    repo = OPERATOR_EXAMPLE.parents[1]
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(repo / "crds"))
    kubectl("wait", "--for=condition=Established", "crd/modeldeployments.modelship.io", "--timeout=60s")
    # A namespace left terminating by an earlier `kubectl delete` must be gone before reuse
    # (one that simply exists, from an earlier demo, is reused as it is).
    ns = subprocess.run([str(binaries.path("kubectl")), f"--kubeconfig={kubeconfig_path()}", "get", "namespace",
                         DEMO_NAMESPACE, "-o", "jsonpath={.metadata.deletionTimestamp}"],
                        capture_output=True, text=True)
    if ns.returncode == 0 and ns.stdout.strip():
        log(f"waiting for namespace {DEMO_NAMESPACE} (being deleted) to be gone")
        subprocess.run([str(binaries.path("kubectl")), f"--kubeconfig={kubeconfig_path()}", "wait", "--for=delete",
                        f"namespace/{DEMO_NAMESPACE}", "--timeout=120s"], capture_output=True)
    subprocess.run([str(binaries.path("kubectl")), f"--kubeconfig={kubeconfig_path()}", "create", "namespace",
                    DEMO_NAMESPACE], capture_output=True)
    hub = hub_mirror or f"http://127.0.0.1:{TestbedConfig.load().ports.hub_mirror}"
    watch = MDWatch(DEMO_NAMESPACE, "smollm2")
    proc, op_log = start_operator(state_dir() / "demo-operator", hub)
    log(f"operator started, Hub mirror {hub} (log: {op_log})")
    router_port = TestbedConfig.load().ports.router
    router = f"http://127.0.0.1:{router_port}"
    router_proc, router_log = start_router(state_dir() / "demo-operator", router_port)
    log(f"router started: {router} (log: {router_log})")
    try:
        watch.start()  # before the apply: every version of the ModelDeployment from its first
        log(f"kubectl apply -f {OPERATOR_EXAMPLE.relative_to(repo)} -n {DEMO_NAMESPACE}")
        log("  " + kubectl("apply", "-f", str(OPERATOR_EXAMPLE), namespace=DEMO_NAMESPACE).strip())
        md, last, deadline = None, "", time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise cluster.TestbedError(f"the operator exited ({proc.returncode}); see {op_log}")
            got = watch.next(timeout=0.5)
            if got is not None:  # each version, each distinct line: no phase goes unsaid
                md = got
                if (now := md_line(md)) != last:
                    log(f"  {now}")
                    last = now
            st = (md or {}).get("status") or {}
            if any(c["type"] == "Ready" and c["status"] == "True" for c in st.get("conditions") or []):
                break
            if st.get("phase") == "Failed" or time.monotonic() > deadline:
                raise cluster.TestbedError(f"smollm2 did not become Ready ({last}); see "
                                           f"`modelship testbed kubectl describe md smollm2 -n {DEMO_NAMESPACE}`")
        watch.close()
        url = endpoint_address(st)
        log(f"Ready in {time.monotonic() - start:.0f}s: {st['endpoint']['openAIBaseURL']} "
            f"(here {url}/v1), model {st['endpoint']['model']!r}, revision {st['resolved']['shortSha']}")
        wait_routed(router, "smollm2", router_proc, router_log)
        log(f"asking through the router ({router}/v1, OpenAI API): {QUESTION}")
        answer = ask(router)
        log(f"answer: {answer}")
    finally:
        watch.close()
        for p in (router_proc, proc):
            procs.stop(p, 30)  # (killed rather than left running after the demo)
    log("")
    log("Keep using it (the model keeps serving; the operator and the router stopped with this command):")
    log(f"  export KUBECONFIG={kubeconfig_path()}")
    log(f"  modelship testbed kubectl get md -n {DEMO_NAMESPACE}")
    log(f"  modelship router -n {DEMO_NAMESPACE} --host 127.0.0.1 --port {router_port} --allow-cidr 127.0.0.0/8 &")
    log(f"  curl {router}/v1/chat/completions -d '{{\"model\":\"smollm2\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hi\"}}]}}'")
    log(f"  MODELSHIP_CONFIG={op_log.parent / 'config.yaml'} modelship operator    # manage it again")
    log("Tear it down:  modelship testbed down")
    return answer
