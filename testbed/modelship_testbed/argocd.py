"""Argo CD on the test bed, on demand: `modelship testbed up --argocd` (or the tests' fixture).

What a real Argo CD needs to sync from git into the test bed's cluster, as local processes on
loopback (its API server and UI are not needed, and not run):

- its CRDs (Application, ApplicationSet, AppProject, from the v3.5.7 module it is built
  from), the ConfigMaps and Secrets of its `install.yaml`, a `server.secretkey` in
  `argocd-secret`, the `default` AppProject, and in `argocd-cm` the ModelDeployment health
  check users get (`examples/gitops/argo-cd-values.yaml`, the very file: the live tests check
  what is shipped);
- Debian's `redis-server` (its cache), the repo server (renders manifests from git, Helm
  charts with the test bed's helm) and the application controller (compares and syncs; with
  `ARGOCD_FAKE_IN_CLUSTER` its in-cluster destination, `https://kubernetes.default.svc`, is the
  test bed's API server);
- `git daemon`, serving the bare repositories under `<state>/argocd/git/` read-only as
  `git://127.0.0.1:<port>/<name>.git` (`create_repo`, `git_url`); commits are pushed to the
  bare repository's path (`push_path`), so no account of the machine can push over loopback
  what Argo CD would apply; Redis has a password of its own for the same reason.

They run under a supervisor of their own (`python -m modelship_testbed.supervisor --addon
argocd`), which restarts one that dies; `modelship testbed down` stops them first.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import yaml

from . import binaries, procs
from .config import TestbedConfig
from .paths import kubeconfig_path, state_dir

Log = Callable[[str], None]
NAMESPACE = "argocd"
ADDON = "argocd"
HEALTH_KEY = "resource.customizations.health.modelship.io_ModelDeployment"
VALUES = Path(__file__).resolve().parents[2] / "examples" / "gitops" / "argo-cd-values.yaml"
# What install.yaml holds that the local processes read (the rest is Deployments, RBAC, Services).
CONFIG_KINDS = ("ConfigMap", "Secret")


class ArgoCDError(RuntimeError):
    """Something a person can act on; the CLI prints it as one line."""


def home() -> Path:
    return state_dir() / ADDON


def git_root() -> Path:
    return home() / "git"


def redis_password() -> str:
    """Made once per test bed, kept in <state>/argocd/redis-password (0600)."""
    path = home() / "redis-password"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(24))
    return path.read_text().strip()


def _needs() -> None:
    missing = [t for t in ("redis-server", "git") if shutil.which(t) is None]
    if missing:
        raise ArgoCDError(f"Argo CD on the test bed needs {' and '.join(missing)}, not found on PATH: "
                          f"`apt-get install {' '.join(missing)}` (Debian's packages)")


def component_specs(cfg: TestbedConfig) -> list:
    from .supervisor import Spec

    ports, bin_dir, h = cfg.ports, binaries.path("argocd").parent, home()
    helm_dir = binaries.path("helm").parent
    redis = f"127.0.0.1:{ports.argocd_redis}"
    # The repo server runs git, git-verify-wrapper.sh and helm from PATH; Helm's and git's state
    # stays under <state>/argocd, never in the user's home.
    env = {"PATH": f"{bin_dir}:{helm_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
           "HOME": str(h / "home"), "TMPDIR": str(h / "tmp"), "ARGOCD_GPG_ENABLED": "false",
           "HELM_CACHE_HOME": str(h / "helm" / "cache"), "HELM_CONFIG_HOME": str(h / "helm" / "config"),
           "HELM_DATA_HOME": str(h / "helm" / "data"), "REDIS_PASSWORD": redis_password()}
    return [
        # Redis with a password of its own: it holds the manifests the controller applies, and
        # loopback is shared by every account of the machine.
        Spec("argocd-redis", [shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1",
                              "--port", str(ports.argocd_redis), "--save", "", "--appendonly", "no",
                              "--dir", str(h), "--requirepass", redis_password()], f"tcp://{redis}"),
        # Read-only: commits go straight into the bare repositories (`push_path`), never over the
        # network, so no other account of the machine can push what Argo CD would apply.
        Spec("git-daemon", ["git", "daemon", "--listen=127.0.0.1", f"--port={ports.git}", "--reuseaddr",
                            "--export-all", "--informative-errors",
                            f"--base-path={git_root()}", str(git_root())], f"tcp://127.0.0.1:{ports.git}",
             env={"HOME": str(h / "home")}),
        Spec("argocd-repo-server", [
            str(bin_dir / "argocd-repo-server"), "--address", "127.0.0.1", "--port", str(ports.argocd_repo_server),
            "--metrics-address", "127.0.0.1", "--metrics-port", str(ports.argocd_repo_metrics),
            "--disable-tls", "--client-ca-path=", "--redis", redis, "--logformat", "text",
        ], f"http://127.0.0.1:{ports.argocd_repo_metrics}/healthz", env=env),
        Spec("argocd-application-controller", [
            str(bin_dir / "argocd-application-controller"), f"--kubeconfig={kubeconfig_path()}",
            "--namespace", NAMESPACE, "--redis", redis, "--repo-server", f"127.0.0.1:{ports.argocd_repo_server}",
            "--repo-server-plaintext", "--metrics-port", str(ports.argocd_controller_metrics), "--logformat", "text",
            # Each resource's health in the Application's status too (Argo CD 3 keeps it only in
            # Redis by default, for its API server, which the test bed does not run).
            "--persist-resource-health",
        ], f"http://127.0.0.1:{ports.argocd_controller_metrics}/healthz",
             # The in-cluster destination read from KUBECONFIG, as a pod would read its account.
             env={**env, "ARGOCD_FAKE_IN_CLUSTER": "true", "KUBECONFIG": str(kubeconfig_path())}),
    ]


def health_check() -> str:
    """The ModelDeployment health check as shipped to users (the Argo CD chart's values)."""
    values = yaml.safe_load(VALUES.read_text())
    return values["configs"]["cm"][HEALTH_KEY]


def config_objects(install_yaml: Path) -> list[dict]:
    """The ConfigMaps and Secrets of install.yaml, namespaced, with the health check in argocd-cm
    and a server.secretkey in argocd-secret; and the `default` AppProject."""
    objs = []
    for doc in yaml.safe_load_all(install_yaml.read_text()):
        if not doc or doc.get("kind") not in CONFIG_KINDS:
            continue
        doc["metadata"]["namespace"] = NAMESPACE
        if doc["metadata"]["name"] == "argocd-cm":
            doc["data"] = {**(doc.get("data") or {}), HEALTH_KEY: health_check()}
        if doc["metadata"]["name"] == "argocd-secret":
            doc["stringData"] = {"server.secretkey": secrets.token_urlsafe(32)}
        objs.append(doc)
    if not any(o["metadata"]["name"] == "argocd-cm" for o in objs):
        raise ArgoCDError(f"{install_yaml} has no argocd-cm ConfigMap; is it Argo CD's install.yaml?")
    objs.append({"apiVersion": "argoproj.io/v1alpha1", "kind": "AppProject",
                 "metadata": {"name": "default", "namespace": NAMESPACE},
                 "spec": {"sourceRepos": ["*"], "destinations": [{"server": "*", "namespace": "*"}],
                          "clusterResourceWhitelist": [{"group": "*", "kind": "*"}]}})
    return objs


def _kubectl(*args: str, stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run([str(binaries.path("kubectl")), f"--kubeconfig={kubeconfig_path()}", *args],
                          input=stdin, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and check:
        raise ArgoCDError(f"kubectl {' '.join(args[:2])}: {proc.stderr.strip()}")
    return proc.stdout


def install(log: Log) -> None:
    """Argo CD's CRDs and configuration in the cluster (idempotent)."""
    manifests = binaries.argocd_manifests(log)
    _kubectl("apply", "--server-side", "--force-conflicts", "-f", str(manifests / "crds"))
    # (Not `kubectl wait`: it fails at once on a CRD so new that its status has no conditions.)
    deadline = time.monotonic() + 60
    established = "jsonpath={.status.conditions[?(@.type=='Established')].status}"
    for crd in ("applications.argoproj.io", "appprojects.argoproj.io"):
        while _kubectl("get", f"crd/{crd}", "-o", established, check=False).strip() != "True":
            if time.monotonic() > deadline:
                raise ArgoCDError(f"CRD {crd} not Established after 60s")
            time.sleep(0.2)
    _kubectl("apply", "-f", "-", stdin=yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace",
                                                          "metadata": {"name": NAMESPACE}}))
    objs = config_objects(manifests / "install.yaml")
    # Server-side: argocd-cm and argocd-secret keep what a test added beside (the secret's key
    # is only set when there is none, so a restart keeps the one Argo CD signed with).
    if _kubectl("get", "secret", "-n", NAMESPACE, "argocd-secret", "-o", "jsonpath={.data.server\\.secretkey}",
                check=False).strip():
        objs = [o for o in objs if o["metadata"]["name"] != "argocd-secret"]
    _kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=modelship-testbed", "-f", "-",
             stdin=yaml.safe_dump_all(objs))


def supervisor_pid() -> int | None:
    return procs.supervisor_pid(home(), ADDON)


def read_status() -> dict | None:
    return procs.read_status(home())


def up(log: Log, timeout: float = 120.0) -> None:
    """Start Argo CD beside a running test bed (nothing happens when it already runs)."""
    _needs()
    start = time.monotonic()
    cfg = TestbedConfig.load()
    if supervisor_pid():  # up, or still starting (an earlier `up` interrupted): never a second one
        if (read_status() or {}).get("phase") == "ready":
            log(f"Argo CD already up (supervisor pid {supervisor_pid()})")
            return
    else:
        binaries.ensure("argocd", log)
        binaries.ensure("helm", log)
        for sub in ("git", "home", "tmp", "helm"):
            (home() / sub).mkdir(parents=True, exist_ok=True)
        install(log)
        (home() / "status.json").unlink(missing_ok=True)
        with open(cfg.dir / "logs" / "argocd-supervisor.log", "ab") as out:
            subprocess.Popen([sys.executable, "-m", "modelship_testbed.supervisor", "--addon", ADDON],
                             stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, cwd=cfg.dir)
    deadline = time.monotonic() + timeout
    said: set[str] = set()
    while time.monotonic() < deadline:
        st = read_status() or {}
        for name, c in st.get("components", {}).items():
            if c["ready"] and name not in said:
                said.add(name)
                log(f"  {name} ready ({time.monotonic() - start:.1f}s)")
        if st.get("phase") == "ready":
            log(f"Argo CD up in {time.monotonic() - start:.1f}s: repositories as "
                f"git://127.0.0.1:{cfg.ports.git}/<name>.git (folders of {git_root()})")
            return
        if st.get("phase") in ("failed", "stopped"):
            down(lambda _: None)
            raise ArgoCDError(f"Argo CD failed to start: {st.get('error')}")
        time.sleep(0.2)
    down(lambda _: None)
    raise ArgoCDError(f"Argo CD not ready after {timeout:.0f}s; logs in {cfg.dir / 'logs'}")


def down(log: Log, keep_data: bool = False) -> None:
    """Stop Argo CD's processes (its objects stay in the cluster; the git repositories go unless
    `keep_data`)."""
    if procs.stop_supervisor(home(), 60, ADDON):
        log("stopped Argo CD")
    if not keep_data and home().exists():
        shutil.rmtree(home(), ignore_errors=True)


def status_lines() -> list[str]:
    pid = supervisor_pid()
    if not pid:
        return []
    st = read_status() or {}
    return [f"Argo CD {st.get('phase', 'unknown')} (supervisor pid {pid})", *procs.component_lines(st, 29)]


def git_url(repo: str, cfg: TestbedConfig | None = None) -> str:
    cfg = cfg or TestbedConfig.load()
    return f"git://127.0.0.1:{cfg.ports.git}/{repo}.git"


def push_path(repo: str) -> Path:
    """Where commits for a repository are pushed: the bare repository itself (the daemon serves
    it read-only)."""
    return git_root() / f"{repo}.git"


def create_repo(repo: str) -> str:
    """A new, empty bare repository served by the git daemon (replacing one of the same name);
    its git:// URL, which Argo CD reads (push to `push_path(repo)`)."""
    path = git_root() / f"{repo}.git"
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True)
    return git_url(repo)
