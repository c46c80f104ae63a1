"""Fixtures for the operator's integration tests: the CRD installed once, and the real
operator per test, watching that test's namespace, with a catalog of pre-resolved models (Hub
resolution is not what these tests are about).

`operator` is the operator as users install it: the chart, `helm install`ed into the test's
namespace, its pod on the test bed's local node under the chart's ServiceAccount and RBAC.
`local_operator` runs `modelship operator` as a subprocess instead, for the tests that kill
it or set a fail point."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from modelship_testbed import procs

from ..conftest import REPO, Cluster, wait_for

SMOLLM2_SHA = "9a1b2c3d4e5f60718293a4b5c6d7e8f901234567"
TINY_SHA = "1111111111111111111111111111111111111111"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_entry() -> dict:
    from modelship_testbed.binaries import smollm2_gguf

    path = smollm2_gguf()
    return {"repo": "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", "revision": "main", "sha": SMOLLM2_SHA,
            "engine": "llamacpp", "format": "gguf", "modelFile": SMOLLM2_FILE, "quantization": "Q4_1",
            "files": [{"path": SMOLLM2_FILE, "size": path.stat().st_size}], "totalBytes": path.stat().st_size}


def catalog() -> list[dict]:
    tiny = [{"path": "config.json", "size": 2}, {"path": "model.safetensors", "size": 3}]
    return [smollm2_entry(),
            {"repo": "modelship-test/tiny-llama", "revision": "main", "sha": TINY_SHA, "engine": "tgi",
             "format": "safetensors", "files": tiny, "totalBytes": 5},
            {"repo": "modelship-test/tiny-llama-GGUF", "revision": "main", "sha": TINY_SHA, "engine": "llamacpp",
             "format": "gguf", "modelFile": "tiny.Q4_K_M.gguf", "quantization": "Q4_K_M",
             "files": [{"path": "tiny.Q4_K_M.gguf", "size": 4}], "totalBytes": 4}]


# Pools for the test bed: kwok nodes stand in for GPU and CPU pools; "local" is the node whose
# pods really run. Download Jobs run on the local node, so they really complete.
POOLS = {
    "gpu": {"nodeSelector": {"modelship.io/pool": "gpu", "type": "kwok"}, "gpuResource": "nvidia.com/gpu",
            "maxGpus": 8, "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    "cpu": {"nodeSelector": {"modelship.io/pool": "cpu", "type": "kwok"}},
    "local": {"nodeSelector": {"modelship.io/local-node": "true"}},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalOperator:
    cluster: Cluster
    namespace: str
    workdir: Path
    env_extra: dict = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)  # watched besides `namespace`
    proc: subprocess.Popen | None = None
    metrics_port: int = 0
    health_port: int = 0
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / "operator.log"

    def start(self, pools: dict | None = None, config: dict | None = None, **env: str) -> "LocalOperator":
        self.metrics_port, self.health_port = free_port(), free_port()
        config = {"catalogFile": str(self.workdir / "catalog.yaml"), "pools": pools or POOLS, "downloadPool": "local",
                  "metricsPort": self.metrics_port, "healthPort": self.health_port, "bindHost": "127.0.0.1",
                  "resyncSeconds": 20, **(config or {})}
        (self.workdir / "catalog.yaml").write_text(yaml.safe_dump(catalog()))
        (self.workdir / "config.yaml").write_text(yaml.safe_dump(config))
        full_env = {**os.environ, "KUBECONFIG": self.cluster.kubeconfig,
                    "MODELSHIP_CONFIG": str(self.workdir / "config.yaml"), **self.env_extra, **env}
        self.starts += 1
        watched = [a for ns in [self.namespace, *self.namespaces] for a in ("--namespace", ns)]
        with open(self.log_path, "a") as log:  # the child has its own copy of the descriptor
            log.write(f"--- start {self.starts}\n")
            log.flush()
            self.proc = subprocess.Popen([str(Path(sys.executable).with_name("modelship")), "operator", *watched],
                                         env=full_env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        return procs.stop(self.proc, 20, sig) if self.proc else None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def metrics(self) -> str:
        import httpx

        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}/healthz"


CHART = REPO / "charts" / "modelship"


def run_helm(*args: str, kubeconfig: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """The test bed's helm (against `kubeconfig`'s cluster); with `check`, a failure fails the test."""
    from modelship_testbed import binaries

    flags = [f"--kubeconfig={kubeconfig}"] if kubeconfig else []
    if args[:1] == ("template",):  # rendered for the test bed's version, not helm's own default (Chart.yaml kubeVersion)
        flags.append(f"--kube-version={binaries.KUBERNETES_VERSION}")
    proc = subprocess.run([str(binaries.path("helm")), *flags, *args], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed: {proc.stdout}{proc.stderr.strip()}")
    return proc


def helm(cluster: Cluster, *args: str) -> str:
    return run_helm(*args, kubeconfig=cluster.kubeconfig).stdout


def render(release: str, namespace: str, *sets: str, chart: Path = CHART) -> str:
    """`helm template` of the chart with these `--set` values."""
    return run_helm("template", release, str(chart), "-n", namespace, *[a for s in sets for a in ("--set", s)]).stdout


# Operator settings the chart sets from values of its own (operator.settings may not hold them).
CHART_OWNED = ("defaultGpuPool", "defaultCpuPool", "downloadPool", "logLevel")


def replacing(defaults: dict, wanted: dict) -> dict:
    """Values that make Helm's deep merge of `wanted` into `defaults` give `wanted` (a null
    removes a default key)."""
    out = {k: None for k in defaults if k not in wanted}
    for k, v in wanted.items():
        d = defaults.get(k)
        out[k] = replacing(d, v) if isinstance(d, dict) and isinstance(v, dict) else v
    return out


def operator_values(namespaces: list[str], pools: dict, settings: dict, hub: str) -> dict:
    """Values for the chart's operator alone (the CRD comes from the fixture), on the local
    node, with the tests' pools replacing the chart's (null drops a default, as in any chart)."""
    return {"crds": {"enabled": False}, "router": {"enabled": False}, "namespaces": namespaces,
            "operator": {"replicas": 1, "hub": {"endpoint": hub},
                         "pools": replacing(yaml.safe_load((CHART / "values.yaml").read_text())["operator"]["pools"],
                                            pools),
                         "settings": settings,
                         "nodeSelector": {"modelship.io/local-node": "true"},
                         "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}}}}


@dataclass
class HelmOperator:
    """The operator installed by the chart into the test's namespace (same interface as
    LocalOperator, but no process of this test's own to kill)."""

    cluster: Cluster
    namespace: str
    workdir: Path
    hub: str
    namespaces: list[str] = field(default_factory=list)  # watched besides `namespace`
    release: str = field(default_factory=lambda: "op" + uuid.uuid4().hex[:6])
    installed: bool = False

    def start(self, pools: dict | None = None, config: dict | None = None, **chart: object) -> "HelmOperator":
        """Install (or upgrade) the release; `chart`: more of the chart's operator values (replicas=2)."""
        config = {"downloadPool": "local", "resyncSeconds": 20, **(config or {})}
        owned = {k: config.pop(k) for k in CHART_OWNED if k in config}  # the chart's own values, not settings
        values = operator_values([self.namespace, *self.namespaces], pools or POOLS, config, self.hub)
        values["operator"].update(catalog=catalog(), **owned, **chart)
        (self.workdir / "values.yaml").write_text(yaml.safe_dump(values))
        verb = "upgrade" if self.installed else "install"
        helm(self.cluster, verb, self.release, str(CHART), "-n", self.namespace, "-f", str(self.workdir / "values.yaml"))
        self.installed = True
        wait_for(self.pod_ip, 60, f"the operator's pod ({self.release}) to start",
                 lambda: self.cluster.kubectl("get", "pods", "-n", self.namespace, "-o", "wide", check=False))
        return self

    def selector(self) -> str:
        return f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component=operator"

    def pods(self) -> list[dict]:
        """The operator's running pods (not being deleted), oldest first."""
        pods = json.loads(self.cluster.kubectl("get", "pods", "-n", self.namespace, "-l", self.selector(), "-o",
                                               "json"))["items"]
        return sorted((p for p in pods if not p["metadata"].get("deletionTimestamp")
                       and (p.get("status") or {}).get("phase") == "Running" and p["status"].get("podIP")),
                      key=lambda p: p["metadata"]["creationTimestamp"])

    def pod_ip(self) -> str | None:
        pods = self.pods()
        return pods[0]["status"]["podIP"] if pods else None

    def stop(self) -> None:
        if self.installed:
            helm(self.cluster, "uninstall", self.release, "-n", self.namespace, "--wait", "--timeout", "60s")
            self.installed = False

    def log(self) -> str:
        return self.cluster.kubectl("logs", "-n", self.namespace, "-l", self.selector(), "--tail=-1",
                                    "--all-containers", check=False)

    def metrics(self) -> str:
        import httpx

        return httpx.get(f"http://{self.pod_ip()}:9090/metrics", timeout=5).text

    @property
    def health_url(self) -> str:
        return f"http://{self.pod_ip()}:8081/healthz"


@pytest.fixture(scope="session")
def fake_hub():
    """A Hub on loopback for the operators under test (never the real one)."""
    from modelship_testbed.hub_fake import FakeHub

    hub = FakeHub().start()
    yield hub
    hub.stop()


@pytest.fixture
def kwok_pools(cluster, core, local_node):
    """A GPU and a CPU kwok node of this test's own, and pool profiles that select only them,
    so placement checks hold whatever pools the cluster already has."""
    import uuid

    from modelship_testbed.nodepools import kwok_node

    tag = "t" + uuid.uuid4().hex[:6]  # a letter first: all digits would read as a YAML number
    nodes = [kwok_node("gpu", 9100, "NVIDIA-H100-80GB-HBM3"), kwok_node("cpu", 9100, "")]
    for n in nodes:
        n["metadata"]["name"] += f"-{tag}"
        n["metadata"]["labels"]["kubernetes.io/hostname"] = n["metadata"]["name"]
        n["metadata"]["labels"]["test"] = tag
        core.create_node(n)
    pools = {name: {**p, "nodeSelector": {**p["nodeSelector"], "test": tag}} if name != "local" else p
             for name, p in POOLS.items()}
    yield pools
    for n in nodes:
        core.delete_node(n["metadata"]["name"])


@pytest.fixture(scope="session")
def crd_installed(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    cluster.wait_established("modeldeployments.modelship.io")


@pytest.fixture
def operator(cluster, namespace, crd_installed, tmp_path, fake_hub, local_node):
    op = HelmOperator(cluster, namespace, tmp_path, fake_hub.url)
    yield op
    try:
        op.stop()
    except AssertionError as e:  # (the test's own outcome matters more)
        print(e)


@pytest.fixture
def local_operator(cluster, namespace, crd_installed, tmp_path, fake_hub):
    op = LocalOperator(cluster, namespace, tmp_path, env_extra={"MODELSHIP_HUB_ENDPOINT": fake_hub.url})
    yield op
    op.stop()
    if op.proc and op.proc.returncode not in (0, -15, None):
        print(op.log()[-4000:])


def service_account_kubeconfig(cluster: Cluster, namespace: str, account: str, path: Path, hours: int = 2) -> Path:
    """A kubeconfig that logs in as the ServiceAccount (a token from the TokenRequest API): a
    program run as a local process with it is that account to RBAC and the audit log, as it
    would be in a pod."""
    token = cluster.kubectl("create", "token", account, "-n", namespace, f"--duration={hours}h").strip()
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    context = next(c["context"] for c in admin["contexts"] if c["name"] == admin["current-context"])
    entry = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "clusters": [entry],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": entry["name"], "user": account, "namespace": namespace}}],
        "current-context": account}))
    path.chmod(0o600)
    return path


def least_privilege(cluster: Cluster, rendered: str, namespace: str, account: str, since=None, settle: float = 30):
    """What the ServiceAccount did (the test bed's audit log) beside what `rendered` (`helm
    template` output) grants it: a `modelship_testbed.least_privilege.Report`. Requests reach the
    log a moment after their answers: this reads it again, for up to `settle` seconds, until no
    grant is left unused. Skips on a cluster other than the test bed (no audit log to read)."""
    from modelship_testbed import audit
    from modelship_testbed.least_privilege import least_privilege_report
    from modelship_testbed.paths import kubeconfig_path

    if cluster.kubeconfig != str(kubeconfig_path()) or not audit.log_files():
        pytest.skip("needs the test bed's API server audit log (a test bed started since it has one: "
                    "`modelship testbed down`, then up)")
    user = audit.service_account_user(namespace, account)
    deadline = time.monotonic() + settle
    while True:
        report = least_privilege_report(rendered, namespace, account, audit.requests_by(user, since))
        if not report.unused or time.monotonic() > deadline:
            return report
        time.sleep(1)


def md_status(cluster: Cluster, namespace: str, name: str) -> dict:
    return json.loads(cluster.kubectl("get", "md", name, "-n", namespace, "-o", "json")).get("status") or {}


def condition(status: dict, type_: str) -> dict:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def wait_phase(cluster: Cluster, op: "LocalOperator | HelmOperator", name: str, phase: str, timeout: float = 90) -> dict:
    def check():
        st = md_status(cluster, op.namespace, name)
        return st if st.get("phase") == phase else None

    return wait_for(check, timeout, f"ModelDeployment {name} to be {phase}",
                    lambda: cluster.kubectl("get", "md,deploy,job,pod,pvc", "-n", op.namespace, "-o", "wide",
                                            check=False) + json.dumps(md_status(cluster, op.namespace, name),
                                                                      indent=1) + "\n--- operator log\n"
                    + op.log()[-3000:])


def children(cluster: Cluster, namespace: str, name: str) -> dict[str, list[str]]:
    """Per kind, the names of what the operator made for one ModelDeployment: labelled with its
    name, or (a Job on a volume it shares: the shared cache, a claim of the user's) owned by it."""
    out = {}
    for kind in ("deployments", "jobs", "services", "persistentvolumeclaims"):
        items = json.loads(cluster.kubectl("get", kind, "-n", namespace, "-l", "app.kubernetes.io/managed-by=modelship",
                                           "-o", "json"))["items"]
        out[kind] = sorted(i["metadata"]["name"] for i in items
                           if (i["metadata"].get("labels") or {}).get("modelship.io/deployment") == name
                           or (kind == "jobs" and any(r.get("kind") == "ModelDeployment" and r.get("name") == name
                                                      for r in i["metadata"].get("ownerReferences") or [])))
    return out


def claim_path(cluster: Cluster, namespace: str, claim: str) -> Path:
    """The folder of a bound claim (the local provisioner's hostPath), once it is bound."""
    volume = wait_for(lambda: json.loads(cluster.kubectl("get", "pvc", claim, "-n", namespace, "-o", "json"))
                      ["spec"].get("volumeName"), 30, f"PVC {claim} to be bound")
    return Path(json.loads(cluster.kubectl("get", "pv", volume, "-o", "json"))["spec"]["hostPath"]["path"])


def preload_claim(cluster: Cluster, namespace: str, claim: str = "preloaded", create: bool = True) -> Path:
    """A PVC holding SmolLM2 in the Hub cache layout, as an air-gapped cluster would have it
    (create=False: put the weights on a claim the operator made, as a download would)."""
    from modelship_testbed.binaries import smollm2_gguf

    if create:
        cluster.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
                       "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
                      namespace)
    path = claim_path(cluster, namespace, claim)
    snap = path / "models--HuggingFaceTB--SmolLM2-135M-Instruct-GGUF" / "snapshots" / SMOLLM2_SHA
    snap.mkdir(parents=True, exist_ok=True)
    src = smollm2_gguf()
    try:
        os.link(src, snap / SMOLLM2_FILE)
    except OSError:
        import shutil

        shutil.copyfile(src, snap / SMOLLM2_FILE)
    return snap


def seed_volume(cluster: Cluster, namespace: str, claim: str, repo: str, sha: str, files: dict[str, bytes]) -> None:
    """Write files into a bound claim's folder (the local provisioner's hostPath)."""
    path = claim_path(cluster, namespace, claim)
    snap = path / f"models--{repo.replace('/', '--')}" / "snapshots" / sha
    snap.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)


def until(seconds: float) -> float:
    return time.monotonic() + seconds
