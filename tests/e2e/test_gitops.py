"""GitOps with a real Argo CD (v3.5.7, built from its Go module; `modelship testbed up
--argocd`): examples/gitops/'s two Applications, pointed at a repository the test commits to on
the test bed's git daemon, sync the chart (operator, router, CRD) and a folder of
ModelDeployments into the test bed, with the health check of examples/gitops/argo-cd-values.yaml
in argocd-cm.

In order, on one installation (each test starts where the one before left it):
- both Applications reach Synced and Healthy, the model's health as Argo CD reads it going
  Progressing (the download's progress in its message) -> Healthy;
- zero drift: from its first Synced, the models' Application never leaves Synced through the
  download's progress, the model starting, an operator restart, a `helm upgrade` of the chart
  (a commit of its values), autoscaling up, down and to zero and a wake from zero, while the
  test asks Argo CD for a hard refresh every few seconds;
- selfHeal: the model's Deployment deleted is put back by the operator, never OutOfSync;
- commits changing `replicas` and then the quantization roll out and come back Synced/Healthy;
- a ModelDeployment the operator refuses is Degraded, with the operator's message; pruning:
  removed from git, a model is deleted and its children with it (the folder keeps another:
  Argo CD never auto-syncs an Application to empty without `automated.allowEmpty`).

The Hub is a FakeHub of this module's own (SmolLM2's real GGUF as its Q4_1, the same bytes
again as a Q8_0, so that a quantization change has something to roll out to), slowed so the
download is long enough to be seen in progress.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from ..conftest import REPO, wait_for
from .gitops_kit import Git, Watch

pytestmark = [pytest.mark.integration, pytest.mark.localnode, pytest.mark.slow]

GITOPS = REPO / "examples" / "gitops"
MODEL_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
SHA = "5" * 40
FAST = {"metrics": [{"type": "InFlight", "targetPerReplica": 1}], "windowSeconds": 2,
        "scaleDownDelaySeconds": 4, "idleSeconds": 12}


@pytest.fixture(scope="module")
def argo(cluster):
    from modelship_testbed import argocd
    from modelship_testbed.paths import kubeconfig_path

    if cluster.local_node is None:
        pytest.skip("needs the test bed's local node (pods that really run); this cluster has none")
    if cluster.kubeconfig != str(kubeconfig_path()):
        pytest.skip("needs the test bed's Argo CD (modelship testbed up --argocd)")
    if not shutil.which("redis-server"):
        pytest.skip("needs Debian's redis-server for Argo CD (apt-get install redis-server; .ci/run installs it)")
    started = argocd.supervisor_pid() is None
    argocd.up(print)
    yield argocd
    if started:
        argocd.down(print)


@pytest.fixture(scope="module")
def hub():
    from modelship_testbed.binaries import smollm2_gguf
    from modelship_testbed.hub_fake import FakeHub, FakeRepo

    weights = smollm2_gguf().read_bytes()
    h = FakeHub()
    h.add_repo(FakeRepo(MODEL_REPO, {SHA: {"README.md": b"# SmolLM2 for the GitOps tests",
                                           "SmolLM2-135M-Instruct.Q4_1.gguf": weights,
                                           "SmolLM2-135M-Instruct.Q8_0.gguf": weights}}, {"main": SHA}))
    h.chunk_delay = 0.005  # ~8 s for 98 MB: progress the operator reports, and Argo CD shows
    h.start()
    yield h
    h.stop()


def model(name: str, autoscaling: dict | None = None, **spec) -> dict:
    """examples/gitops/models/smollm2.yaml with this test's changes, for the test bed's 2 cores;
    without `autoscaling`, its min/maxReplicas go too (a fixed number of replicas)."""
    md = yaml.safe_load((GITOPS / "models" / "smollm2.yaml").read_text())
    md["metadata"]["name"] = name
    md["spec"]["serving"].update(threads=1, parallel=2)
    md["spec"]["resources"] = {"requests": {"cpu": "100m", "memory": "64Mi"}}  # two replicas on the local node
    if autoscaling is None:
        md["spec"].pop("minReplicas"), md["spec"].pop("maxReplicas")
    else:
        md["spec"]["autoscaling"] = autoscaling
    md["spec"].update(spec)
    return md


class Stack:
    def __init__(self, cluster, custom, git: Git, tag: str, system: str, models: str, hub_url: str):
        self.cluster, self.custom, self.git, self.tag = cluster, custom, git, tag
        self.system, self.models = system, models
        self.chart_app, self.models_app = f"modelship-{tag}", f"models-{tag}"
        self.release = f"ms{tag}"
        self.hub_url = hub_url
        self.watch = Watch(custom, [self.chart_app, self.models_app])

    def chart_values(self, **operator) -> dict:
        """The example Application's values, with the test bed's (examples/testbed/helm-values.yaml)."""
        values = yaml.safe_load((REPO / "examples" / "testbed" / "helm-values.yaml").read_text())
        example = yaml.safe_load((GITOPS / "modelship.yaml").read_text())["spec"]["source"]["helm"]["valuesObject"]
        values["router"].update(example["router"])
        values["namespaces"] = [self.models]
        values["operator"]["hub"]["endpoint"] = self.hub_url
        values["operator"].update(operator)
        return values

    def applications(self, url: str) -> list[dict]:
        chart = yaml.safe_load((GITOPS / "modelship.yaml").read_text())
        chart["metadata"]["name"] = self.chart_app
        chart["spec"]["source"].update(repoURL=url, targetRevision="main")
        chart["spec"]["source"]["helm"]["releaseName"] = self.release
        chart["spec"]["source"]["helm"]["valueFiles"] = ["../../values/modelship.yaml"]
        chart["spec"]["source"]["helm"].pop("valuesObject")
        chart["spec"]["destination"]["namespace"] = self.system
        models = yaml.safe_load((GITOPS / "models.yaml").read_text())
        models["metadata"]["name"] = self.models_app
        models["spec"]["source"].update(repoURL=url, targetRevision="main")
        models["spec"]["destination"]["namespace"] = self.models
        return [chart, models]

    def app(self, name: str) -> dict:
        return self.watch.get(name)

    def synced_healthy(self, name: str, revision: str | None = None) -> bool:
        st = self.app(name).get("status") or {}
        return ((st.get("sync") or {}).get("status"), (st.get("health") or {}).get("status")) == ("Synced", "Healthy") \
            and (revision is None or (st.get("sync") or {}).get("revision") == revision) \
            and (st.get("operationState") or {}).get("phase") in (None, "Succeeded")

    def show(self) -> str:
        def brief(name: str) -> dict:
            st = self.app(name).get("status") or {}
            op = st.get("operationState") or {}
            return {"sync": (st.get("sync") or {}).get("status"), "revision": (st.get("sync") or {}).get("revision"),
                    "health": st.get("health"), "conditions": st.get("conditions"),
                    "operation": {k: op.get(k) for k in ("phase", "message")},
                    "not synced or healthy": [r for r in st.get("resources") or [] if r.get("status") != "Synced"
                                              or (r.get("health") or {}).get("status") not in (None, "Healthy")]}

        return json.dumps({n: brief(n) for n in self.watch.apps}, indent=1)[-6000:] + "\n" + self.cluster.kubectl(
            "get", "md,deploy,pod,job,pvc", "-n", self.models, "-o", "wide", check=False)

    def diagnose(self, model: str) -> str:
        """What a failed answer needs to be understood: the model's status, the pods (restarts
        included), the Events, and the last lines of every router's and engine's log."""
        out: list[str] = []

        def k(*args: str) -> str:  # (never raises: what it shows must not hide the failure itself)
            try:
                return self.cluster.kubectl(*args, check=False)
            except Exception as e:  # noqa: BLE001
                return f"kubectl {' '.join(args)}: {e!r}"

        out += [k("get", "md", model, "-n", self.models, "-o", "jsonpath={.status}"),
                k("get", "pods", "-n", self.models, "-o", "wide"), k("get", "pods", "-n", self.system, "-o", "wide"),
                k("get", "events", "-n", self.models, "--sort-by=.lastTimestamp")]
        for ns, selector in ((self.system, "app.kubernetes.io/component=router"),
                             (self.models, f"app.kubernetes.io/instance={model}")):
            names = k("get", "pods", "-n", ns, "-l", selector, "-o", "jsonpath={.items[*].metadata.name}")
            pods = names.split()
            for name in pods if all(re.fullmatch(r"[a-z0-9][a-z0-9.-]*", n) for n in pods) else []:
                out += [f"--- {ns}/{name}", k("logs", name, "-n", ns, "--all-containers", "--tail=40"),
                        k("logs", name, "-n", ns, "--all-containers", "--previous", "--tail=20")]
        return "\n".join(out)[-20000:]

    def md(self, name: str) -> dict:
        return json.loads(self.cluster.kubectl("get", "md", name, "-n", self.models, "-o", "json"))

    def router_url(self) -> str:
        pods = json.loads(self.cluster.kubectl("get", "pods", "-n", self.system, "-l",
                                               "app.kubernetes.io/component=router", "-o", "json"))["items"]
        ready = [p for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                        for c in (p.get("status") or {}).get("conditions") or [])]
        assert ready, "no ready router pod"
        return f"http://{ready[0]['status']['podIP']}:8000"

    def refreshing(self, seconds: float, every: float = 3.0, until=None) -> None:
        """Ask for a hard refresh of both Applications every `every` seconds, for `seconds` or
        until `until()` is true."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for app in self.watch.apps:
                self.watch.refresh(app)
            end = time.monotonic() + every
            while time.monotonic() < end:
                if until and until():
                    return
                time.sleep(0.25)


@pytest.fixture(scope="module")
def stack(argo, cluster, api, core, hub, tmp_path_factory):
    from kubernetes import client

    tag = uuid.uuid4().hex[:6]
    system, models = f"gitops-sys-{tag}", f"gitops-models-{tag}"
    for ns in (system, models):
        core.create_namespace({"metadata": {"name": ns}})
    url = argo.create_repo(f"gitops-{tag}")
    git = Git(url, argo.push_path(f"gitops-{tag}"), tmp_path_factory.mktemp("gitops"))
    s = Stack(cluster, client.CustomObjectsApi(api), git, tag, system, models, hub.url)
    shutil.copytree(REPO / "charts" / "modelship", git.work / "charts" / "modelship")
    git.write("values/modelship.yaml", yaml.safe_dump(s.chart_values()))
    git.write("models/smollm2.yaml", yaml.safe_dump(model("smollm2", autoscaling=FAST)))
    s.first_commit = git.commit("modelship and a model")
    s.watch.start()
    yield s
    s.watch.stop()
    print(f"GitOps: {len(s.watch.seen)} observations, {s.watch.refreshes_asked} hard refreshes asked, "
          f"drifts: {[(d.app, d.sync, d.out_of_sync) for d in s.watch.drifts]}")
    for app in s.watch.apps:  # no resources finalizer: what the Applications made stays, and goes with the namespaces
        cluster.kubectl("delete", "application", "-n", "argocd", app, "--wait=false", check=False)
    for ns in (models, system):
        core.delete_namespace(ns)
    cluster.kubectl("delete", "clusterrole,clusterrolebinding", "-l", f"app.kubernetes.io/instance={s.release}",
                    check=False)


def report(stack, what: str, since: float) -> None:
    assert stack.watch.observations(stack.models_app, since) > 0, "the watcher saw nothing"
    assert stack.watch.observations(stack.chart_app, since) > 0, "the watcher saw nothing"
    print(f"zero drift through {what}: {stack.watch.observations(stack.models_app, since)} observations of the "
          f"models' Application, {stack.watch.refreshes(stack.models_app, since)} comparisons by Argo CD, "
          f"{sum(1 for d in stack.watch.drifts if d.t >= since)} OutOfSync, "
          f"{sum(1 for d in stack.watch.unknown if d.t >= since)} Unknown (a comparison that failed)")


def test_both_applications_sync_and_the_model_goes_progressing_then_healthy(stack):
    stack.cluster.apply(stack.applications(stack.git.url), "argocd")
    # From its first Synced on, the models' Application must stay Synced: through the download's
    # progress, the model starting, and everything the operator writes to its status.
    wait_for(lambda: (s := stack.watch.latest(stack.models_app)) is not None and s.sync == "Synced", 300,
             "the models' Application to be Synced", stack.show)
    stack.watch.strict.add(stack.models_app)
    # Argo CD 3 reads a status change of a resource only when its health status changes
    # (`resource.ignoreResourceUpdatesEnabled`); the message, with the download's progress, at a
    # refresh of the Application (every 3 minutes by default): refresh every second here.
    def healthy() -> bool:
        stack.watch.refresh(stack.models_app, "normal")
        return stack.synced_healthy(stack.chart_app) and stack.synced_healthy(stack.models_app)

    wait_for(healthy, 300, "both Applications to be Synced and Healthy", stack.show, interval=1.0)
    wait_for(lambda: stack.watch.latest(stack.models_app).models.get("smollm2", ("",))[0] == "Healthy", 10,
             "the watch to see it too")
    stack.watch.strict.add(stack.chart_app)  # from here the chart's Application must stay Synced too
    healths = [s.models["smollm2"] for s in stack.watch.seen if s.app == stack.models_app and "smollm2" in s.models]
    order = [h for i, (h, _) in enumerate(healths) if i == 0 or healths[i - 1][0] != h]
    assert order[-1] == "Healthy" and "Progressing" in order and "Degraded" not in order, order
    progress = [m for h, m in healths if h == "Progressing" and "%" in m and "MiB" in m]  # the check's own text
    assert progress, f"no download progress seen in Argo CD's health messages: {sorted(set(m for _, m in healths))}"
    assert stack.md("smollm2")["status"]["phase"] == "Ready"
    answer = httpx.post(f"{stack.router_url()}/v1/chat/completions", timeout=120, json={
        "model": "smollm2", "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16, "temperature": 0})
    assert answer.status_code == 200, answer.text
    # The same through `modelship chat` with no --router-url: it finds the chart's router Service
    # and port-forwards to a router pod through the API server itself.
    chat = subprocess.run([str(Path(sys.executable).with_name("modelship")), "chat", "smollm2", "-n", stack.models,
                           "--max-tokens", "16", "--temperature", "0"], input="What is the capital of France?\n",
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, "KUBECONFIG": stack.cluster.kubeconfig, "NO_COLOR": "1"})
    assert chat.returncode == 0 and chat.stdout.strip(), (chat.stdout, chat.stderr, stack.diagnose("smollm2"))
    assert not stack.watch.drifts, stack.watch.drifts
    report(stack, "the download, the start and the first answer", stack.watch.seen[0].t)


def test_no_drift_through_an_operator_restart_and_a_helm_upgrade(stack):
    since = time.monotonic()
    op = lambda: json.loads(stack.cluster.kubectl(  # noqa: E731
        "get", "pods", "-n", stack.system, "-l", "app.kubernetes.io/component=operator", "-o", "json"))["items"]
    first = {p["metadata"]["uid"] for p in op()}
    stack.cluster.kubectl("delete", "pods", "-n", stack.system, "-l", "app.kubernetes.io/component=operator",
                          "--wait=false")
    ready_new = lambda: any(p["metadata"]["uid"] not in first and p["status"].get("phase") == "Running"  # noqa: E731
                            for p in op())
    stack.refreshing(120, until=ready_new)
    assert ready_new(), stack.show()
    stack.refreshing(9)
    # `helm upgrade` of the chart, the GitOps way: a commit of its values (the operator's log
    # level: the operator's pods roll). The chart's Application follows the commit; the
    # models' must not notice.
    stack.watch.strict.discard(stack.chart_app)  # (a commit of its own: it must see it)
    stack.git.write("values/modelship.yaml", yaml.safe_dump(stack.chart_values(logLevel="DEBUG")))
    rev = stack.git.commit("operator: debug logs")
    stack.watch.refresh(stack.chart_app)
    wait_for(lambda: stack.synced_healthy(stack.chart_app, rev), 180, "the chart's Application to sync the upgrade",
             stack.show)
    wait_for(lambda: (s := stack.watch.latest(stack.chart_app)).revision == rev and s.sync == "Synced", 10,
             "the watch to see the chart synced")
    stack.watch.strict.add(stack.chart_app)
    stack.refreshing(9)
    assert stack.md("smollm2")["status"]["phase"] == "Ready"
    assert not stack.watch.drifts, stack.watch.drifts
    assert stack.watch.refreshes(stack.models_app, since) >= 5, "Argo CD compared the models too rarely to tell"
    report(stack, "operator restart and helm upgrade", since)


def test_no_drift_while_autoscaling_goes_up_down_to_zero_and_wakes(stack):
    since = time.monotonic()
    url = stack.router_url()
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Count from one to two hundred."}],
            "max_tokens": 160, "temperature": 0}

    def desired() -> int:
        return (stack.md("smollm2")["status"].get("autoscaling") or {}).get("desiredReplicas", -1)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # 4 in flight against a target of 1 per replica
        deadline = time.monotonic() + 90
        while desired() < 2 and time.monotonic() < deadline:
            batch = [pool.submit(httpx.post, f"{url}/v1/chat/completions", json=body, timeout=120) for _ in range(4)]
            stack.refreshing(4, until=lambda: desired() >= 2)
            concurrent.futures.wait(batch)
    assert desired() == 2, stack.md("smollm2")["status"]
    stack.refreshing(150, until=lambda: desired() == 0)  # quiet: down, then asleep after idleSeconds
    assert desired() == 0 and stack.md("smollm2")["status"]["autoscaling"]["reason"] == "ScaledToZero", \
        stack.md("smollm2")["status"]
    woke = httpx.post(f"{url}/v1/chat/completions", json={**body, "max_tokens": 8}, timeout=180)
    assert woke.status_code == 200, woke.text
    stack.refreshing(6)
    reasons = {s.models["smollm2"][0] for s in stack.watch.seen if s.t >= since and "smollm2" in s.models}
    assert "Healthy" in reasons, reasons
    assert not stack.watch.drifts, stack.watch.drifts
    assert stack.md("smollm2")["metadata"]["generation"] == 1, "the operator wrote the spec"
    report(stack, "autoscaling 1 -> 2 -> 0 -> 1", since)


def test_self_heal_puts_back_a_spec_edited_by_hand(stack):
    """Argo CD's selfHeal: the ModelDeployment edited outside git is put back as git has it."""
    stack.watch.strict.discard(stack.models_app)  # (the edit is a drift Argo CD must see, and undo)
    stack.cluster.kubectl("patch", "md", "smollm2", "-n", stack.models, "--type=merge",
                          "-p", '{"spec": {"serving": {"contextLength": 1024}}}')
    wait_for(lambda: stack.md("smollm2")["spec"]["serving"]["contextLength"] == 2048, 120,
             "Argo CD to undo the edit", stack.show)
    wait_for(lambda: stack.synced_healthy(stack.models_app), 120, "the models' Application to be Synced again",
             stack.show)
    wait_for(lambda: stack.watch.latest(stack.models_app).sync == "Synced", 10, "the watch to see it too")
    stack.watch.strict.add(stack.models_app)


def test_a_deleted_child_is_put_back_and_never_out_of_sync(stack):
    since = time.monotonic()
    before = json.loads(stack.cluster.kubectl("get", "deploy", "smollm2", "-n", stack.models, "-o", "json"))
    stack.cluster.kubectl("delete", "deploy", "smollm2", "-n", stack.models)
    back = lambda: json.loads(stack.cluster.kubectl(  # noqa: E731
        "get", "deploy", "smollm2", "-n", stack.models, "-o", "json", "--ignore-not-found") or "{}")
    stack.refreshing(60, until=lambda: (back().get("metadata") or {}).get("uid") not in (None, before["metadata"]["uid"]))
    assert back()["metadata"]["uid"] != before["metadata"]["uid"], stack.show()
    stack.refreshing(6)
    assert not stack.watch.drifts, stack.watch.drifts
    report(stack, "a child deleted", since)


def test_commits_changing_replicas_and_quantization_roll_out(stack):
    stack.watch.strict.discard(stack.models_app)  # a commit is a change Argo CD must see
    # (Autoscaling off in the same commit: asleep at zero, the autoscaler would put it back there.)
    stack.git.write("models/smollm2.yaml", yaml.safe_dump(model("smollm2", replicas=2)))
    rev = stack.git.commit("smollm2: two replicas")
    stack.watch.refresh(stack.models_app)
    wait_for(lambda: stack.synced_healthy(stack.models_app, rev)
             and stack.md("smollm2")["status"].get("readyReplicas") == 2, 180,
             "two ready replicas from the commit", stack.show)
    md = model("smollm2", replicas=1)
    md["spec"]["model"]["quantization"] = "Q8_0"
    stack.git.write("models/smollm2.yaml", yaml.safe_dump(md))
    rev = stack.git.commit("smollm2: Q8_0")
    stack.watch.refresh(stack.models_app)
    wait_for(lambda: stack.synced_healthy(stack.models_app, rev)
             and stack.md("smollm2")["status"].get("resolved", {}).get("quantization") == "Q8_0"
             and stack.md("smollm2")["status"].get("phase") == "Ready", 240,
             "the Q8_0 commit to roll out", stack.show)
    pods = json.loads(stack.cluster.kubectl("get", "pods", "-n", stack.models, "-l", "modelship.io/deployment=smollm2",
                                            "-o", "json"))["items"]
    assert any("Q8_0" in json.dumps(p["spec"]) for p in pods if not p["metadata"].get("deletionTimestamp")), \
        "no serving pod loads the Q8_0 file"


def test_a_refused_spec_is_degraded_and_a_model_removed_from_git_is_pruned(stack):
    broken = model("broken")
    broken["spec"]["model"]["quantization"] = "Q2_K"  # not in the repository
    stack.git.write("models/broken.yaml", yaml.safe_dump(broken))
    rev = stack.git.commit("a model the operator cannot serve")
    stack.watch.refresh(stack.models_app)

    def degraded():
        s = stack.watch.latest(stack.models_app)
        return s and s.revision == rev and s.models.get("broken", ("",))[0] == "Degraded" and s.health == "Degraded"

    wait_for(degraded, 120, "Argo CD to show the refused model Degraded", stack.show)
    message = stack.watch.latest(stack.models_app).models["broken"][1]
    ready = next(c for c in stack.md("broken")["status"]["conditions"] if c["type"] == "Ready")
    assert ready["message"] in message and "Q2_K" in message, (message, ready)
    assert stack.watch.latest(stack.models_app).sync == "Synced"  # refused by the operator, not out of sync

    # Pruning: smollm2 removed from git goes, and its children with it. (Not the last model too:
    # Argo CD refuses an automated sync that would delete everything an Application has, unless
    # `automated.allowEmpty` says so.)
    assert any(stack.cluster.kubectl("get", kind, "-n", stack.models, "-l", "modelship.io/deployment=smollm2",
                                     "-o", "name") for kind in ("deploy", "svc", "pvc"))
    (stack.git.work / "models" / "smollm2.yaml").unlink()
    rev = stack.git.commit("smollm2 no longer served")
    stack.watch.refresh(stack.models_app)

    def pruned() -> bool:
        s = stack.watch.latest(stack.models_app)
        return s.revision == rev and s.sync == "Synced" and "smollm2" not in s.models

    wait_for(pruned, 120, "the commit removing smollm2 to sync", stack.show)
    left = lambda: [n for kind in ("md/smollm2", "deploy", "svc", "job", "pvc") for n in stack.cluster.kubectl(  # noqa: E731
        "get", kind, "-n", stack.models, "--ignore-not-found", "-o", "name",
        *(["-l", "modelship.io/deployment=smollm2"] if "/" not in kind else [])).split()]
    wait_for(lambda: not left(), 120, "smollm2 and its children to be deleted", lambda: "\n".join(left()))
    assert stack.md("broken")["metadata"]["name"] == "broken"  # the rest of the folder is untouched
