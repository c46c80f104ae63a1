"""Fixtures shared by every test layer.

Integration tests need a Kubernetes API server. With KUBECONFIG set, they use that cluster;
otherwise they use the local test bed, reusing one that is already up or starting one
for the session (and stopping it afterwards). Tests marked `localnode` need the test bed's
process-backed node and are skipped on other clusters.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Cluster:
    kubeconfig: str
    kubectl_bin: str
    local_node: str | None

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        proc = subprocess.run([self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", *args], input=stdin,
                              capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout + (proc.stderr if not check else "")

    def wait_established(self, crd: str, timeout: float = 60) -> None:
        """Until the CRD serves its resource. (`kubectl wait --for=condition=Established` fails at
        once, rather than waiting, on a CRD so new that its status has no conditions yet.)"""
        jsonpath = "jsonpath={.status.conditions[?(@.type=='Established')].status}"
        wait_for(lambda: self.kubectl("get", f"crd/{crd}", "-o", jsonpath, check=False).strip() == "True", timeout,
                 f"CRD {crd} to be Established")

    def apply(self, manifest: str | list | dict, namespace: str) -> str:
        if not isinstance(manifest, str):
            docs = manifest if isinstance(manifest, list) else [manifest]
            manifest = yaml.safe_dump_all(docs)
        return self.kubectl("apply", "-n", namespace, "-f", "-", stdin=manifest)


def wait_for(check: Callable[[], Any], timeout: float, what: str, show: Callable[[], str] | None = None,
             interval: float = 0.25) -> Any:
    """Poll `check` until it returns something truthy; on timeout fail with what was last seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as e:  # keep polling; report the last error if it never settles
            last = e
        else:
            if last:
                return last
        time.sleep(interval)
    extra = f"\n--- what the cluster shows:\n{show()}" if show else ""
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}{extra}", pytrace=False)


def pytest_collection_modifyitems(session, config, items):
    """Tests marked `last` (they judge what the whole run did) after every other."""
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)


SESSION_STARTED = dt.datetime.now(dt.timezone.utc)  # what the audit log holds from this run on


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    from modelship_testbed import binaries, cluster as testbed
    from modelship_testbed.config import LOCAL_NODE_NAME
    from modelship_testbed.paths import kubeconfig_path

    started = False
    external = os.environ.get("KUBECONFIG")
    if external:
        kubeconfig = external
    else:
        if not testbed.supervisor_pid():
            testbed.up(testbed.UpOptions(gpu_nodes=2, cpu_nodes=2), log=print)
            started = True
        kubeconfig = str(kubeconfig_path())
    c = Cluster(kubeconfig, str(binaries.path("kubectl")), None)
    nodes = c.kubectl("get", "nodes", "-o", "name")
    c.local_node = LOCAL_NODE_NAME if f"node/{LOCAL_NODE_NAME}" in nodes else None
    yield c
    if started:
        testbed.down(log=lambda _: None)


@pytest.fixture(scope="session")
def api(cluster: Cluster):
    from kubernetes import config

    return config.new_client_from_config(config_file=cluster.kubeconfig)


@pytest.fixture(scope="session")
def core(api):
    from kubernetes import client

    return client.CoreV1Api(api)


@pytest.fixture
def namespace(cluster: Cluster, core, request) -> str:
    name = f"t-{request.node.name[:30].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:5]}"
    name = "".join(ch for ch in name if ch.isalnum() or ch == "-")
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


@pytest.fixture
def local_node(cluster: Cluster) -> str:
    if cluster.local_node is None:
        pytest.skip("needs the test bed's local node (pods that really run); this cluster has none")
    return cluster.local_node
