"""The test bed's audit log and the least-privilege check on it, end to end: a ServiceAccount
that the chart binds, acting through a kubeconfig of its own; each request found once, a
refusal found as one, and the grants it used told from those it did not."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from ..conftest import wait_for
from .conftest import least_privilege, service_account_kubeconfig
from .test_router_chart import render

pytestmark = [pytest.mark.integration]


def test_the_audit_log_shows_what_an_account_did_and_was_refused(cluster, namespace, crd_installed, tmp_path):
    release = f"r{uuid.uuid4().hex[:6]}"
    manifest = render(release, namespace, f"namespaces={{{namespace}}}", "router.replicas=0")
    account = f"{release}-router"
    try:
        cluster.kubectl("apply", "-f", "-", stdin=manifest)
        kubeconfig = service_account_kubeconfig(cluster, namespace, account, tmp_path / "kubeconfig")

        def as_account(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([cluster.kubectl_bin, f"--kubeconfig={kubeconfig}", f"--cache-dir={tmp_path}",
                                   *args], capture_output=True, text=True, timeout=60)

        # (the authorizer's RBAC cache follows the apply a moment later)
        wait_for(lambda: as_account("get", "modeldeployments.modelship.io").returncode == 0, 30,
                 "the account's RoleBinding to take effect")
        as_account("get", "endpointslices.discovery.k8s.io", "-w", "--request-timeout=2s")  # lists, then watches
        refused = as_account("get", "secrets")
        assert refused.returncode != 0 and "forbidden" in refused.stderr

        report = least_privilege(cluster, manifest, namespace, account, settle=3)
        print(report.table())
        assert [(r.verb, r.resource, r.code) for r in report.forbidden] == [("list", "secrets", 403)]
        # endpointslices were listed and watched; modeldeployments listed (once per try above),
        # never watched
        assert [(g.api_group, g.resource, g.verb) for g in report.unused] == [
            ("modelship.io", "modeldeployments", "watch")]
        assert {r.access.resource for r in report.by_default} >= {"/api", "/apis"}  # kubectl's discovery
        assert not report.outside and not report.ok
        assert len({r.audit_id for r in report.requests}) == len(report.requests)
    finally:
        cluster.kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=false", stdin=manifest, check=False)
