"""The router as installed in a cluster: the chart's Deployment, Service and RBAC, applied to
the real API server, and the router's ServiceAccount allowed exactly what discovery reads;
then a router pod on the local node, whose audited requests use every grant and no other."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from ..conftest import wait_for
from .conftest import least_privilege
from .conftest import render as render_chart

pytestmark = [pytest.mark.integration]


def render(release: str, namespace: str, *sets: str) -> str:
    """The chart's router alone (the CRD comes from the `crd_installed` fixture; the operator
    has its own tests), as `helm template` renders it."""
    return render_chart(release, namespace, "operator.enabled=false", "crds.enabled=false", *sets)


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
        # Nothing more: not another namespace, not secrets, no writes, not even one object by name.
        assert not can_i(cluster, "get", "modeldeployments.modelship.io", sa, "-n", namespace)
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


def ready_pod(cluster, namespace: str, release: str) -> dict | None:
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}",
                                      "-o", "json"))["items"]
    return next((p for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                        for c in p["status"].get("conditions") or [])), None)


def served(url: str) -> set[str]:
    try:
        return {m["id"] for m in httpx.get(f"{url}/v1/models", timeout=5).json()["data"]}
    except httpx.HTTPError:
        return set()


def model_and_endpoints(name: str) -> list[dict]:
    """A ModelDeployment and, standing in for its Service's (no operator runs here), an
    EndpointSlice with one ready address that nothing listens on: the router serves the model
    once it has seen both."""
    return [{"apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
             "spec": {"model": {"repo": "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"}, "pool": "local"}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": f"{name}-test", "labels": {"kubernetes.io/service-name": name,
                                                              "app.kubernetes.io/managed-by": "modelship"}},
             "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
             "endpoints": [{"addresses": ["127.254.0.1"], "conditions": {"ready": True}}]}]


@pytest.mark.localnode
@pytest.mark.slow
@pytest.mark.parametrize("bound", ["in-its-namespace", "cluster-wide"])
def test_a_router_pod_uses_every_permission_the_chart_grants_it_and_no_other(cluster, namespace, local_node,
                                                                              crd_installed, bound):
    release = f"r{uuid.uuid4().hex[:6]}"
    sets = ["router.replicas=1", "router.allowCidrs={127.0.0.0/8}"]  # the test bed's pods are on loopback
    if bound == "in-its-namespace":
        sets.append(f"namespaces={{{namespace}}}")
    manifest = render(release, namespace, *sets)
    try:
        cluster.kubectl("apply", "-f", "-", stdin=manifest)
        pod = wait_for(lambda: ready_pod(cluster, namespace, release), 90, "the router pod to be Ready",
                       lambda: cluster.kubectl("describe", "pods", "-n", namespace, check=False)
                       + cluster.kubectl("logs", "-n", namespace, f"deploy/{release}-router", check=False))
        url = f"http://{pod['status']['podIP']}:8000"
        cluster.apply(model_and_endpoints("m1"), namespace)
        wait_for(lambda: "m1" in served(url), 30, "the router pod to serve the ModelDeployment it watched")
        report = least_privilege(cluster, manifest, namespace, f"{release}-router")
        print(report.table())
        assert report.grants and report.requests
        assert len(report.forbidden) + len(report.unused) == 0, report.table()
        assert report.ok, report.table()  # nor from outside the chart, nor wildcards
    finally:
        cluster.kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=false", stdin=manifest, check=False)
