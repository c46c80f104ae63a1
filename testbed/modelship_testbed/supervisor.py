"""The test bed's supervisor: one background process that owns every component.

It starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok, the Hub
mirror (olah), the local node and its kubelet port's front, kubelet-streaming, in order (the
last three when the configuration has them),
each once the one before answers its health check; restarts a component that dies, with
back-off; and on SIGTERM stops them in reverse order. Children get PR_SET_PDEATHSIG, so
even a SIGKILLed supervisor leaves no component behind.

Progress and health are written to `<state>/status.json`, which `modelship testbed up`
and `status` read. Run as `python -m modelship_testbed.supervisor`.

An add-on (Argo CD: `modelship testbed up --argocd`) runs under a supervisor of its own
(`python -m modelship_testbed.supervisor --addon argocd`), with its status and pid file under
`<state>/<addon>/` (its components' logs beside the others' in `<state>/logs/`); `modelship
testbed down` stops it before the cluster.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from . import binaries, pki
from .config import LOCAL_NODE_NAME, TestbedConfig
from .procs import die_with_parent, signal_group, start_time


@dataclass
class Spec:
    name: str
    argv: list[str]
    health_url: str | None
    env: dict[str, str] = field(default_factory=dict)
    stop_timeout: float = 15.0  # seconds from SIGTERM to SIGKILL (the local node's is longer: it stops pods)


@dataclass
class Running:
    spec: Spec
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    ready: bool = False
    state: str = "pending"
    started_at: float = 0.0


# The controller-manager's and the scheduler's own rate limits towards the API server, when
# MODELSHIP_TESTBED_CONTROL_PLANE_QPS is set in the environment of `modelship testbed up`
# (the scale bench: bench/README.md §7), as Kubernetes' scalability tests set them for
# clusters of hundreds to thousands of nodes (kubernetes/test-infra, the kubemark jobs'
# KUBEMARK_MASTER_COMPONENTS_QPS_LIMITS: 100). Their defaults (20 requests a second for every
# controller of the controller-manager together) made the Job, ReplicaSet and EndpointSlice
# controllers, not the API server or the operator, what 500 ModelDeployments waited for. Not
# the default: at 100, tests/integration/test_faults_serving.py's force-deleted serving pod
# leaves requests hanging in the router (found in stop 28, not yet understood).
QPS_ENV = "MODELSHIP_TESTBED_CONTROL_PLANE_QPS"


def control_plane_qps() -> tuple[str, ...]:
    qps = os.environ.get(QPS_ENV, "").strip()
    if not qps:
        return ()
    if not qps.isdigit() or int(qps) < 1:
        raise SystemExit(f"{QPS_ENV}={qps!r}: give a whole number of requests a second, e.g. 100")
    return (f"--kube-api-qps={qps}", f"--kube-api-burst={qps}")


# The API server's /debug/pprof, when MODELSHIP_TESTBED_PROFILING=1 is set for `modelship testbed
# up`: where its CPU goes under a bench (`kubectl get --raw '/debug/pprof/profile?seconds=60'`,
# then `go tool pprof -top`; bench/README.md §7). Off by default, as on a real cluster.
PROFILING_ENV = "MODELSHIP_TESTBED_PROFILING"


def profiling() -> str:
    value = os.environ.get(PROFILING_ENV, "").strip()
    if value not in ("", "0", "1"):
        raise SystemExit(f"{PROFILING_ENV}={value!r}: give 1 to serve the API server's /debug/pprof, or 0")
    return f"--profiling={'true' if value == '1' else 'false'}"


def component_specs(cfg: TestbedConfig) -> list[Spec]:
    d = cfg.dir
    p = pki.Pki(d / "pki")
    bp = binaries.path
    ports = cfg.ports
    etcd_url = f"http://127.0.0.1:{ports.etcd_client}"
    specs = [
        Spec("etcd", [
            str(bp("etcd")), "--name=testbed", f"--data-dir={d / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{ports.etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{ports.etcd_peer}",
            f"--initial-cluster=testbed=http://127.0.0.1:{ports.etcd_peer}",
            # A throwaway cluster: skip fsync, it costs seconds on every write burst.
            "--unsafe-no-fsync", "--quota-backend-bytes=4294967296", "--log-level=warn",
        ], f"{etcd_url}/health"),
        Spec("kube-apiserver", [
            str(bp("kube-apiserver")), f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={ports.apiserver}",
            f"--tls-cert-file={p.cert('apiserver')}", f"--tls-private-key-file={p.key('apiserver')}",
            f"--client-ca-file={p.ca}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p.sa_pub}", f"--service-account-signing-key-file={p.sa_key}",
            f"--service-cluster-ip-range={cfg.service_cidr}",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true",
            f"--kubelet-client-certificate={p.cert('apiserver-kubelet-client')}",
            f"--kubelet-client-key={p.key('apiserver-kubelet-client')}",
            f"--kubelet-certificate-authority={p.ca}", "--kubelet-preferred-address-types=InternalIP",
            profiling(), "--event-ttl=1h",
            # What ServiceAccounts do, for the least-privilege check (modelship_testbed.audit):
            # JSON lines, rotated at 50 MB with 3 old files kept, so a long run cannot fill the disk.
            f"--audit-policy-file={d / AUDIT_POLICY_FILE}", f"--audit-log-path={d / 'logs' / 'audit.log'}",
            "--audit-log-format=json", "--audit-log-maxsize=50", "--audit-log-maxbackup=3",
            "--audit-log-maxage=1",
        ], f"{cfg.server}/readyz"),
        Spec("kube-controller-manager", [
            str(bp("kube-controller-manager")), f"--kubeconfig={d / 'pki' / 'controller-manager.kubeconfig'}",
            f"--authentication-kubeconfig={d / 'pki' / 'controller-manager.kubeconfig'}",
            f"--authorization-kubeconfig={d / 'pki' / 'controller-manager.kubeconfig'}",
            "--bind-address=127.0.0.1", f"--secure-port={ports.controller_manager}",
            f"--cert-dir={d / 'controller-manager'}", "--leader-elect=false", "--controllers=*",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={p.sa_key}", f"--root-ca-file={p.ca}",
            f"--cluster-signing-cert-file={p.ca}", f"--cluster-signing-key-file={p.key('ca')}",
            f"--service-cluster-ip-range={cfg.service_cidr}",
            # Tests delete and recreate quickly; do not wait minutes to collect terminated pods.
            "--terminated-pod-gc-threshold=500",
            *control_plane_qps(),
        ], f"https://127.0.0.1:{ports.controller_manager}/healthz"),
        Spec("kube-scheduler", [
            str(bp("kube-scheduler")), f"--kubeconfig={d / 'pki' / 'scheduler.kubeconfig'}",
            f"--authentication-kubeconfig={d / 'pki' / 'scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={d / 'pki' / 'scheduler.kubeconfig'}",
            "--bind-address=127.0.0.1", f"--secure-port={ports.scheduler}",
            f"--cert-dir={d / 'scheduler'}", "--leader-elect=false", *control_plane_qps(),
        ], f"https://127.0.0.1:{ports.scheduler}/healthz"),
        Spec("kwok", [
            str(bp("kwok")), f"--kubeconfig={d / 'kubeconfig'}", f"--config={d / 'kwok.yaml'}",
            "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--cidr={cfg.kwok_pod_cidr}", f"--node-ip={cfg.kwok_node_ip}",
            f"--server-address=127.0.0.1:{ports.kwok}", "--node-lease-duration-seconds=40",
        ], f"http://127.0.0.1:{ports.kwok}/healthz"),
    ]
    if cfg.hub_mirror:
        from . import hubmirror

        specs.append(Spec("hub-mirror", [str(hubmirror.olah_cli()), "-c", str(hubmirror.write_config(d, ports.hub_mirror))],
                          hubmirror.health_url(ports.hub_mirror)))
    if cfg.local_node:
        specs.append(Spec("local-node", [
            sys.executable, "-m", "modelship_testbed.localnode", f"--state-dir={d}", f"--name={LOCAL_NODE_NAME}",
        ], f"http://127.0.0.1:{ports.kubelet_local}/healthz", stop_timeout=45.0))
        # The kubelet port itself: TLS, port-forward, and the agent's endpoints proxied (its
        # /healthz answers only when the agent behind it does).
        specs.append(Spec("kubelet-streaming", [
            str(bp("kubelet-streaming")), f"--listen=127.0.0.1:{ports.kubelet}",
            f"--tls-cert-file={p.cert('kubelet')}", f"--tls-private-key-file={p.key('kubelet')}",
            f"--client-ca-file={p.ca}", f"--backend=http://127.0.0.1:{ports.kubelet_local}",
            f"--node-name={LOCAL_NODE_NAME}",
        ], f"https://127.0.0.1:{ports.kubelet}/healthz", stop_timeout=5.0))
    return specs


AUDIT_POLICY_FILE = "audit-policy.yaml"
# Metadata (who, which verb on which object, the answer's code; never a body) for requests made
# by ServiceAccounts, nothing else. kube-system's accounts are left out: the controller-manager
# runs each controller as one of them (--use-service-account-credentials) and they would be
# most of the log. Nodes, the admin and the components' own certificates are not ServiceAccounts.
# No RequestReceived stage: each request is logged once when it completes (a watch also when
# its response starts, under the same auditID).
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    userGroups: ["system:serviceaccounts:kube-system"]
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
"""

KWOK_CONFIG = """apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options: {}
"""


def prepare(cfg: TestbedConfig) -> None:
    """Certificates, kubeconfigs and config files; idempotent."""
    d = cfg.dir
    for sub in ("logs", "etcd", "controller-manager", "scheduler"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    service_ip = cfg.service_cidr.split("/")[0].rsplit(".", 1)[0] + ".1"
    p = pki.ensure(d / "pki", service_ip)
    (d / "kubeconfig").write_text(pki.kubeconfig(p, cfg.server, "admin"))
    (d / "kubeconfig").chmod(0o600)
    for user in ("controller-manager", "scheduler"):
        (d / "pki" / f"{user}.kubeconfig").write_text(pki.kubeconfig(p, cfg.server, user))
    (d / "kwok.yaml").write_text(KWOK_CONFIG)
    (d / AUDIT_POLICY_FILE).write_text(AUDIT_POLICY)
    cfg.save()


def addon_specs(cfg: TestbedConfig, addon: str) -> list[Spec]:
    if addon == "argocd":
        from . import argocd

        return argocd.component_specs(cfg)
    raise SystemExit(f"unknown add-on {addon!r}")


class Supervisor:
    def __init__(self, cfg: TestbedConfig, specs: list[Spec] | None = None, home: Path | None = None):
        self.cfg = cfg
        self.home = home or cfg.dir  # where status.json is written
        self.status_path = self.home / "status.json"
        self.components = [Running(s) for s in (component_specs(cfg) if specs is None else specs)]
        self.phase = "starting"
        self.error: str | None = None
        self.stopping = asyncio.Event()
        p = pki.Pki(cfg.dir / "pki")
        ctx = ssl.create_default_context(cafile=str(p.ca))
        ctx.load_cert_chain(str(p.cert("admin")), str(p.key("admin")))
        # Controller-manager and scheduler serve self-signed certificates from --cert-dir.
        self.http_verified = httpx.AsyncClient(verify=ctx, timeout=2.0)
        self.http_unverified = httpx.AsyncClient(verify=False, timeout=2.0)

    def write_status(self) -> None:
        data = {
            "pid": os.getpid(),
            "phase": self.phase,
            "error": self.error,
            "components": {
                r.spec.name: {
                    "pid": r.proc.pid if r.proc and r.proc.returncode is None else None,
                    # for `down`, to tell this process from a later one with the same pid
                    "started": start_time(r.proc.pid) if r.proc and r.proc.returncode is None else None,
                    "state": r.state, "ready": r.ready, "restarts": r.restarts,
                    "log": str(self.cfg.dir / "logs" / f"{r.spec.name}.log"),
                }
                for r in self.components
            },
        }
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.status_path)

    async def healthy(self, spec: Spec) -> bool:
        if spec.health_url is None:
            return True
        if spec.health_url.startswith("tcp://"):  # a port that accepts connections (redis, git daemon)
            host, port = spec.health_url.removeprefix("tcp://").rsplit(":", 1)
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 2.0)
            except (OSError, asyncio.TimeoutError):
                return False
            writer.close()
            return True
        client = self.http_unverified if spec.name in ("kube-controller-manager", "kube-scheduler") \
            else self.http_verified
        try:
            r = await client.get(spec.health_url)
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    async def start(self, r: Running) -> None:
        log = open(self.cfg.dir / "logs" / f"{r.spec.name}.log", "ab")
        log.write(f"\n--- starting {r.spec.name} at {time.ctime()}\n".encode())
        log.flush()
        env = {**os.environ, **r.spec.env}
        r.proc = await asyncio.create_subprocess_exec(
            *r.spec.argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            cwd=self.cfg.dir, preexec_fn=die_with_parent, start_new_session=True,
        )
        log.close()
        r.state, r.ready, r.started_at = "starting", False, time.monotonic()
        self.write_status()

    async def wait_healthy(self, r: Running, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if r.proc and r.proc.returncode is not None:
                raise RuntimeError(f"{r.spec.name} exited with code {r.proc.returncode} while starting; "
                                   f"see {self.cfg.dir / 'logs' / (r.spec.name + '.log')}")
            if await self.healthy(r.spec):
                r.state, r.ready = "running", True
                self.write_status()
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{r.spec.name} did not become healthy in {timeout:.0f}s; "
                           f"see {self.cfg.dir / 'logs' / (r.spec.name + '.log')}")

    async def watch(self, r: Running) -> None:
        """Restart a component that exits while the test bed is up, with back-off."""
        backoff = 1.0
        while not self.stopping.is_set():
            assert r.proc is not None
            code = await r.proc.wait()
            if self.stopping.is_set():
                return
            r.state, r.ready = f"exited ({code}), restarting", False
            r.restarts += 1
            self.write_status()
            ran = time.monotonic() - r.started_at
            backoff = 1.0 if ran > 60 else min(backoff * 2, 30.0)
            try:
                await asyncio.wait_for(self.stopping.wait(), timeout=backoff)
                return
            except asyncio.TimeoutError:
                pass
            await self.start(r)
            try:
                await self.wait_healthy(r)
            except RuntimeError as e:
                self.error = str(e)
                self.write_status()

    async def stop(self) -> None:
        self.stopping.set()
        self.phase = "stopping"
        self.write_status()
        for r in reversed(self.components):
            if r.proc is None or r.proc.returncode is not None:
                continue
            r.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(r.proc.wait(), timeout=r.spec.stop_timeout)
            except asyncio.TimeoutError:
                signal_group(r.proc.pid, signal.SIGKILL)
                await r.proc.wait()
            r.state, r.ready = "stopped", False
            self.write_status()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        watchers = []
        try:
            for r in self.components:
                await self.start(r)
                await self.wait_healthy(r)
                watchers.append(asyncio.create_task(self.watch(r)))
            self.phase = "ready"
            self.write_status()
        except Exception as e:  # RuntimeError from a health check, OSError from a start
            self.phase, self.error = "failed", str(e)
            self.write_status()
            await self.stop()
            self.phase = "failed"
            self.write_status()
            return 1
        await done.wait()
        await self.stop()
        for w in watchers:
            w.cancel()
        self.phase = "stopped"
        self.write_status()
        return 0


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    cfg = TestbedConfig.load()
    addon = argv[1] if len(argv) == 2 and argv[0] == "--addon" else None
    home = cfg.dir / addon if addon else cfg.dir
    specs = addon_specs(cfg, addon) if addon else None
    (home / "supervisor.pid").write_text(str(os.getpid()))
    try:
        code = asyncio.run(Supervisor(cfg, specs, home).run())
    finally:
        (home / "supervisor.pid").unlink(missing_ok=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
