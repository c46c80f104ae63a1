"""`modelship demo` (also `modelship testbed demo`): the product's whole path, for a newcomer.

`run()` brings the test bed up, installs the chart with helm (the CRD, the operator and the
router as pods on the local node, the Hub being the test bed's mirror), applies
examples/smollm2.yaml with kubectl, shows progress until the ModelDeployment is Ready, then
asks the model a question through the router over `kubectl port-forward`. The helpers here (`render_example`, `wait_ready_pod`, `ask`, ...) also serve the
end-to-end tests, which apply examples/testbed/llama-server-smollm2.yaml without the operator.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import httpx

from . import binaries, cluster, procs
from .config import TestbedConfig
from .paths import kubeconfig_path

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


RELEASE, SYSTEM_NAMESPACE = "modelship", "modelship-system"
CHART = Path(__file__).resolve().parents[2] / "charts" / "modelship"
TESTBED_VALUES = Path(__file__).resolve().parents[2] / "examples" / "testbed" / "helm-values.yaml"
CRD = "customresourcedefinitions/modeldeployments.modelship.io"


def helm(*args: str) -> str:
    proc = subprocess.run([str(binaries.path("helm")), f"--kubeconfig={kubeconfig_path()}", *args],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise cluster.TestbedError(f"helm {' '.join(args[:2])}: {proc.stderr.strip()}")
    return proc.stdout


def adopt_crd(log: Callable[[str], None], release: str = RELEASE, namespace: str = SYSTEM_NAMESPACE,
              run: Callable[..., str] | None = None) -> None:
    """A CRD applied with kubectl (an earlier demo, the tests) becomes the release's, the way
    Helm adopts an existing object: its release annotations and managed-by label.
    `run(*kubectl_args)` returns kubectl's output (default: the test bed's kubectl)."""
    run = run or kubectl
    try:
        owner = run("get", CRD, "-o", "jsonpath={.metadata.annotations.meta\\.helm\\.sh/release-name}").strip()
    except Exception:  # (not there yet: the release makes it)
        return
    if owner == release:
        return
    log("the ModelDeployment CRD exists (applied with kubectl): handing it to the Helm release")
    run("annotate", "--overwrite", CRD, f"meta.helm.sh/release-name={release}",
        f"meta.helm.sh/release-namespace={namespace}")
    run("label", "--overwrite", CRD, "app.kubernetes.io/managed-by=Helm")


def install(hub: str, log: Callable[[str], None]) -> None:
    """`helm upgrade --install` of the chart: the CRD, the operator and the router, on the
    test bed's local node, the Hub being the mirror."""
    adopt_crd(log)
    # Only the demo's namespace: a release watching every namespace would also manage what the
    # tests (`make test`) apply in theirs.
    sets = [f"operator.hub.endpoint={hub}", f"namespaces={{{DEMO_NAMESPACE}}}"]
    log(f"helm upgrade --install {RELEASE} charts/modelship -n {SYSTEM_NAMESPACE} "
        f"-f examples/testbed/helm-values.yaml " + " ".join(f"--set {x}" for x in sets))
    started = time.monotonic()
    helm("upgrade", "--install", RELEASE, str(CHART), "-n", SYSTEM_NAMESPACE, "--create-namespace",
         "-f", str(TESTBED_VALUES), *[a for x in sets for a in ("--set", x)], "--wait", "--timeout", "180s")
    log(f"  installed in {time.monotonic() - started:.0f}s: " + " ".join(
        kubectl("get", "deploy", "-n", SYSTEM_NAMESPACE, "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.status.readyReplicas}/{.spec.replicas}, {end}")
        .rstrip(", ").split()))


def fresh_namespace(log: Callable[[str], None]) -> None:
    """The demo's namespace, waiting first for one left terminating by an earlier delete (one
    that simply exists, from an earlier demo, is reused as it is)."""
    run = [str(binaries.path("kubectl")), f"--kubeconfig={kubeconfig_path()}"]
    ns = subprocess.run([*run, "get", "namespace", DEMO_NAMESPACE, "-o", "jsonpath={.metadata.deletionTimestamp}"],
                        capture_output=True, text=True)
    if ns.returncode == 0 and ns.stdout.strip():
        log(f"waiting for namespace {DEMO_NAMESPACE} (being deleted) to be gone")
        subprocess.run([*run, "wait", "--for=delete", f"namespace/{DEMO_NAMESPACE}", "--timeout=120s"],
                       capture_output=True)
    subprocess.run([*run, "create", "namespace", DEMO_NAMESPACE], capture_output=True)


def follow(watch: MDWatch, log: Callable[[str], None], timeout: float = 300) -> dict:
    """Every phase of the ModelDeployment, until it is Ready; its status."""
    md, last, deadline = None, "", time.monotonic() + timeout
    while True:
        got = watch.next(timeout=0.5)
        if got is not None:  # each version, each distinct line: no phase goes unsaid
            md = got
            if (now := md_line(md)) != last:
                log(f"  {now}")
                last = now
        st = (md or {}).get("status") or {}
        if any(c["type"] == "Ready" and c["status"] == "True" for c in st.get("conditions") or []):
            return st
        if st.get("phase") == "Failed" or time.monotonic() > deadline:
            raise cluster.TestbedError(f"smollm2 did not become Ready ({last}); see "
                                       f"`modelship testbed kubectl describe md smollm2 -n {DEMO_NAMESPACE}`")


def ask_openai(base_url: str, model: str, question: str = QUESTION, timeout: float = 60) -> str:
    """One question with the OpenAI client, retried while the router has not yet seen the
    model's ready endpoint (404 model_not_found, for a second or so after Ready)."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = client.chat.completions.create(model=model, max_tokens=64, temperature=0,
                                               messages=[{"role": "user", "content": question}])
            return (r.choices[0].message.content or "").strip()
        except (openai.NotFoundError, openai.APIConnectionError, openai.InternalServerError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def run(log: Callable[[str], None], hub_mirror: str | None = None) -> str:
    """The product's path as a user takes it: the test bed, `helm install` of the chart,
    `kubectl apply` of examples/smollm2.yaml, progress until Ready, a question through the
    router (`kubectl port-forward`, OpenAI client). Everything keeps running afterwards.
    `hub_mirror`: a Hub for the operator instead of the test bed's mirror (the tests put the
    mirror behind a slow link, so that the download's progress shows on any machine)."""
    from .portforward import PortForward

    cluster.up(cluster.UpOptions(), log)
    hub = hub_mirror or f"http://127.0.0.1:{TestbedConfig.load().ports.hub_mirror}"
    fresh_namespace(log)
    install(hub, log)
    watch = MDWatch(DEMO_NAMESPACE, "smollm2").start()  # before the apply: every version from its first
    try:
        log(f"kubectl apply -f examples/smollm2.yaml -n {DEMO_NAMESPACE}")
        applied = time.monotonic()
        log("  " + kubectl("apply", "-f", str(OPERATOR_EXAMPLE), namespace=DEMO_NAMESPACE).strip())
        st = follow(watch, log)
    finally:
        watch.close()
    log(f"Ready in {time.monotonic() - applied:.0f}s after kubectl apply: model {st['endpoint']['model']!r}, "
        f"revision {st['resolved']['shortSha']}, in-cluster {st['endpoint']['openAIBaseURL']}")
    router = f"svc/{RELEASE}-router"
    log(f"kubectl port-forward -n {SYSTEM_NAMESPACE} {router} :80")
    with PortForward(str(kubeconfig_path()), SYSTEM_NAMESPACE, router, 80) as pf:
        log(f"asking through the router ({pf.url}/v1, OpenAI client): {QUESTION}")
        answer = ask_openai(f"{pf.url}/v1", st["endpoint"]["model"])
    log(f"answer: {answer}")
    port = TestbedConfig.load().ports.router
    log("")
    log("It keeps running (the operator and the router are pods of the Helm release). Keep using it:")
    log(f"  export KUBECONFIG={kubeconfig_path()}")
    log(f"  modelship testbed kubectl get md -n {DEMO_NAMESPACE}")
    log(f"  modelship testbed kubectl port-forward -n {SYSTEM_NAMESPACE} {router} {port}:80 &")
    log(f"  curl http://127.0.0.1:{port}/v1/chat/completions -H 'Content-Type: application/json' "
        "-d '{\"model\":\"smollm2\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}'")
    log(f"Remove the model: modelship testbed kubectl delete md smollm2 -n {DEMO_NAMESPACE}")
    log("Tear everything down: modelship testbed down")
    return answer
