"""Least privilege, proven on the whole run: after every other test (marked `last`), what each
of the chart's ServiceAccounts really did (the test bed's API server audit log) beside what the
chart grants it. Every operator and router the chart installed during the run counts: the
end-to-end demo's, the per-test operators of the integration tests (downloads, gated models,
moved branches, shared volumes, failover), the router tests'. It fails on a request the chart's
rules do not allow (refused, or let through by something else), and on a rule that no
program of the chart ever used."""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

from ..conftest import SESSION_STARTED
from .conftest import render

pytestmark = [pytest.mark.integration, pytest.mark.last]

ACCOUNT = re.compile(r"^system:serviceaccount:(?P<ns>[^:]+):(?P<release>[a-z0-9-]+)-(?P<program>operator|router)$")
# The suites whose accounts together use every rule: without them the run proves nothing.
NEEDED = {"test_examples", "test_operator", "test_operator_ha", "test_router_chart"}


def rule_key(g, release: str) -> tuple:
    """A rule of any release (its own Lease's name made the release's placeholder)."""
    names = tuple(n.replace(release, "<release>", 1) for n in g.resource_names)
    return (g.api_group, g.resource, g.verb, names)


def rules(program: str) -> set[tuple]:
    """What the chart grants the program's ServiceAccount (scope aside: the same rules whether
    bound cluster-wide or in each listed namespace)."""
    from modelship_testbed.least_privilege import grants_for

    rendered = helm_template("r", "x", [])
    return {rule_key(g, "r") for g in grants_for(rendered, "x", f"r-{program}").grants}


def refusals(report) -> tuple[list, list]:
    """The account's refused requests: (those the chart's rules allow, those they do not). The
    first kind is RBAC not in effect at that moment, and must be at the edges of the account's
    life: in its first seconds (the bindings on their way to the authorizer's cache) or its
    last (`helm uninstall` removed them while the pod was stopping)."""
    first, last = report.requests[0].time, report.requests[-1].time
    in_chart, missing = [], []
    for r in report.forbidden:
        if not any(g.allows(r) for g in report.grants):
            missing.append(r)
        elif (r.time - first).total_seconds() < 15 or (last - r.time).total_seconds() < 45:
            in_chart.append(r)
        else:
            missing.append(r)  # mid-life: not an install or uninstall
    return in_chart, missing


def helm_template(release: str, namespace: str, namespaces: list[str]) -> str:
    return render(release, namespace, *(["namespaces={" + ",".join(namespaces) + "}"] if namespaces else []))


def accounts_of_this_run() -> dict[tuple[str, str, str], list]:
    """(namespace, release, program) -> the requests its program made in this run (kubectl
    acting as an account, as test_audit.py does on purpose, is not a program of the chart)."""
    from modelship_testbed import audit

    out = defaultdict(list)
    for r in audit.requests_from(audit.events(audit.log_files(), containing=":serviceaccount:")):
        m = ACCOUNT.match(r.user)
        if m and r.time >= SESSION_STARTED and not r.user_agent.startswith("kubectl"):
            out[(m["ns"], m["release"], m["program"])].append(r)
    return out


def report_for(namespace: str, release: str, program: str, requests: list):
    """The account's requests beside the grants of its release, rendered the way it was bound:
    cluster-wide when it listed across namespaces, else in each namespace it worked in."""
    from modelship_testbed.least_privilege import least_privilege_report

    cluster_wide = any(r.namespace is None and not r.non_resource for r in requests)
    touched = sorted({r.namespace for r in requests if r.namespace} - {namespace}) + [namespace]
    rendered = helm_template(release, namespace, [] if cluster_wide else touched)
    return least_privilege_report(rendered, namespace, f"{release}-{program}", requests)


@pytest.mark.parametrize("program", ["operator", "router"])
def test_the_charts_accounts_used_every_rule_and_nothing_else(cluster, request, program):
    from modelship_testbed import audit
    from modelship_testbed.least_privilege import summary_table
    from modelship_testbed.paths import kubeconfig_path

    if cluster.kubeconfig != str(kubeconfig_path()) or not audit.log_files():
        pytest.skip("needs the test bed's API server audit log")
    ran = {item.module.__name__.rsplit(".", 1)[-1] for item in request.session.items}
    if not NEEDED <= ran:
        pytest.skip(f"judges the whole run: run it with {', '.join(sorted(NEEDED - ran))} (make test)")
    accounts = {k: v for k, v in accounts_of_this_run().items() if k[2] == program}
    assert accounts, f"no {program} installed by the chart made a request in this run"
    found = sorted(accounts.items())
    reports = [report_for(ns, release, prog, reqs) for (ns, release, prog), reqs in found]
    granted = rules(program)
    used = {rule_key(g, release) for ((_, release, _), _), rep in zip(found, reports) for g in rep.used_grants}
    outside = [r for rep in reports for r in rep.outside]
    edges, missing = [], []
    for rep in reports:
        a, b = refusals(rep)
        edges += a
        missing += b
    lines = [summary_table(reports), "", f"{program}: {len(granted)} rules granted, {len(used & granted)} used by "
             f"{len(reports)} accounts, {sum(len(rep.requests) for rep in reports)} requests"]
    lines += [f"  {'used  ' if k in used else 'UNUSED'} {k[2]:<7} {k[1]}{'.' + k[0] if k[0] else ''}"
              f"{' ' + ','.join(k[3]) if k[3] else ''}" for k in sorted(granted, key=lambda k: (k[1], k[2]))]
    lines += [f"refused at an install's or uninstall's edge (RBAC not yet or no longer in effect): {len(edges)}"]
    print("\n".join(lines))
    assert not missing, "refused: " + "; ".join(f"{r.time:%H:%M:%S} {r.user} {r.access}" for r in missing)
    assert not outside, "allowed by something outside the chart: " + "; ".join(f"{r.user} {r.access}" for r in outside)
    assert granted <= used, f"rules no {program} used in the whole run: {sorted(granted - used)}"
