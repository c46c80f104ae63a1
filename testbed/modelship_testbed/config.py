"""The test bed's settings: fixed by `modelship testbed up` flags and kept in `<state>/config.json`
so that every later command (status, env, the local node, the supervisor) reads the same values."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .paths import state_dir

LOCAL_NODE_NAME = "modelship-local"
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"


@dataclass
class Ports:
    apiserver: int = 6443
    etcd_client: int = 12379
    etcd_peer: int = 12380
    controller_manager: int = 10257
    scheduler: int = 10259
    kwok: int = 10247
    kubelet: int = 10250  # the local node's kubelet API, TLS (kubelet-streaming: port-forward, the rest proxied)
    kubelet_local: int = 10248  # the local node agent's own plain HTTP API behind it (logs, healthz), 127.0.0.1 only
    hub_mirror: int = 18090  # the olah Hub mirror (HF_ENDPOINT)
    router: int = 18000  # the demo's `modelship router`
    # Argo CD (`modelship testbed up --argocd`): its Redis, repo server (gRPC and metrics), the
    # application controller's metrics (it binds every address: no flag narrows it) and git daemon.
    argocd_redis: int = 16379
    argocd_repo_server: int = 18081
    argocd_repo_metrics: int = 18084
    argocd_controller_metrics: int = 18082
    git: int = 19418


@dataclass
class TestbedConfig:
    __test__ = False  # not a pytest test class, despite its name

    ports: Ports = field(default_factory=Ports)
    # Services get ClusterIPs from a loopback range: nothing here routes them (there is no
    # kube-proxy), and a client that dials one by mistake stays on this machine.
    service_cidr: str = "127.96.0.0/16"
    kwok_pod_cidr: str = "127.200.0.0/16"
    kwok_node_ip: str = "127.199.0.1"
    local_pod_cidr: str = "127.10.0.0/16"
    local_node: bool = True
    hub_mirror: bool = True
    local_node_gpus: int = 0
    gpu_product: str = GPU_PRODUCT
    images_file: str | None = None  # None: the mapping shipped with the test bed

    def shifted(self, n: int) -> "TestbedConfig":
        """This configuration for the n-th test bed on one machine: ports n*100 higher, pods on
        127.(10+n).0.0/16 (n=0: unchanged)."""
        if n:
            self.ports = Ports(**{k: v + 100 * n for k, v in asdict(self.ports).items()})
            self.local_pod_cidr = f"127.{10 + n}.0.0/16"
        return self

    @property
    def dir(self) -> Path:
        return state_dir()

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    def save(self, path: Path | None = None) -> None:
        path = path or self.dir / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path | None = None) -> "TestbedConfig":
        path = path or state_dir() / "config.json"
        raw = json.loads(path.read_text())
        raw_ports = raw.pop("ports", {})
        if "kubelet" in raw_ports:  # saved before kubelet_local existed: keep the pair 2 apart, offset included
            raw_ports.setdefault("kubelet_local", raw_ports["kubelet"] - 2)
        ports = Ports(**raw_ports)
        known = {f.name for f in fields(cls)}
        return cls(ports=ports, **{k: v for k, v in raw.items() if k in known})
