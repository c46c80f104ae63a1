"""examples/gitops/: the Argo CD Applications (the chart from git, a folder of ModelDeployments)
read as Argo CD would need them, the chart rendered with the Application's own values, and every
ModelDeployment of the folder valid. tests/e2e/test_gitops.py syncs them with a real Argo CD."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from modelship import api

REPO = Path(__file__).resolve().parents[2]
GITOPS = REPO / "examples" / "gitops"


def application(name: str) -> dict:
    app = yaml.safe_load((GITOPS / f"{name}.yaml").read_text())
    assert (app["apiVersion"], app["kind"]) == ("argoproj.io/v1alpha1", "Application")
    policy = app["spec"]["syncPolicy"]
    assert policy["automated"] == {"prune": True, "selfHeal": True} and "CreateNamespace=true" in policy["syncOptions"]
    return app


def wave(app: dict) -> int:
    return int(app["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", "0"))


def test_the_chart_comes_first_and_the_models_wait_for_its_crd():
    chart, models = application("modelship"), application("models")
    assert wave(chart) < wave(models)
    assert "SkipDryRunOnMissingResource=true" in models["spec"]["syncPolicy"]["syncOptions"]
    assert "ServerSideApply=true" in chart["spec"]["syncPolicy"]["syncOptions"]
    assert (REPO / chart["spec"]["source"]["path"] / "Chart.yaml").exists()


def test_the_chart_renders_with_the_applications_values(tmp_path):
    from modelship_testbed import binaries

    helm = binaries.find("helm")
    if helm is None:
        pytest.skip("helm is not built here (modelship testbed build)")
    source = application("modelship")["spec"]["source"]
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(source["helm"]["valuesObject"]))
    out = subprocess.run([str(helm), "template", source["helm"]["releaseName"], str(REPO / source["path"]),
                          "-n", "modelship-system", "-f", str(values), "--kube-version", binaries.KUBERNETES_VERSION],
                         capture_output=True, text=True, check=True)  # (as Argo CD passes the cluster's version)
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert any(d["kind"] == "CustomResourceDefinition" and d["metadata"]["name"] == "modeldeployments.modelship.io"
               for d in docs)
    router = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-router"))
    assert router["spec"]["replicas"] == 2


def test_every_model_in_the_folder_is_valid():
    found = sorted((GITOPS / "models").glob("*.yaml"))
    assert found
    for path in found:
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] == api.KIND, path
            api.ModelDeployment.model_validate(doc)


def test_the_argo_cd_chart_values_carry_the_health_check_unchanged():
    """examples/gitops/argo-cd-values.yaml: for users who manage argocd-cm with Argo CD's chart (and
    what the test bed's Argo CD runs)."""
    values = yaml.safe_load((GITOPS / "argo-cd-values.yaml").read_text())
    lua = values["configs"]["cm"]["resource.customizations.health.modelship.io_ModelDeployment"]
    assert lua == (REPO / "charts" / "modelship" / "files" / "argocd-health.lua").read_text()
