"""An extra process-backed node beside the test bed's local node, for tests: typically a GPU
node of the gpu pool whose pods really run (the engines' fakes stand in for the GPU engines).

`ExtraNode.start()` runs a local node agent under another name, with its own pod addresses
(a /16 of loopback no other node uses), its own kubelet ports (and a `kubelet-streaming` in
front, so that `kubectl logs` and `port-forward` reach its pods) and its own folder
(`localnode/nodes/NAME`), then waits for its Node to be Ready. It carries a taint of its own
(`modelship.io/extra-node=NAME:NoSchedule`) besides the GPU one, so that only pods that
tolerate it by name land there: other tests' pods for the gpu pool or the local node never do.
`stop()` stops both processes by their pids (the agent ends its pods' processes), removes the
pods still bound to the node (no kubelet is left to finish their deletion), its folder, its
Lease and its Node.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import binaries, pki, procs
from ..nodepools import GPU_TAINT
from ..paths import state_dir

TAINT_KEY = "modelship.io/extra-node"
# Pod addresses: 127.150-189.x.y (the local node has 127.10+n, kwok 127.200, Services 127.96).
CIDR_SECOND_OCTETS = range(150, 190)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def taint(name: str) -> dict:
    return {"key": TAINT_KEY, "value": name, "effect": "NoSchedule"}


def tolerations(name: str, gpus: int) -> list[dict]:
    """What a pod needs to be scheduled on the extra node `name`."""
    out = [{"key": TAINT_KEY, "operator": "Equal", "value": name, "effect": "NoSchedule"}]
    if gpus:
        out.append({"key": GPU_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"})
    return out


@dataclass
class ExtraNode:
    name: str
    gpus: int = 1
    labels: dict[str, str] = field(default_factory=dict)
    pod_cidr: str = field(default_factory=lambda: f"127.{random.choice(CIDR_SECOND_OCTETS)}.0.0/16")
    kubelet_port: int = field(default_factory=free_port)
    kubelet_local_port: int = field(default_factory=free_port)
    dir: Path = field(default_factory=state_dir)  # the test bed's state folder
    agent: subprocess.Popen | None = None
    streaming: subprocess.Popen | None = None

    @property
    def root(self) -> Path:
        return self.dir / "localnode" / "nodes" / self.name  # what the agent calls node_root

    @property
    def log_path(self) -> Path:
        return self.root / "agent.log"

    def agent_argv(self) -> list[str]:
        argv = [sys.executable, "-m", "modelship_testbed.localnode", f"--state-dir={self.dir}", f"--name={self.name}",
                f"--gpus={self.gpus}", f"--pod-cidr={self.pod_cidr}", f"--kubelet-port={self.kubelet_port}",
                f"--kubelet-local-port={self.kubelet_local_port}", f"--taint={TAINT_KEY}={self.name}:NoSchedule",
                "--pass-env=PYTHONPATH"]  # its pods run the test bed's programs of the checkout that runs it
        return argv + [f"--label={k}={v}" for k, v in self.labels.items()]

    def streaming_argv(self) -> list[str]:
        p = pki.Pki(self.dir / "pki")
        return [str(binaries.path("kubelet-streaming")), f"--listen=127.0.0.1:{self.kubelet_port}",
                f"--tls-cert-file={p.cert('kubelet')}", f"--tls-private-key-file={p.key('kubelet')}",
                f"--client-ca-file={p.ca}", f"--backend=http://127.0.0.1:{self.kubelet_local_port}",
                f"--node-name={self.name}"]

    def start(self, core, timeout: float = 60) -> "ExtraNode":
        """Start the node and wait until its Node is Ready (`core`: a CoreV1Api)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # each child has its own copy of the descriptor
            self.agent = subprocess.Popen(self.agent_argv(), stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
            self.streaming = subprocess.Popen(self.streaming_argv(), stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.ready(core):
            if self.agent.poll() is not None or time.monotonic() > deadline:
                self.stop(core)
                raise RuntimeError(f"extra node {self.name} did not become Ready in {timeout:.0f}s; its log:\n"
                                   + self.log()[-3000:])
            time.sleep(0.5)
        return self

    def ready(self, core) -> bool:
        try:
            node = core.read_node(self.name)
        except Exception:
            return False
        return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, core) -> None:
        from kubernetes import client

        for proc, wait in ((self.agent, 30), (self.streaming, 5)):
            if proc is not None:
                procs.stop(proc, wait)
        shutil.rmtree(self.root, ignore_errors=True)  # its pods' folders and logs (read log() before)
        # The Node first, so that no new pod is bound to it, then the pods still bound to it
        # (a controller may have replaced them meanwhile): no kubelet is left to end them.
        lease = client.CoordinationV1Api(core.api_client)
        _gone(lambda: core.delete_node(self.name))
        _gone(lambda: lease.delete_namespaced_lease(self.name, "kube-node-lease"))
        for pod in core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={self.name}").items:
            _gone(lambda: core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace,
                                                     grace_period_seconds=0))


def _gone(delete) -> None:
    """Delete something; already gone is fine."""
    try:
        delete()
    except Exception as e:
        if getattr(e, "status", None) != 404:
            raise
