"""Least privilege, proven: what a ServiceAccount did (the audit log) beside what a chart grants it.

`least_privilege_report(docs, namespace, name, requests)` takes the chart's rendered objects
(`helm template` output, as text or as parsed documents), finds the RoleBindings and
ClusterRoleBindings whose subjects include the ServiceAccount, expands their roles' rules
into `Grant`s (one API group, resource, verb and scope each; `watch` and `list` apart) and
matches the account's audited requests against them with RBAC's own rules (wildcards,
"*/subresource", resourceNames, a RoleBinding's namespace); a patch or update answered 201
(a server-side apply that created the object) uses `create` as well, which the API server
checks inside that request. The `Report` says:

- `forbidden`: requests answered 403 (the chart grants too little, or admission refused);
- `unused`: grants no request used (the chart grants more than the code needs);
- `outside`: requests let through by something neither the chart nor Kubernetes' defaults
  for every account grant (another binding in the cluster: the chart would not be enough);
- `wildcards`: grants with "*", which no test can prove are needed;
- `unresolved`: roleRefs this module cannot expand (a role not in the documents, an
  aggregated ClusterRole).

Pure: no I/O. `audit.requests_by()` reads the requests from the test bed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable

import yaml

from .audit import Request, service_account_user, used


@dataclass(frozen=True, order=True)
class Grant:
    """One (API group, resource, verb) a binding grants, where: `scope` is the RoleBinding's
    namespace, or "*" for a ClusterRoleBinding (every namespace and cluster-scoped resources).
    `resource` keeps RBAC's form ("pods", "pods/log", "*/scale", "*"); for a non-resource
    URL it is the URL ("/metrics", "/api/*")."""

    scope: str
    api_group: str
    resource: str
    verb: str
    resource_names: tuple[str, ...] = ()
    non_resource: bool = False

    @property
    def wildcard(self) -> bool:
        return "*" in (self.api_group, self.verb) or "*" in self.resource

    def allows(self, r: Request) -> bool:
        """RBAC's matching of one rule against a request's attributes."""
        if self.verb not in ("*", r.verb) or self.non_resource != r.non_resource:
            return False
        if self.non_resource:
            path = r.access.resource
            return self.resource in ("*", path) or (self.resource.endswith("*") and path.startswith(self.resource[:-1]))
        if self.scope != "*" and self.scope != r.namespace:
            return False
        if self.api_group not in ("*", r.api_group):
            return False
        if self.resource_names and r.name not in self.resource_names:
            return False
        return _resource_matches(self.resource, r.resource, r.subresource)

    def __str__(self) -> str:
        names = f" {','.join(self.resource_names)}" if self.resource_names else ""
        if self.non_resource:
            return f"{self.verb} {self.resource}"
        where = "cluster-wide" if self.scope == "*" else f"in {self.scope}"
        return f"{self.verb} {self.resource}{'.' + self.api_group if self.api_group else ''}{names} {where}"


def _resource_matches(rule: str, resource: str, subresource: str) -> bool:
    """As the RBAC authorizer's ResourceMatches: "*" is every resource and subresource,
    "*/x" the subresource x of any resource; "pods/*" means nothing special."""
    if rule == "*":
        return True
    combined = f"{resource}/{subresource}" if subresource else resource
    if rule == combined:
        return True
    return bool(subresource) and rule == f"*/{subresource}"


# What every authenticated account may do in any cluster (the bootstrap ClusterRoles
# system:discovery, system:basic-user and system:public-info-viewer, bound to
# system:authenticated): requests these allow are neither the chart's nor `outside`.
DEFAULT_GRANTS: tuple[Grant, ...] = (
    *(Grant("*", "", url, "get", non_resource=True)
      for url in ("/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz",
                  "/version", "/version/")),
    Grant("*", "authorization.k8s.io", "selfsubjectaccessreviews", "create"),
    Grant("*", "authorization.k8s.io", "selfsubjectrulesreviews", "create"),
    Grant("*", "authentication.k8s.io", "selfsubjectreviews", "create"),
)


def documents(rendered: str | Iterable[dict | None]) -> list[dict]:
    """The objects of `helm template` output (text), or of already parsed documents."""
    docs = yaml.safe_load_all(rendered) if isinstance(rendered, str) else rendered
    return [d for d in docs if isinstance(d, dict) and d.get("kind")]


def _subject_is(s: dict, binding_ns: str | None, sa_namespace: str, sa_name: str) -> bool:
    kind, name = s.get("kind"), s.get("name")
    if kind == "ServiceAccount":
        return name == sa_name and (s.get("namespace") or binding_ns) == sa_namespace
    if kind == "User":
        return name == service_account_user(sa_namespace, sa_name)
    if kind == "Group":
        return name in ("system:serviceaccounts", f"system:serviceaccounts:{sa_namespace}", "system:authenticated")
    return False


@dataclass
class Grants:
    """The grants of one ServiceAccount, with the binding and role each came from."""

    sources: dict[Grant, list[str]] = field(default_factory=dict)
    unresolved: list[str] = field(default_factory=list)

    @property
    def grants(self) -> list[Grant]:
        return sorted(self.sources)


def grants_for(rendered: str | Iterable[dict | None], sa_namespace: str, sa_name: str,
               release_namespace: str | None = None) -> Grants:
    """Every grant the rendered objects give the ServiceAccount. A namespaced object without a
    namespace (as `helm template` leaves some) is in `release_namespace` (default: the
    ServiceAccount's)."""
    docs = documents(rendered)
    default_ns = release_namespace or sa_namespace
    roles = {(d["kind"], (d["metadata"].get("namespace") or default_ns) if d["kind"] == "Role" else None,
              d["metadata"]["name"]): d for d in docs if d["kind"] in ("Role", "ClusterRole")}
    out = Grants()
    for b in docs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        b_ns = (b["metadata"].get("namespace") or default_ns) if b["kind"] == "RoleBinding" else None
        if not any(_subject_is(s, b_ns, sa_namespace, sa_name) for s in b.get("subjects") or []):
            continue
        ref = b["roleRef"]
        role = roles.get((ref["kind"], b_ns if ref["kind"] == "Role" else None, ref["name"]))
        where = f"{b['kind']} {b_ns + '/' if b_ns else ''}{b['metadata']['name']} -> {ref['kind']} {ref['name']}"
        if role is None:
            out.unresolved.append(f"{where}: the {ref['kind']} is not among the rendered objects")
            continue
        if role.get("aggregationRule"):
            out.unresolved.append(f"{where}: an aggregated ClusterRole (its rules are not expanded here)")
            continue
        for g in _expand(role.get("rules") or [], b_ns or "*"):
            out.sources.setdefault(g, []).append(where)
    return out


def _expand(rules: list[dict], scope: str) -> Iterable[Grant]:
    for rule in rules:
        verbs = rule.get("verbs") or []
        if rule.get("nonResourceURLs"):
            if scope == "*":  # a RoleBinding gives no non-resource URLs
                yield from (Grant("*", "", url, v, non_resource=True) for url in rule["nonResourceURLs"] for v in verbs)
            continue
        names = tuple(sorted(rule.get("resourceNames") or ()))
        for group in rule.get("apiGroups") or []:
            for resource in rule.get("resources") or []:
                for verb in verbs:
                    yield Grant(scope, group, resource, verb, names)


@dataclass
class Report:
    user: str
    requests: list[Request]  # every request the account made
    grants: list[Grant]
    sources: dict[Grant, list[str]]
    uses: dict[Grant, int]  # requests each grant let through
    forbidden: list[Request]
    unused: list[Grant]
    outside: list[Request]
    by_default: list[Request]  # let through by Kubernetes' defaults for every account (discovery, ...)
    wildcards: list[Grant]
    unresolved: list[str]

    @property
    def ok(self) -> bool:
        return not (self.forbidden or self.unused or self.outside or self.wildcards or self.unresolved)

    @property
    def used_grants(self) -> list[Grant]:
        return [g for g in self.grants if self.uses[g]]

    def summary(self) -> tuple[str, int, int, int, int, int]:
        return (self.user.removeprefix("system:serviceaccount:"), len(self.requests), len(self.grants),
                len(self.used_grants), len(self.unused), len(self.forbidden))

    def table(self) -> str:
        """A summary row, then each grant with the requests it let through, then what went wrong."""
        lines = [summary_table([self]), ""]
        bindings = sorted({w for ws in self.sources.values() for w in ws})
        lines += [f"granted by {', '.join(bindings) or 'nothing in the chart'}", ""]
        rows = [("scope", "apiGroup", "resource", "verb", "requests", "")]
        rows += [(g.scope, g.api_group or '""', g.resource + (f" {','.join(g.resource_names)}" if g.resource_names
                                                              else ""), g.verb, str(self.uses[g]),
                  "" if self.uses[g] else "UNUSED") for g in self.grants]
        lines += _columns(rows)
        for title, items in (("forbidden (403)", [_request_line(r) for r in self.forbidden]),
                             ("let through by something outside the chart", [_request_line(r) for r in self.outside]),
                             ("wildcard grants", [str(g) for g in self.wildcards]),
                             ("not expanded", self.unresolved)):
            if items:
                lines += ["", f"{title}:", *(f"  {i}" for i in items)]
        if self.by_default:
            lines += ["", "allowed to every account (not the chart's): " +
                      ", ".join(sorted({str(a) for a in used(self.by_default)}))]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def summary_table(reports: Iterable[Report]) -> str:
    """One row per ServiceAccount."""
    rows = [("ServiceAccount", "requests made", "rules granted", "rules used", "unused grants", "forbidden requests")]
    rows += [tuple(str(v) for v in r.summary()) for r in reports]
    return "\n".join(_columns(rows))


def least_privilege_report(rendered: str | Iterable[dict | None], sa_namespace: str, sa_name: str,
                           requests: Iterable[Request], release_namespace: str | None = None,
                           defaults: Iterable[Grant] = DEFAULT_GRANTS) -> Report:
    """The ServiceAccount's requests (others in `requests` are ignored) beside its grants in
    the rendered chart."""
    user = service_account_user(sa_namespace, sa_name)
    mine = [r for r in requests if r.user == user]
    found = grants_for(rendered, sa_namespace, sa_name, release_namespace)
    grants, defaults = found.grants, tuple(defaults)
    uses = {g: 0 for g in grants}
    outside, by_default = [], []
    for r in mine:
        if not r.allowed:
            continue
        matched = [g for g in grants if g.allows(r) or (creates(r) and g.allows(replace(r, verb="create")))]
        for g in matched:
            uses[g] += 1
        if not matched:
            (by_default if any(g.allows(r) for g in defaults) else outside).append(r)
    return Report(user=user, requests=mine, grants=grants, sources=found.sources, uses=uses,
                  forbidden=[r for r in mine if r.code == 403], unused=[g for g in grants if not uses[g]],
                  outside=outside, by_default=by_default, wildcards=[g for g in grants if g.wildcard],
                  unresolved=found.unresolved)


def creates(r: Request) -> bool:
    """A patch or update that made the object (a server-side apply of a new one): the API server
    also asked the authorizer for `create`, within the same request (one audit event)."""
    return r.verb in ("patch", "update") and r.code == 201


def _request_line(r: Request) -> str:
    why = " (RBAC allowed it: refused after, e.g. by admission)" if r.code == 403 and r.decision == "allow" else ""
    return f"{r.code} {r.access}{' ' + r.name if r.name else ''}{why}  [{r.uri}]"


def _columns(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
