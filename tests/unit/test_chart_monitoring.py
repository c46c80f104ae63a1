"""The chart's Grafana dashboard, without a cluster: it parses, every panel has a query that
Prometheus would accept; and the name extraction the integration test relies on
(tests/integration/test_chart_monitoring.py compares the names with live /metrics)."""

from __future__ import annotations

import json

import pytest
import yaml

from .. import metric_names as mn


def test_the_dashboard_parses_and_every_panel_has_a_valid_query():
    board = mn.dashboard()
    assert board["uid"] == "modelship" and board["title"] and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = mn.panels(board)
    assert len(panels) >= 20
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for p in panels:
        assert p.get("title") and p.get("description"), p
        exprs = [t.get("expr", "") for t in p.get("targets") or []]
        assert exprs and all(e.strip() for e in exprs), f"panel {p['title']!r} has no query"
        assert p["datasource"]["uid"] == "${datasource}", p["title"]  # the data source the user picks
        for e in exprs:
            assert mn.metric_names(e), f"panel {p['title']!r}: {e!r} names no metric"
    for where, expr in mn.dashboard_queries(board):
        mn.selectors(expr)  # raises on what Prometheus would refuse


def test_the_dashboard_covers_the_operator_router_and_both_engines():
    names = {n for _, e in mn.dashboard_queries(mn.dashboard()) for n in mn.metric_names(e)}
    for prefix in ("modelship_reconcile", "modelship_modeldeployments", "modelship_router_requests",
                   "modelship_router_time_to_first_byte_seconds", "modelship_router_in_flight", "modelship_router_retries",
                   "llamacpp:", "tgi_"):
        assert any(n.startswith(prefix) for n in names), prefix


def test_metric_names_are_the_selectors_not_functions_labels_or_ranges():
    expr = ('histogram_quantile(0.95, sum by (le, model) (rate(x_seconds_bucket{model=~"$model"}[$__rate_interval])))'
            ' / on() group_left sum(llamacpp:tokens_predicted_total offset 1h)'
            ' unless absent({__name__="up", job="a"}) or vector(0)')
    assert mn.metric_names(expr) == {"x_seconds_bucket", "llamacpp:tokens_predicted_total", "up"}
    (first, *_) = mn.selectors('rate(requests_total{code=~"5..", job!="b"}[5m])')
    assert first.labels == {"code": ("=~", "5.."), "job": ("!=", "b")}


@pytest.mark.parametrize("bad", ["rate(x)", "sum(rate(x[5m])", "nosuchfunction(x)", 'x{a=~"("}',
                                 "histogram_quantile(x_bucket)"])
def test_what_prometheus_refuses_is_refused(bad):
    with pytest.raises(ValueError, match="not valid PromQL"):
        mn.selectors(bad)


def test_grafana_variables_and_label_values_queries_are_read():
    board = {"panels": [{"type": "row", "panels": [{"title": "in a collapsed row", "targets": [{"expr": "a"}]}]},
                        {"title": "p", "targets": [{"expr": "rate(b[$__interval])"}, {"expr": ""}]}],
             "templating": {"list": [{"type": "query", "name": "m", "query": {"query": "label_values(c{x=\"$y\"}, m)"}},
                                     {"type": "query", "name": "n", "query": "label_values(n)"},
                                     {"type": "datasource", "name": "ds", "query": "prometheus"}]}}
    queries = mn.dashboard_queries(board)
    assert [w for w, _ in queries] == ["panel 'in a collapsed row'", "panel 'p'", "variable $m"]
    assert {n for _, q in queries for n in mn.metric_names(q)} == {"a", "b", "c"}


def test_chart_queries_come_from_rules_and_dashboard_configmaps():
    manifest = yaml.safe_dump_all([
        {"kind": "PrometheusRule", "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "up == 0"}]}]}},
        {"kind": "ConfigMap", "data": {"d.json": json.dumps({"panels": [{"title": "t", "targets": [{"expr": "z"}]}]}),
                                       "other": "not a dashboard"}},
        {"kind": "Service"}])
    assert mn.chart_queries(manifest) == [("rule A", "up == 0"), ("panel 't'", "z")]


EXPOSITION = """\
# HELP modelship_router_requests_total Requests.
# TYPE modelship_router_requests_total counter
# HELP modelship_router_time_to_first_byte_seconds From the request to the first byte.
# TYPE modelship_router_time_to_first_byte_seconds histogram
# HELP modelship_reconciles_total Reconciles.
# TYPE modelship_reconciles_total counter
modelship_reconciles_total{result="success"} 3.0
modelship_reconciles_created{result="success"} 1.7e9
# TYPE modelship_modeldeployments gauge
modelship_modeldeployments{phase="Ready"} 1.0
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 10
# TYPE tgi_request_count counter
tgi_request_count 0
# TYPE tgi_request_duration histogram
tgi_request_duration_bucket{le="+Inf"} 0
tgi_request_duration_sum 0
tgi_request_duration_count 0
"""


def test_exported_names_come_from_samples_and_from_the_type_lines_of_empty_families():
    exp = mn.parse_exposition(EXPOSITION)
    names = exp.names()
    # Families with samples: exactly the names seen (a TGI counter has no _total).
    assert {"modelship_reconciles_total", "modelship_modeldeployments", "llamacpp:prompt_tokens_total",
            "tgi_request_count", "tgi_request_duration_bucket", "tgi_request_duration_count"} <= names
    assert "tgi_request_count_total" not in names and "llamacpp:prompt_tokens_total_total" not in names
    # Families nothing has touched yet: what their TYPE line promises.
    assert {"modelship_router_requests_total", "modelship_router_time_to_first_byte_seconds_bucket",
            "modelship_router_time_to_first_byte_seconds_count"} <= names
    # A histogram's own name and a gauge's _bucket are not samples.
    assert "modelship_router_time_to_first_byte_seconds" not in names
    assert "modelship_modeldeployments_bucket" not in names
    assert exp.samples["modelship_modeldeployments"] == [{"phase": "Ready"}]
