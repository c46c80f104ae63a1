"""The test bed's own commands against the running test bed."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def testbed_only(cluster):
    if os.environ.get("KUBECONFIG"):
        pytest.skip("checks the local test bed itself")


def test_up_twice_reuses_the_running_cluster(testbed_only, cluster):
    from modelship_testbed import cluster as testbed

    from modelship_testbed.config import TestbedConfig

    before = testbed.supervisor_pid()
    nodes = cluster.kubectl("get", "nodes", "-l", "type=kwok", "-o", "name").split()
    sizes = {p: sum(1 for n in nodes if n.startswith(f"node/kwok-{p}-") and len(n) == len(f"node/kwok-{p}-0000"))
             for p in ("gpu", "cpu")}
    cfg = TestbedConfig.load()  # the same settings, so this must be a no-op
    said: list[str] = []
    testbed.up(testbed.UpOptions(sizes["gpu"], sizes["cpu"], cfg.local_node, cfg.local_node_gpus, cfg.images_file),
               log=said.append)
    assert testbed.supervisor_pid() == before
    assert any("already up" in line for line in said)


def test_status_and_env_describe_the_running_cluster(testbed_only, cluster):
    from click.testing import CliRunner

    from modelship.cli import main

    runner = CliRunner()
    status = runner.invoke(main, ["testbed", "status"])
    assert status.exit_code == 0 and "ready" in status.output
    for component in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "local-node",
                      "kubelet-streaming"):
        assert component in status.output
    env = runner.invoke(main, ["testbed", "env"])
    assert f"export KUBECONFIG={cluster.kubeconfig}" in env.output


def test_server_reports_the_pinned_version(testbed_only, cluster):
    from modelship_testbed.binaries import KUBERNETES_VERSION

    assert f"Server Version: {KUBERNETES_VERSION}" in cluster.kubectl("version")
