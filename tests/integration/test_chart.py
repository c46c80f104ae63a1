"""The chart as users install it: lint, schema and comments; every manifest accepted by the
real API server; `helm install` in a `restricted` namespace; upgrades that roll only what
changed; uninstall that leaves only the kept CRD and the users' own objects."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
import yaml

from ..conftest import wait_for
from .conftest import CHART, helm, md_status, preload_claim, run_helm
from .test_chart_monitoring import monitoring_crds  # noqa: F401  (a fixture)
from .test_operator import serving_pods, smollm2

pytestmark = [pytest.mark.integration]

ALL_ON = CHART / "ci" / "all-on-values.yaml"


def template(cluster, release: str, namespace: str, *args: str) -> str:
    return helm(cluster, "template", release, str(CHART), "-n", namespace, *args)


def refused(cluster, *args: str) -> str:
    proc = run_helm("template", "r", str(CHART), *args, check=False)
    assert proc.returncode != 0, proc.stdout[:500]
    return proc.stderr


def test_lint_is_clean_and_the_schema_refuses_unknown_keys_and_wrong_types(cluster):
    for values in ([], ["-f", str(ALL_ON)]):
        out = helm(cluster, "lint", "--strict", str(CHART), *values)
        assert "0 chart(s) failed" in out, out
    assert "additional properties 'replica' not allowed" in refused(cluster, "--set", "operator.replica=2")
    assert "/router/replicas" in refused(cluster, "--set", "router.replicas=two")
    assert "/operator/logLevel" in refused(cluster, "--set", "operator.logLevel=LOUD")
    assert "/namespaces/0" in refused(cluster, "--set", "namespaces={Team_A}")
    assert "/namespaces" in refused(cluster, "--set", "namespaces={a,a}")
    assert "/operator/leaderElection/leaseSeconds" in refused(cluster, "--set", "operator.leaderElection.leaseSeconds=0.5")
    # What the schema cannot say, the templates do, in one line.
    assert "retrySeconds < renewDeadlineSeconds < leaseSeconds" in refused(
        cluster, "--set", "operator.leaderElection.leaseSeconds=5")
    assert "operator.settings.leaderElection: set it with the chart's own value operator.leaderElection" in refused(
        cluster, "--set", "operator.settings.leaderElection.enabled=false")


def test_no_disruption_budget_that_would_block_every_drain(cluster):
    def kinds(*sets: str) -> set[str]:
        return {d["kind"] for d in yaml.safe_load_all(template(cluster, "r", "x", *sets)) if d}

    assert "PodDisruptionBudget" in kinds()
    assert "PodDisruptionBudget" not in kinds("--set", "router.replicas=1")
    assert "PodDisruptionBudget" not in kinds("--set", "router.autoscaling.enabled=true,router.autoscaling.minReplicas=1")
    assert "PodDisruptionBudget" in kinds("--set", "router.autoscaling.enabled=true,router.autoscaling.minReplicas=2")


def documented(schema: dict, path: list[str]) -> bool:
    """Whether a key of values.yaml is one of the chart's own values (declared in the schema
    as a property), rather than data inside a free-form map (a pool, resources, labels)."""
    node = schema
    for key in path:
        props = node.get("properties") or {}
        if key not in props:
            return False
        node = props[key]
    return True


def test_every_value_has_a_comment():
    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    missing = []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        stack = [(d, k) for d, k in stack if d < indent] + [(indent, key)]
        path = [k for _, k in stack]
        if not documented(schema, path):
            continue
        above = lines[i - 1].strip() if i else ""
        if not (above.startswith("#") or "#" in line.split(":", 1)[1]):
            missing.append(".".join(path))
    assert not missing, f"values without a comment: {missing}"


def test_the_charts_crd_is_the_generated_one(cluster):
    generated = yaml.safe_load((Path(CHART).parents[1] / "crds" / "modeldeployments.modelship.io.yaml").read_text())
    for keep in ("true", "false"):
        docs = [d for d in yaml.safe_load_all(template(cluster, "r", "x", "--set", f"crds.keep={keep}",
                                                       "--show-only", "templates/crd.yaml")) if d]
        [crd] = docs
        annotations = crd["metadata"].pop("annotations", {})
        assert crd == generated
        assert annotations == ({"helm.sh/resource-policy": "keep"} if keep == "true" else {})
    assert "CustomResourceDefinition" not in template(cluster, "r", "x", "--set", "crds.enabled=false")


def dry_run(cluster, manifest: str, namespace: str) -> str:
    return cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=manifest)  # (each object names its namespace)


@pytest.mark.parametrize("values", ["defaults", "all-on"])
def test_every_rendered_manifest_is_accepted_by_the_api_server(cluster, core, namespace, crd_installed, values,
                                                              monitoring_crds):
    args = ["-f", str(ALL_ON)] if values == "all-on" else []
    teams = ("team-a", "team-b") if values == "all-on" else ()  # the namespaces the values name (RoleBindings)
    for ns in teams:
        cluster.kubectl("create", "namespace", ns, check=False)
    manifest = template(cluster, "r" + uuid.uuid4().hex[:5], namespace, *args)
    try:
        out = dry_run(cluster, manifest, namespace)
    finally:
        for ns in teams:
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    kinds = {d["kind"] for d in yaml.safe_load_all(manifest) if d}
    assert out.count("(server dry run)") == sum(1 for d in yaml.safe_load_all(manifest) if d), out
    assert {"CustomResourceDefinition", "Deployment", "ClusterRole", "PodDisruptionBudget"} <= kinds
    assert "Lease" not in kinds  # the operator makes it: Argo CD never applies a Lease
    if values == "all-on":
        assert {"HorizontalPodAutoscaler", "RoleBinding", "ServiceMonitor", "PrometheusRule"} <= kinds


def release_objects(cluster, release: str) -> list[str]:
    """Every object of the release's that still exists (namespaced anywhere, or cluster-wide)."""
    sel = f"app.kubernetes.io/instance={release},app.kubernetes.io/managed-by=Helm"
    kinds = "deploy,rs,pods,svc,cm,sa,role,rolebinding,pdb,hpa,lease"
    names = cluster.kubectl("get", kinds, "-A", "-l", sel, "-o", "name").split()
    names += cluster.kubectl("get", "clusterrole,clusterrolebinding", "-l", sel, "-o", "name").split()
    return names


def uids(cluster, namespace: str, component: str, release: str) -> set[str]:
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l",
                                      f"app.kubernetes.io/instance={release},app.kubernetes.io/component={component}",
                                      "-o", "json"))["items"]
    return {p["metadata"]["uid"] for p in pods if not p["metadata"].get("deletionTimestamp")}


@pytest.mark.localnode
@pytest.mark.slow
def test_install_upgrade_and_uninstall_in_a_restricted_namespace(cluster, core, namespace, local_node, crd_installed):
    """The release in a namespace that enforces the `restricted` Pod Security Standard; a
    ModelDeployment in another namespace keeps serving through two upgrades and the uninstall."""
    system = f"t-system-{uuid.uuid4().hex[:5]}"
    core.create_namespace({"metadata": {"name": system, "labels": {
        "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}}})
    release = "ms" + uuid.uuid4().hex[:5]
    testbed_values = str(Path(CHART).parents[1] / "examples" / "testbed" / "helm-values.yaml")
    common = ["-n", system, "-f", testbed_values, "--set", f"namespaces={{{namespace}}}", "--set",
              "operator.replicas=1,router.replicas=1", "--wait", "--timeout", "120s"]
    try:
        from modelship_testbed.demo import adopt_crd

        adopt_crd(print, release, system, run=cluster.kubectl)
        out = helm(cluster, "install", release, str(CHART), *common)
        assert "It keeps the ModelDeployment CRD" in out and f"port-forward svc/{release}-router" in out, out
        preload_claim(cluster, namespace)
        cluster.apply(smollm2(pool="cpu"), namespace)  # (the test bed values' CPU pool: the local node)
        wait_for(lambda: md_status(cluster, namespace, "smollm2").get("phase") == "Ready", 180, "smollm2 Ready",
                 lambda: cluster.kubectl("get", "pods", "-A", "-o", "wide", check=False))
        serving = {p["metadata"]["uid"] for p in serving_pods(cluster, namespace, "smollm2")}
        assert serving
        before = {c: uids(cluster, system, c, release) for c in ("operator", "router")}
        assert all(before.values()), before
        # The Lease is the operator's, owned by its ServiceAccount (so the uninstall removes it).
        lease = json.loads(cluster.kubectl("get", "lease", f"{release}-operator", "-n", system, "-o", "json"))
        assert [(o["kind"], o["name"]) for o in lease["metadata"]["ownerReferences"]] == [
            ("ServiceAccount", f"{release}-operator")], lease["metadata"]

        # An operator value: new operator pods, the same router and serving pods.
        helm(cluster, "upgrade", release, str(CHART), *common, "--reuse-values", "--set", "operator.logLevel=DEBUG")
        after = {c: uids(cluster, system, c, release) for c in ("operator", "router")}
        assert after["router"] == before["router"] and not after["operator"] & before["operator"], (before, after)
        # A router value: new router pods, the same operator pods.
        helm(cluster, "upgrade", release, str(CHART), *common, "--reuse-values", "--set", "router.retries=3")
        again = {c: uids(cluster, system, c, release) for c in ("operator", "router")}
        assert again["operator"] == after["operator"] and not again["router"] & after["router"], (after, again)
        assert md_status(cluster, namespace, "smollm2")["phase"] == "Ready"

        out = helm(cluster, "uninstall", release, "-n", system, "--wait", "--timeout", "60s")
        assert "kept due to the resource policy" in out and "modeldeployments.modelship.io" in out, out
        wait_for(lambda: not release_objects(cluster, release), 60, "the release's objects to be gone",
                 lambda: "\n".join(release_objects(cluster, release)))
        wait_for(lambda: not cluster.kubectl("get", "lease", "-n", system, "-o", "name"), 60,
                 "the operator's Lease to go with its ServiceAccount")
        # The user's ModelDeployment and what it made are still there, still serving.
        assert md_status(cluster, namespace, "smollm2")["phase"] == "Ready"
        assert serving == {p["metadata"]["uid"] for p in serving_pods(cluster, namespace, "smollm2")}
    finally:
        run_helm("uninstall", release, "-n", system, "--ignore-not-found", kubeconfig=cluster.kubeconfig, check=False)
        cluster.kubectl("delete", "namespace", system, "--wait=false", check=False)
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f",
                        str(Path(CHART).parents[1] / "crds"))  # the CRD as the other tests know it
