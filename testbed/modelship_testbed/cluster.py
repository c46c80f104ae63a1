"""`modelship testbed up | down | status | env`: the client side of the supervisor."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import binaries, nodepools, procs, supervisor
from .config import LOCAL_NODE_NAME, TestbedConfig
from .paths import kubeconfig_path, state_dir

Log = Callable[[str], None]

NEEDED = ["etcd", "kubernetes", "kwok", "kubelet-streaming", "llama-server", "smollm2"]


class TestbedError(RuntimeError):
    """Something a person can act on; the CLI prints it as one line."""


def supervisor_pid() -> int | None:
    return procs.supervisor_pid(state_dir())


def read_status() -> dict | None:
    return procs.read_status(state_dir())


@dataclass
class UpOptions:
    gpu_nodes: int = 2
    cpu_nodes: int = 0
    local_node: bool = True
    local_node_gpus: int = 0
    images_file: str | None = None
    timeout: float = 180.0


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def api_clients():
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=str(kubeconfig_path()))
    return client.CoreV1Api(api_client), client.StorageV1Api(api_client)


def up(opts: UpOptions, log: Log = print) -> TestbedConfig:
    start = time.monotonic()
    if not 0 <= opts.gpu_nodes <= 5000 or not 0 <= opts.cpu_nodes <= 5000:
        raise TestbedError("--gpu-nodes and --cpu-nodes must be between 0 and 5000")
    images_file = str(Path(opts.images_file).resolve()) if opts.images_file else None
    pid = supervisor_pid()
    if pid:
        cfg = TestbedConfig.load()
        if (cfg.local_node, cfg.local_node_gpus, cfg.images_file) != (opts.local_node, opts.local_node_gpus,
                                                                       images_file):
            raise TestbedError("the test bed is already up with other local-node settings; "
                               "run `modelship testbed down` first to change them")
        status = read_status() or {}
        if status.get("phase") != "ready":
            raise TestbedError(f"the test bed is up but {status.get('phase', 'unknown')}: "
                               f"{status.get('error') or 'see modelship testbed status'}")
        log(f"test bed already up (supervisor pid {pid})")
    else:
        for name in NEEDED:
            binaries.ensure(name, log)
        from . import hubmirror

        hubmirror.ensure_olah(log)
        hubmirror.ensure_mirror(log)
        cfg = TestbedConfig(local_node=opts.local_node, local_node_gpus=opts.local_node_gpus,
                            images_file=images_file).shifted(_port_offset())
        busy = [f"{name} ({port})" for name, port in vars(cfg.ports).items() if _port_in_use(port)]
        if busy:
            raise TestbedError(f"ports in use on 127.0.0.1: {', '.join(busy)}; stop what holds them "
                               "(another test bed under a different MODELSHIP_TESTBED_DIR?)")
        supervisor.prepare(cfg)
        (cfg.dir / "status.json").unlink(missing_ok=True)
        log_file = open(cfg.dir / "logs" / "supervisor.log", "ab")
        subprocess.Popen([sys.executable, "-m", "modelship_testbed.supervisor"], stdin=subprocess.DEVNULL,
                         stdout=log_file, stderr=log_file, start_new_session=True, cwd=cfg.dir)
        _follow_start(cfg, opts.timeout, log)
    core, storage = api_clients()
    nodepools.ensure_storage_class(storage)
    nodepools.reconcile_pools(core, cfg, {"gpu": opts.gpu_nodes, "cpu": opts.cpu_nodes}, log)
    _wait_nodes_ready(core, opts, log)
    log(f"test bed up in {time.monotonic() - start:.1f}s: API server {cfg.server}")
    log(f"  export KUBECONFIG={kubeconfig_path()}")
    return cfg


def _port_offset() -> int:
    """MODELSHIP_TESTBED_PORT_OFFSET=N (1..50): a second test bed beside the first (with its own
    MODELSHIP_TESTBED_DIR), every port N*100 higher and its pods on their own loopback range."""
    raw = os.environ.get("MODELSHIP_TESTBED_PORT_OFFSET", "0")
    if not raw.isdigit() or int(raw) > 50:
        raise TestbedError(f"MODELSHIP_TESTBED_PORT_OFFSET={raw!r}: give a whole number from 0 to 50")
    return int(raw)


def _follow_start(cfg: TestbedConfig, timeout: float, log: Log) -> None:
    deadline = time.monotonic() + timeout
    said: set[str] = set()
    t0 = time.monotonic()
    while time.monotonic() < deadline:
        status = read_status()
        if status:
            for name, c in status["components"].items():
                if c["ready"] and name not in said:
                    said.add(name)
                    log(f"  {name} ready ({time.monotonic() - t0:.1f}s)")
            if status["phase"] == "ready":
                return
            if status["phase"] in ("failed", "stopped"):
                raise TestbedError(f"test bed failed to start: {status.get('error')}")
        time.sleep(0.1)
    down(log=lambda _: None)
    raise TestbedError(f"test bed not ready after {timeout:.0f}s; logs in {cfg.dir / 'logs'}")


def _wait_nodes_ready(core, opts: UpOptions, log: Log, timeout: float = 120.0) -> None:
    want = opts.gpu_nodes + opts.cpu_nodes + (1 if opts.local_node else 0)
    deadline = time.monotonic() + timeout
    ready = 0
    while time.monotonic() < deadline:
        nodes = core.list_node().items
        ready = sum(
            1 for n in nodes
            if (n.metadata.name == LOCAL_NODE_NAME or (n.metadata.labels or {}).get("type") == "kwok")
            and any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))
        )
        if ready >= want:
            log(f"  {ready} nodes Ready")
            return
        time.sleep(0.5)
    raise TestbedError(f"only {ready} of {want} nodes became Ready in {timeout:.0f}s; "
                       "see `kubectl get nodes` and the kwok and local-node logs")


def down(keep_data: bool = False, log: Log = print) -> None:
    from . import argocd

    argocd.down(log, keep_data)  # an add-on first: its controller would see the API server go
    d = state_dir()
    # (The components the status file recorded are killed too if they outlive the supervisor,
    # e.g. after a SIGKILLed supervisor whose children ignored SIGTERM; then recorded pods.)
    log("stopped the test bed" if procs.stop_supervisor(d, 90) else "the test bed is not running")
    for root in [d / "localnode", *(d / "localnode" / "nodes").glob("*")]:  # extra nodes' too (tests')
        procs.kill_recorded(root / "pids")
        _remove_created_mountpoints(root)
    if not keep_data:
        for sub in ("etcd", "localnode", "volumes", "logs", "status.json", "controller-manager", "scheduler"):
            target = d / sub
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)


def _remove_created_mountpoints(root: Path) -> None:
    """Empty folders a local node had to create on the host as mount points."""
    record = root / "created-mountpoints"
    if not record.exists():
        return
    for line in sorted(set(record.read_text().split("\n")), key=len, reverse=True):
        if not line:
            continue
        p = Path(line)
        try:
            if p.is_file() and p.stat().st_size == 0:
                p.unlink()
            else:
                p.rmdir()  # only when empty: never remove what someone put there since
        except OSError:
            pass


def status_lines() -> list[str]:
    pid = supervisor_pid()
    if not pid:
        return ["the test bed is not running (start it with `modelship testbed up`)"]
    st = read_status() or {}
    lines = [f"test bed {st.get('phase', 'unknown')} (supervisor pid {pid}, state in {state_dir()})"]
    if st.get("error"):
        lines.append(f"  error: {st['error']}")
    lines += procs.component_lines(st, 24)
    if st.get("phase") == "ready":
        try:
            core, _ = api_clients()
            nodes = core.list_node().items
            pools: dict[str, int] = {}
            for n in nodes:
                pool = (n.metadata.labels or {}).get(nodepools.POOL_LABEL, "none")
                kind = "local" if n.metadata.name == LOCAL_NODE_NAME else "kwok"
                pools[f"{kind}/{pool}"] = pools.get(f"{kind}/{pool}", 0) + 1
            lines.append("  nodes: " + ", ".join(f"{k}={v}" for k, v in sorted(pools.items())))
        except Exception as e:  # status must still print something useful
            lines.append(f"  nodes: unavailable ({e.__class__.__name__})")
    from . import argocd

    lines += argocd.status_lines()
    lines.append(f"  kubeconfig: {kubeconfig_path()}")
    return lines
