"""The chart's monitoring (monitoring.yaml, dashboard.yaml) against what really runs.

- Every metric its PromQL names (the PrometheusRule's alerts, the dashboard's panels and
  variables) is exported by one of: the operator (`modelship operator`, with a
  ModelDeployment to reconcile), the router (`modelship router`), llama-server serving
  SmolLM2 on the local node, the TGI fake; each read from its live /metrics.
- The ServiceMonitors, the PrometheusRule and the dashboard's ConfigMap are accepted by the
  API server with the Prometheus Operator's CRDs installed, and `helm lint` is clean.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from .. import metric_names as mn
from ..conftest import wait_for
from .conftest import CHART, free_port, render, run_helm

pytestmark = [pytest.mark.integration]

ALL_ON = ["monitoring.serviceMonitor.enabled=true", "monitoring.prometheusRule.enabled=true",
          "monitoring.dashboard.enabled=true"]
ALERTS = {"ModelshipOperatorDown", "ModelshipOperatorNoLeader", "ModelshipOperatorNotReconciling",
          "ModelshipOperatorReconcileErrors",
          "ModelshipResolutionFailing", "ModelshipModelDeploymentFailed", "ModelshipModelDeploymentNotReady",
          "ModelshipModelDeploymentDegraded", "ModelshipRouterDown", "ModelshipRouterErrors"}
# Written by Prometheus itself for every target it scrapes, by no exporter.
PROMETHEUS_OWN = {"up"}
# Labels every scraped series gets from the ServiceMonitors (the Prometheus Operator's target
# labels), and those the engines' ServiceMonitor adds by relabelling.
TARGET_LABELS = {"job", "instance", "namespace", "service", "pod", "container", "endpoint"}
ENGINE_LABELS = {"model", "engine"}
# TGI's metrics as TGI documents them (docs/source/reference/metrics.md of
# text-generation-inference) and tgi_request_failure (counted by its router, by `err`): the
# fake exports a few names of its own, which a dashboard must not rely on.
TGI_METRICS = {"tgi_batch_current_max_tokens", "tgi_batch_current_size", "tgi_batch_decode_duration",
               "tgi_batch_filter_duration", "tgi_batch_forward_duration", "tgi_batch_inference_count",
               "tgi_batch_inference_duration", "tgi_batch_inference_success", "tgi_batch_next_size", "tgi_queue_size",
               "tgi_request_count", "tgi_request_duration", "tgi_request_generated_tokens",
               "tgi_request_inference_duration", "tgi_request_input_length", "tgi_request_max_new_tokens",
               "tgi_request_mean_time_per_token_duration", "tgi_request_queue_duration", "tgi_request_skipped_tokens",
               "tgi_request_success", "tgi_request_validation_duration", "tgi_request_failure"}


# --- the API server and helm lint -------------------------------------------------------------


@pytest.fixture(scope="module")
def monitoring_crds(cluster) -> None:
    """The Prometheus Operator's ServiceMonitor and PrometheusRule CRDs (its Go module's), unless
    the cluster has them already: a real cluster's own (another version, its operator's) are
    the ones to check against, and are never replaced."""
    from modelship_testbed import binaries

    crds = ("servicemonitors", "prometheusrules")
    there = cluster.kubectl("get", "crd", "-o", "name", check=False)
    if not all(f"customresourcedefinition.apiextensions.k8s.io/{c}.monitoring.coreos.com" in there for c in crds):
        cluster.kubectl("apply", "--server-side", "-f", str(binaries.prometheus_operator_crds()))
    for crd in crds:
        cluster.wait_established(f"{crd}.monitoring.coreos.com")


def test_monitoring_objects_are_accepted_by_the_api_server(cluster, namespace, monitoring_crds):
    release = f"m{uuid.uuid4().hex[:6]}"
    everything = [*ALL_ON, "monitoring.serviceMonitor.labels.release=kube-prometheus-stack",
                  "monitoring.serviceMonitor.scrapeTimeout=10s", f"monitoring.serviceMonitor.engines.namespaces={{{namespace}}}",
                  "monitoring.prometheusRule.labels.release=kube-prometheus-stack",
                  "monitoring.prometheusRule.alertLabels.team=ml-platform",
                  "monitoring.prometheusRule.runbookUrl=https://example.com/docs/observability.md",
                  f"monitoring.dashboard.namespace={namespace}", "monitoring.dashboard.annotations.grafana_folder=modelship",
                  "router.replicas=0"]
    for sets in (ALL_ON, everything):
        manifest = render(release, namespace, *sets)
        # --validate=strict: the API server refuses fields the CRDs do not know, rather than dropping them.
        out = cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", "-",
                              stdin=manifest)
        for obj in (f"servicemonitor.monitoring.coreos.com/{release}-operator",
                    f"servicemonitor.monitoring.coreos.com/{release}-router",
                    f"servicemonitor.monitoring.coreos.com/{release}-engines",
                    f"prometheusrule.monitoring.coreos.com/{release}", f"configmap/{release}-dashboard"):
            assert f"{obj} created (server dry run)" in out, out
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(manifest) if d}
    rules = [r for g in docs[("PrometheusRule", release)]["spec"]["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} == ALERTS
    for r in rules:
        assert r["labels"]["severity"] in ("critical", "warning") and r["labels"]["team"] == "ml-platform"
        assert len(r["annotations"]["description"]) > 200, r["alert"]  # a runbook, not a restatement
        assert r["annotations"]["runbook_url"] == f"https://example.com/docs/observability.md#{r['alert'].lower()}"
        mn.selectors(r["expr"])  # Prometheus would load it
    router = docs[("ServiceMonitor", f"{release}-router")]["spec"]
    assert router["endpoints"][0]["port"] == "http" and router["endpoints"][0]["honorLabels"] is True
    assert docs[("ServiceMonitor", f"{release}-engines")]["spec"]["namespaceSelector"] == {"matchNames": [namespace]}
    assert docs[("ConfigMap", f"{release}-dashboard")]["metadata"]["labels"]["grafana_dashboard"] == "1"
    # Off by default: nothing that needs the Prometheus Operator's CRDs.
    kinds = {d["kind"] for d in yaml.safe_load_all(render(release, namespace)) if d}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"} and "ConfigMap" in kinds  # (the router's settings)


def test_helm_lint_is_clean_with_monitoring_on_and_the_schema_fragment_holds():
    import json

    assert "monitoring" in json.loads((CHART / "values.schema.json").read_text())["properties"]
    chart = CHART
    for sets in ([], ALL_ON, [*ALL_ON, "monitoring.serviceMonitor.engines.enabled=false", "router.enabled=false"]):
        out = run_helm("lint", "--strict", str(chart), *[a for s in sets for a in ("--set", s)])
        assert "0 chart(s) failed" in out.stdout and "[WARNING]" not in out.stdout, out.stdout
    # The fragment is really applied: a wrong type, a bad duration and an unknown key are refused.
    bad = run_helm("lint", "--strict", str(chart), "--set", "monitoring.serviceMonitor.enabled=yes", "--set",
               "monitoring.prometheusRule.thresholds.failedFor=five", "--set", "monitoring.dashboard.colour=red",
               check=False)
    assert bad.returncode != 0
    for complaint in ("/monitoring/serviceMonitor/enabled", "/monitoring/prometheusRule/thresholds/failedFor",
                      "'colour' not allowed"):
        assert complaint in bad.stdout + bad.stderr, bad.stdout + bad.stderr


# --- the metric names against live /metrics --------------------------------------------------


@pytest.fixture
def tgi_fake():
    from modelship_testbed.procs import stop

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "modelship_testbed.tgi_fake", "--model-id", "org/tiny",
                             "--hostname", "127.0.0.1", "--port", str(port), "--fake-load-seconds", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, 20, "the TGI fake to start")
    yield url
    stop(proc, 10)


@pytest.fixture
def llama_server(cluster, namespace, local_node):
    """examples/testbed/llama-server-smollm2.yaml (llama-server --metrics) on the local node;
    the namespace's deletion ends it."""
    from modelship_testbed import demo

    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=demo.render_example())
    pod = demo.wait_ready_pod("app=smollm2", namespace, log=print, timeout=180)
    return f"http://{pod['status']['podIP']}:8080"


@pytest.fixture
def static_router(tmp_path, llama_server, tgi_fake):
    """`modelship router` in front of both engines, after one answer from each (so that its
    labelled series have samples; the names would be read from its TYPE lines without)."""
    from modelship_testbed.procs import stop

    (tmp_path / "models.yaml").write_text(yaml.safe_dump({"models": [
        {"name": "smollm2", "engine": "llamacpp", "endpoints": [llama_server]},
        {"name": "tiny", "engine": "tgi", "endpoints": [tgi_fake]}]}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([str(Path(sys.executable).with_name("modelship")), "router", "--static",
                             str(tmp_path / "models.yaml"), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, 20, "the router to start")
        for model in ("smollm2", "tiny"):
            answer = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
                "model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "Hello"}]})
            assert answer.status_code == 200, answer.text
        yield url
    finally:
        stop(proc, 20)


def operator_with_work(cluster, operator) -> str:
    """The operator's /metrics once it has reconciled a ModelDeployment (resolved from the
    catalog; Pending on a claim that does not exist, so nothing is downloaded or started)."""
    operator.start()
    cluster.apply({"apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "watched"},
                   "spec": {"model": {"repo": "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", "quantization": "Q4_1"},
                            "pool": "local", "storage": {"existingClaim": "not-there"}}}, operator.namespace)

    def reconciled():
        text = operator.metrics()
        return text if all(f"{n}{{" in text for n in ("modelship_reconciles_total", "modelship_resolutions_total",
                                                         "modelship_child_writes_total")) else None

    return wait_for(reconciled, 60, "the operator to reconcile the ModelDeployment", lambda: operator.log()[-3000:])


@pytest.mark.localnode
@pytest.mark.slow
def test_every_metric_the_alerts_and_dashboard_name_is_exported(cluster, namespace, operator, static_router,
                                                                 llama_server, tgi_fake):
    sources = {"operator": operator_with_work(cluster, operator),
               "router": httpx.get(f"{static_router}/metrics", timeout=10).text,
               "llama-server": httpx.get(f"{llama_server}/metrics", timeout=10).text,
               "TGI fake": httpx.get(f"{tgi_fake}/metrics", timeout=10).text}
    exported = {src: mn.parse_exposition(text) for src, text in sources.items()}
    names = {src: e.names() for src, e in exported.items()}
    used: dict[str, list[tuple[str, mn.Selector]]] = {}
    for where, expr in mn.chart_queries(render("mon", "modelship-system", *ALL_ON)):
        for sel in mn.selectors(expr):
            used.setdefault(sel.name, []).append((where, sel))

    missing = {n: sorted({w for w, _ in uses}) for n, uses in used.items()
               if n not in PROMETHEUS_OWN and not any(n in found for found in names.values())}
    assert not missing, ("named in the chart's PromQL, exported by nothing that runs: "
                         + "; ".join(f"{n} (in {', '.join(w)})" for n, w in sorted(missing.items())))
    origin = {n: next(src for src, found in names.items() if n in found) for n in used if n not in PROMETHEUS_OWN}
    print("\n" + "\n".join(f"  {n:55} {origin[n]}" for n in sorted(origin)))  # (pytest -s shows where each comes from)
    assert set(origin.values()) == set(sources), "the dashboard should show every component"

    # A label matcher names a label the series has (its own, or one Prometheus gives it).
    for name, uses in used.items():
        src = origin.get(name)
        seen = [labels for labels in exported[src].samples.get(name, [])] if src else []
        if not seen:
            continue  # no samples to compare with (the name was checked above)
        have = set().union(*seen) | TARGET_LABELS | (ENGINE_LABELS if src in ("llama-server", "TGI fake") else set())
        for where, sel in uses:
            assert set(sel.labels) <= have, f"{where}: {name} has no label {set(sel.labels) - have} ({sorted(have)})"
    # Phases: the gauge lists every phase, so a value it does not list is a typo.
    phases = {labels["phase"] for labels in exported["operator"].samples["modelship_modeldeployments"]}
    for where, sel in used["modelship_modeldeployments"]:
        if "phase" in sel.labels:
            asked = set(sel.labels["phase"][1].split("|"))
            assert asked <= phases, f"{where}: no phase {asked - phases} (there are {sorted(phases)})"
    # TGI's names are TGI's own, not only the fake's.
    for name in used:
        if name.startswith("tgi_"):
            families = {name} | {name.removesuffix(s) for s in ("_bucket", "_sum", "_count") if name.endswith(s)}
            assert families & TGI_METRICS, f"{name}: the TGI fake exports it, TGI does not document it"
