"""Metric names on both sides of the chart's monitoring: those its PromQL uses (the dashboard's
queries and the PrometheusRule's expressions) and those a program exports (its /metrics text).

Expressions are parsed with a real PromQL parser (promql-parser, Prometheus's grammar and
function signatures), so a query that Prometheus would refuse fails here too; the names are
the vector selectors' names, every function, aggregation, label matcher and range gone.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import promql_parser
import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "modelship"
DASHBOARD = CHART / "dashboards" / "modelship.json"

# Grafana's variables, as Prometheus never sees them: the range ones become a duration, the
# others (inside label values only) a plain word.
_RANGE_VARS = re.compile(r"\$(__rate_interval|__interval|__range)\b|\$\{(__rate_interval|__interval|__range)\}")
_VARS = re.compile(r"\$\{?[A-Za-z_]\w*\}?|\[\[[A-Za-z_]\w*\]\]")


def as_promql(expr: str) -> str:
    """A Grafana query as Prometheus would receive it (variables replaced)."""
    return _VARS.sub("x", _RANGE_VARS.sub("5m", expr))


_OPS = {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}


@dataclass
class Selector:
    name: str
    labels: dict[str, tuple[str, str]] = field(default_factory=dict)  # label -> (op, value)


def selectors(expr: str) -> list[Selector]:
    """Every vector selector of a PromQL expression (a Grafana one included): its metric name
    and label matchers. Raises ValueError when Prometheus would refuse the expression."""
    try:
        tree = promql_parser.parse(as_promql(expr))
    except Exception as e:  # the parser's own exception type is not exported
        raise ValueError(f"not valid PromQL: {expr!r}: {e}") from None
    found: list[Selector] = []

    def visit(node) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            labels = {m.name: (_OPS[str(m.op).rsplit(".", 1)[-1]], m.value) for m in node.matchers.matchers}
            name = node.name or (labels.pop("__name__", ("", ""))[1])
            found.append(Selector(name, labels))

    promql_parser.walk(tree, visit)
    return found


def metric_names(expr: str) -> set[str]:
    return {s.name for s in selectors(expr)}


# --- the dashboard ----------------------------------------------------------------------


def dashboard(path: Path = DASHBOARD) -> dict:
    return json.loads(path.read_text())


def panels(board: dict) -> list[dict]:
    """Every panel, those inside collapsed rows included (rows themselves are not panels)."""
    out = []
    for p in board.get("panels") or []:
        if p.get("type") == "row":
            out += p.get("panels") or []
        else:
            out.append(p)
    return out


_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*[A-Za-z_]\w*\s*\)\s*$")


def dashboard_queries(board: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable of a dashboard."""
    out = [(f"panel {p.get('title')!r}", t["expr"]) for p in panels(board) for t in p.get("targets") or []
           if t.get("expr")]
    for var in (board.get("templating") or {}).get("list") or []:
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var.get("query"), dict) else var.get("query", "")
        m = _LABEL_VALUES.match(query)
        if m:  # label_values(<selector>, label): the selector is PromQL
            out.append((f"variable ${var['name']}", m.group(1)))
        elif query.startswith("query_result("):
            out.append((f"variable ${var['name']}", query[len("query_result("):-1]))
    return out


# --- the rendered chart -----------------------------------------------------------------


def chart_queries(manifest: str) -> list[tuple[str, str]]:
    """(where, PromQL) of every alert and recording rule and of the dashboard in a rendered chart."""
    out: list[tuple[str, str]] = []
    for doc in yaml.safe_load_all(manifest):
        if not doc:
            continue
        if doc["kind"] == "PrometheusRule":
            for group in doc["spec"]["groups"]:
                for rule in group["rules"]:
                    out.append((f"rule {rule.get('alert') or rule.get('record')}", rule["expr"]))
        elif doc["kind"] == "ConfigMap":
            for key, text in (doc.get("data") or {}).items():
                if key.endswith(".json"):
                    out += dashboard_queries(json.loads(text))
    return out


# --- what a program exports -------------------------------------------------------------


@dataclass
class Exposition:
    """A /metrics text: its samples (name -> label sets seen) and its families' types."""
    samples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)  # family name (TYPE line) -> type

    def names(self) -> set[str]:
        """Every sample name the program exports: those seen, and for a family without samples
        now (a labelled metric nothing has touched yet) those its TYPE line promises, in
        prometheus_client's convention (the one exporter here that leaves families empty)."""
        out = set(self.samples)
        for family, kind in self.types.items():
            if any(_family_of(name, family, kind) for name in self.samples):
                continue
            if kind == "counter":
                out.add(family if family.endswith("_total") else family + "_total")
            elif kind == "histogram":
                out |= {family + "_bucket", family + "_sum", family + "_count"}
            elif kind == "summary":
                out |= {family, family + "_sum", family + "_count"}
            else:
                out.add(family)
        return out


def _family_of(sample: str, family: str, kind: str) -> bool:
    suffixes = {"counter": ("", "_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("", "_sum", "_count", "_created")}.get(kind, ("",))
    base = family.removesuffix("_total") if kind == "counter" else family
    return any(sample == base + s for s in suffixes) or sample == family


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s+\S+")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> Exposition:
    """Prometheus's text format, enough of it for names, types and label names."""
    out = Exposition()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 4:
                out.types[parts[2]] = parts[3]
            continue
        if not line.strip() or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            out.samples.setdefault(m.group(1), []).append(dict(_LABEL.findall(m.group(3) or "")))
    return out
