"""The audit log reader and the least-privilege comparison (modelship_testbed.audit and
.least_privilege): pure, on hand-written audit events and RBAC objects."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from modelship_testbed import audit
from modelship_testbed.audit import Access
from modelship_testbed.least_privilege import Grant, grants_for, least_privilege_report, summary_table

SA = "system:serviceaccount:team:app"
N = 0


def event(verb: str, resource: str = "", *, group: str = "", ns: str | None = "team", name: str | None = None,
          sub: str = "", code: int = 200, user: str = SA, stage: str = "ResponseComplete", audit_id: str | None = None,
          uri: str = "", at: str = "2026-01-02T03:04:05.000001Z", decision: str | None = None) -> dict:
    global N
    N += 1
    e = {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": audit_id or f"id-{N}",
         "stage": stage, "requestURI": uri or f"/x/{resource}", "verb": verb,
         "user": {"username": user, "groups": ["system:serviceaccounts", "system:authenticated"]},
         "userAgent": "test", "requestReceivedTimestamp": at, "stageTimestamp": at,
         "responseStatus": {"metadata": {}, "code": code},
         "annotations": {"authorization.k8s.io/decision": decision or ("forbid" if code == 403 else "allow"),
                         "authorization.k8s.io/reason": ""}}
    if resource:
        ref = {"resource": resource, "apiVersion": f"{group}/v1" if group else "v1"}
        if group:
            ref["apiGroup"] = group
        if ns:
            ref["namespace"] = ns
        if name:
            ref["name"] = name
        if sub:
            ref["subresource"] = sub
        e["objectRef"] = ref
    return e


def requests(*events: dict) -> list[audit.Request]:
    return audit.requests_from(events)


# --- the reader ---------------------------------------------------------------------------------

def test_a_watch_logged_when_it_starts_and_when_it_ends_is_one_request(tmp_path):
    started = event("watch", "pods", stage="ResponseStarted", audit_id="w1")
    done = {**started, "stage": "ResponseComplete"}
    received = {**event("get", "pods", name="p", audit_id="g1"), "stage": "RequestReceived"}
    del received["responseStatus"]
    (tmp_path / "audit.log").write_text("\n".join(json.dumps(e) for e in (started, received, done))
                                        + '\n{"kind": "Event", "audi')  # a line still being written
    found = audit.requests_by(SA, directory=tmp_path)
    assert [(r.audit_id, r.verb, r.code) for r in found] == [("w1", "watch", 200)]


def test_requests_by_reads_rotated_files_oldest_first_and_keeps_only_that_user_since_a_time(tmp_path):
    old = event("list", "pods", at="2026-01-01T00:00:00Z")
    new = event("get", "pods", name="p", at="2026-01-02T00:00:00Z")
    other = event("list", "secrets", user="system:serviceaccount:team:other", at="2026-01-02T00:00:01Z")
    (tmp_path / "audit-2026-01-01T12-00-00.000.log").write_text(json.dumps(old) + "\n")
    (tmp_path / "audit.log").write_text(json.dumps(new) + "\n" + json.dumps(other) + "\n")
    assert [r.verb for r in audit.requests_by(SA, directory=tmp_path)] == ["list", "get"]
    since = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
    assert [r.verb for r in audit.requests_by(SA, since=since, directory=tmp_path)] == ["get"]
    assert audit.requests_by(SA, directory=tmp_path / "nothing-here") == []


def test_used_tells_verbs_subresources_groups_and_scopes_apart_and_leaves_out_refusals():
    rs = requests(event("list", "pods"), event("watch", "pods"), event("list", "pods"),
                  event("get", "pods", name="p", sub="log"), event("list", "endpointslices", group="discovery.k8s.io",
                                                                   ns=None),
                  event("get", uri="/version"), event("delete", "pods", name="p", code=403))
    assert audit.used(rs) == {
        Access("", "pods", "list", "team"), Access("", "pods", "watch", "team"), Access("", "pods/log", "get", "team"),
        Access("discovery.k8s.io", "endpointslices", "list", None), Access("", "/version", "get", None, True)}


def test_a_request_refused_after_the_authorizer_allowed_it_was_still_allowed():
    (r,) = requests(event("create", "pods", code=403, decision="allow"))
    assert r.allowed and r.code == 403
    docs = [role("Role", "w", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}], ns="team"),
            binding("RoleBinding", "w", "Role", "w", [sa()], ns="team")]
    report = least_privilege_report(docs, "team", "app", [r])
    assert report.forbidden == [r] and not report.unused and "refused after, e.g. by admission" in report.table()


# --- grants from rendered RBAC objects -----------------------------------------------------------

def role(kind: str, name: str, rules: list[dict], ns: str | None = None, **extra) -> dict:
    meta = {"name": name, **({"namespace": ns} if ns else {})}
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta, "rules": rules, **extra}


def binding(kind: str, name: str, role_kind: str, role_name: str, subjects: list[dict], ns: str | None = None) -> dict:
    meta = {"name": name, **({"namespace": ns} if ns else {})}
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role_name},
            "subjects": subjects}


def sa(ns: str = "team", name: str = "app") -> dict:
    return {"kind": "ServiceAccount", "name": name, "namespace": ns}


READ = {"apiGroups": ["modelship.io"], "resources": ["modeldeployments"], "verbs": ["list", "watch"]}


def test_a_cluster_role_binding_grants_everywhere_a_role_binding_in_its_namespace_only():
    docs = [role("ClusterRole", "read", [READ]),
            binding("ClusterRoleBinding", "all", "ClusterRole", "read", [sa()]),
            binding("RoleBinding", "one", "ClusterRole", "read", [sa()], ns="models"),
            binding("RoleBinding", "someone-else", "ClusterRole", "read", [sa(name="other")], ns="x"),
            binding("RoleBinding", "same-name-other-ns", "ClusterRole", "read", [sa(ns="elsewhere")], ns="y")]
    found = grants_for(docs, "team", "app")
    assert found.grants == sorted([Grant("*", "modelship.io", "modeldeployments", "list"),
                                   Grant("*", "modelship.io", "modeldeployments", "watch"),
                                   Grant("models", "modelship.io", "modeldeployments", "list"),
                                   Grant("models", "modelship.io", "modeldeployments", "watch")])
    assert found.sources[Grant("models", "modelship.io", "modeldeployments", "list")] == \
        ["RoleBinding models/one -> ClusterRole read"]


def test_subjects_roles_and_namespaces_are_resolved_as_the_api_server_does():
    docs = [role("Role", "leases", [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                                     "verbs": ["get", "update"], "resourceNames": ["lock"]}]),  # no namespace: release's
            role("Role", "leases", [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}], ns="other"),
            binding("RoleBinding", "b", "Role", "leases", [{"kind": "ServiceAccount", "name": "app"}]),  # ns: binding's
            binding("RoleBinding", "g", "Role", "missing", [{"kind": "Group", "name": "system:serviceaccounts:team"}],
                    ns="team"),
            role("ClusterRole", "agg", [], aggregationRule={"clusterRoleSelectors": []}),
            binding("ClusterRoleBinding", "u", "ClusterRole", "agg", [{"kind": "User", "name": SA}]),
            role("ClusterRole", "urls", [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]),
            binding("RoleBinding", "urls", "ClusterRole", "urls", [sa()], ns="team")]  # URLs need a ClusterRoleBinding
    found = grants_for(docs, "team", "app", release_namespace="team")
    assert found.grants == [Grant("team", "coordination.k8s.io", "leases", "get", ("lock",)),
                            Grant("team", "coordination.k8s.io", "leases", "update", ("lock",))]
    assert found.unresolved == ["RoleBinding team/g -> Role missing: the Role is not among the rendered objects",
                                "ClusterRoleBinding u -> ClusterRole agg: an aggregated ClusterRole (its rules are not "
                                "expanded here)"]


@pytest.mark.parametrize("grant, request_, allowed", [
    (Grant("*", "*", "*", "*"), event("delete", "nodes", ns=None, name="n"), True),
    (Grant("team", "", "pods", "get"), event("get", "pods", name="p", ns="other"), False),
    (Grant("team", "", "pods", "get"), event("get", "pods", name="p", ns=None), False),  # not cluster scope
    (Grant("team", "", "pods", "list"), event("watch", "pods"), False),  # watch is not list
    (Grant("team", "", "pods", "get"), event("get", "pods", name="p", sub="log"), False),
    (Grant("team", "", "pods/log", "get"), event("get", "pods", name="p", sub="log"), True),
    (Grant("team", "", "*", "get"), event("get", "pods", name="p", sub="log"), True),
    (Grant("team", "apps", "*/scale", "update"), event("update", "deployments", group="apps", name="d", sub="scale"),
     True),
    (Grant("team", "apps", "deployments/*", "update"),
     event("update", "deployments", group="apps", name="d", sub="scale"), False),  # no such form in RBAC
    (Grant("team", "", "pods", "get"), event("get", "pods", group="apps", name="p"), False),
    (Grant("team", "", "configmaps", "get", ("a",)), event("get", "configmaps", name="a"), True),
    (Grant("team", "", "configmaps", "get", ("a",)), event("get", "configmaps", name="b"), False),
    (Grant("team", "", "configmaps", "list", ("a",)), event("list", "configmaps"), False),  # no name: no match
    (Grant("*", "", "/metrics", "get", non_resource=True), event("get", uri="/metrics"), True),
    (Grant("*", "", "/api/*", "get", non_resource=True), event("get", uri="/api/v1?timeout=32s"), True),
    (Grant("*", "", "/api/*", "get", non_resource=True), event("get", "pods", name="p"), False),
])
def test_a_grant_matches_a_request_as_rbac_does(grant, request_, allowed):
    (r,) = requests(request_)
    assert grant.allows(r) is allowed


# --- the report -----------------------------------------------------------------------------------

def test_the_report_names_refusals_unused_grants_and_what_came_from_elsewhere():
    docs = [role("ClusterRole", "read", [READ, {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                                                "verbs": ["get", "list", "watch"]}]),
            binding("RoleBinding", "read", "ClusterRole", "read", [sa()], ns="team")]
    rs = requests(event("list", "modeldeployments", group="modelship.io"),
                  event("watch", "modeldeployments", group="modelship.io"),
                  event("watch", "modeldeployments", group="modelship.io"),
                  event("list", "endpointslices", group="discovery.k8s.io"),
                  event("watch", "endpointslices", group="discovery.k8s.io"),
                  event("list", "secrets", code=403),
                  event("get", uri="/apis"),
                  event("get", "configmaps", name="c"),  # allowed, by no binding of the chart
                  event("list", "pods", user="system:serviceaccount:team:other"))
    report = least_privilege_report(docs, "team", "app", rs)
    assert len(report.requests) == 8
    assert [(r.verb, r.resource) for r in report.forbidden] == [("list", "secrets")]
    assert report.unused == [Grant("team", "discovery.k8s.io", "endpointslices", "get")]
    assert [r.resource for r in report.outside] == ["configmaps"]
    assert [r.uri for r in report.by_default] == ["/apis"]
    assert report.uses[Grant("team", "modelship.io", "modeldeployments", "watch")] == 2
    assert not report.ok
    assert report.summary() == ("team:app", 8, 5, 4, 1, 1)
    text = report.table()
    assert "UNUSED" in text and "403 list secrets in team" in text and "get configmaps in team c" in text
    assert "admission" not in text
    assert "RoleBinding team/read -> ClusterRole read" in text and "get /apis" in text
    assert summary_table([report]).splitlines()[1].split() == ["team:app", "8", "5", "4", "1", "1"]


def test_a_chart_that_grants_exactly_what_is_used_passes():
    docs = [role("ClusterRole", "read", [READ]), binding("ClusterRoleBinding", "read", "ClusterRole", "read", [sa()])]
    rs = requests(event("list", "modeldeployments", group="modelship.io", ns=None),
                  event("watch", "modeldeployments", group="modelship.io", ns="team"))
    report = least_privilege_report(yaml_text(docs), "team", "app", rs)
    assert report.ok, report.table()
    assert not report.forbidden and not report.unused and not report.wildcards


def test_a_server_side_apply_that_creates_uses_create_as_well_as_patch():
    docs = [role("Role", "w", [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["create", "patch"]},
                               {"apiGroups": [""], "resources": ["services"], "verbs": ["create", "patch"]}],
                 ns="team"),
            binding("RoleBinding", "w", "Role", "w", [sa()], ns="team")]
    rs = requests(event("patch", "deployments", group="apps", name="d", code=201),  # made it
                  event("patch", "services", name="s", code=200))  # changed one that was there
    report = least_privilege_report(docs, "team", "app", rs)
    assert report.unused == [Grant("team", "", "services", "create")]
    assert report.uses[Grant("team", "apps", "deployments", "create")] == 1


def test_a_wildcard_grant_is_never_proven_least():
    docs = [role("ClusterRole", "all", [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]),
            binding("ClusterRoleBinding", "all", "ClusterRole", "all", [sa()])]
    report = least_privilege_report(docs, "team", "app", requests(event("get", "pods", name="p")))
    assert not report.unused and report.wildcards == [Grant("*", "*", "*", "*")] and not report.ok


def yaml_text(docs: list[dict]) -> str:
    import yaml

    return "---\n".join(yaml.safe_dump(d) for d in [None, *docs] if d) + "---\n"
