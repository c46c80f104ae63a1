"""The minimum Kubernetes version: derived from what the CRD's validation rules use, stated
once in docs/configuration.md, and in the chart's `kubeVersion`; the three agree. A rule that
starts using a later CEL library (the format library, 1.32 for new CRDs) fails here until
the documented minimum and the chart say so."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "modeldeployments.modelship.io.yaml"

# What a rule may use -> the first Kubernetes minor whose API server accepts it in a new CRD
# (k8s.io/apiserver pkg/cel/environment/base.go: a library introduced at 1.N is in the
# environment for new expressions from 1.N+1, when the compatibility version reaches it;
# the table "CEL options, language features, and libraries" of kubernetes.io's CEL page).
NEEDS = {  # (introduced at, in base.go)
    r"\bisQuantity\(|\bquantity\(": 29,  # the Kubernetes quantity library (1.28)
    r"\bsets\.": 30,  # ext.Sets (1.29)
    r"\bisIP\(|\bip\(|\bisCIDR\(|\bcidr\(": 31,  # the IP and CIDR libraries (1.30)
    r"\bformat\.": 32,  # the format library (1.31)
    r"\.(all|exists|existsOne|transformList|transformMap|transformMapEntry)\(\s*\w+\s*,\s*\w+\s*,": 33,
    # (two-variable comprehensions, 1.32)
    r"\bsemver\(|\bisSemver\(": 34,  # the semver library (1.33)
    r"\.\?\w|\boptional\.": 29,  # optional types (1.28)
    r"\boldSelf\b": 25,  # transition rules (validation rules on by default, beta)
    r"\bisURL\(|\burl\(|\.split\(": 25,  # the URL library and ext.Strings v0: wherever rules are on
}
FIELDS = {"fieldPath": 28, "reason": 28, "messageExpression": 27, "optionalOldSelf": 30}  # keys of a rule


def validations(node):
    if isinstance(node, dict):
        yield from node.get("x-kubernetes-validations", [])
        for v in node.values():
            yield from validations(v)
    elif isinstance(node, list):
        for v in node:
            yield from validations(v)


def crd_minimum() -> tuple[int, list[str]]:
    rules = list(validations(yaml.safe_load(CRD.read_text())))
    assert len(rules) > 30  # (the CRD was read)
    code = [re.sub(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", "''", r["rule"]) for r in rules]  # not in strings
    why = [f"{pattern} 1.{minor}" for pattern, minor in NEEDS.items() if any(re.search(pattern, c) for c in code)]
    why += [f"{key} 1.{minor}" for key, minor in FIELDS.items() if any(key in r for r in rules)]
    return max(int(w.rsplit(".", 1)[1]) for w in why), why


def documented_minimum() -> int:
    text = (REPO / "docs" / "configuration.md").read_text()
    found = re.findall(r"\*\*Kubernetes 1\.(\d+) or later\.\*\*", text)
    assert len(found) == 1, found
    return int(found[0])


def test_the_crd_needs_what_the_docs_and_the_chart_say():
    minor, why = crd_minimum()
    assert (minor, documented_minimum()) == (29, 29), why
    chart = yaml.safe_load((REPO / "charts" / "modelship" / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">=1.{minor}.0-0"  # (-0: pre-release and vendor builds, v1.29.3-eks-...)


def test_a_rule_of_a_later_library_would_raise_the_minimum():
    rules = [{"rule": "self.all(k, isQuantity(self[k]))"}, {"rule": "format.dns1123Label().validate(self)"}]
    found = [minor for pattern, minor in NEEDS.items() if any(re.search(pattern, r["rule"]) for r in rules)]
    assert max(found) == 32


@pytest.mark.parametrize("version, ok", [("v1.28.15", False), ("v1.29.0", True), ("v1.29.3-eks-4c1f2a1", True),
                                         ("v1.36.3", True)])
def test_helm_refuses_an_older_cluster_at_once(version, ok):
    from modelship_testbed import binaries

    helm = binaries.find("helm")
    if helm is None:
        pytest.skip("helm is not built here (modelship testbed build)")
    out = subprocess.run([str(helm), "template", "r", str(REPO / "charts" / "modelship"), "--kube-version", version],
                         capture_output=True, text=True, timeout=120)
    assert (out.returncode == 0) == ok
    if not ok:
        assert out.stderr.startswith(f"Error: chart requires kubeVersion: >=1.29.0-0 which is incompatible with "
                                     f"Kubernetes {version}")
