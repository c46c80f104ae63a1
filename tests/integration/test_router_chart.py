"""The router as installed in a cluster: the chart's Deployment, Service and RBAC, applied to
the real API server, and the router's ServiceAccount allowed exactly what discovery reads."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from ..conftest import wait_for

pytestmark = [pytest.mark.integration]

CHART = Path(__file__).resolve().parents[2] / "charts" / "modelship"


def render(release: str, namespace: str, *sets: str) -> str:
    from modelship_testbed import binaries

    args = [str(binaries.path("helm")), "template", release, str(CHART), "-n", namespace]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


def can_i(cluster, verb: str, resource: str, sa: str, *where: str) -> bool:
    out = cluster.kubectl("auth", "can-i", verb, resource, f"--as={sa}", *where, check=False)
    return out.strip() == "yes"


def test_router_chart_installs_and_its_account_reads_only_what_discovery_needs(cluster, namespace, core,
                                                                           crd_installed):
    other = f"t-chart-other-{uuid.uuid4().hex[:5]}"
    core.create_namespace({"metadata": {"name": other}})
    release = f"r{uuid.uuid4().hex[:6]}"
    manifest = render(release, namespace, f"namespaces={{{namespace}}}", "router.replicas=0")
    try:
        cluster.kubectl("apply", "-f", "-", stdin=manifest)
        sa = f"system:serviceaccount:{namespace}:{release}-router"
        deploy = cluster.kubectl("get", "deployment", f"{release}-router", "-n", namespace, "-o",
                                 "jsonpath={.spec.template.spec.containers[0].args}")
        assert f"--namespace={namespace}" in deploy and '"router"' in deploy
        ports = cluster.kubectl("get", "service", f"{release}-router", "-n", namespace, "-o",
                                "jsonpath={.spec.ports[0].port}")
        assert ports == "80"
        # The API server's authorizer reads RBAC objects from a cache: a moment after the apply.
        wait_for(lambda: can_i(cluster, "list", "modeldeployments.modelship.io", sa, "-n", namespace), 30,
                 "the router's RoleBinding to take effect")
        for verb in ("list", "watch"):
            assert can_i(cluster, verb, "modeldeployments.modelship.io", sa, "-n", namespace)
            assert can_i(cluster, verb, "endpointslices.discovery.k8s.io", sa, "-n", namespace)
        # Nothing more: not another namespace, not secrets, no writes.
        assert not can_i(cluster, "list", "modeldeployments.modelship.io", sa, "-n", other)
        assert not can_i(cluster, "get", "secrets", sa, "-n", namespace)
        assert not can_i(cluster, "update", "modeldeployments.modelship.io", sa, "-n", namespace)
        assert not can_i(cluster, "create", "pods", sa, "-n", namespace)
    finally:
        cluster.kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=false", stdin=manifest, check=False)
        core.delete_namespace(other)


def test_router_chart_without_namespaces_reads_every_namespace(cluster, namespace, crd_installed):
    release = f"r{uuid.uuid4().hex[:6]}"
    manifest = render(release, namespace, "router.replicas=0")
    try:
        cluster.kubectl("apply", "-f", "-", stdin=manifest)
        sa = f"system:serviceaccount:{namespace}:{release}-router"
        # (the authorizer's RBAC cache follows the apply a moment later)
        wait_for(lambda: can_i(cluster, "watch", "modeldeployments.modelship.io", sa, "--all-namespaces"), 30,
                 "the router's ClusterRoleBinding to take effect")
        assert can_i(cluster, "watch", "modeldeployments.modelship.io", sa, "--all-namespaces")
        assert can_i(cluster, "watch", "endpointslices.discovery.k8s.io", sa, "--all-namespaces")
        assert not can_i(cluster, "list", "secrets", sa, "--all-namespaces")
    finally:
        cluster.kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=false", stdin=manifest, check=False)
