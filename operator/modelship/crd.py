"""Generate the CustomResourceDefinition (and the API reference in docs/reference.md) from `api.py`.

`modelship crd` writes `crds/modeldeployments.modelship.io.yaml` and the generated part of
`docs/reference.md`; `modelship crd --check` fails when a committed file differs from what
the models generate (CI runs it through a test). The CRD schema must be *structural*: no
`$ref`, a `type` on every node, no `null` types; pydantic's JSON schema is turned into one
here.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from . import api

CRD_FILE = f"{api.PLURAL}.{api.GROUP}.yaml"
QUANTITY_RULE = api.rule("type(self) == int || isQuantity(self)",
                         "must be a quantity such as 20Gi, 500m or 4")

# Keys of pydantic's JSON schema that a CRD schema keeps as they are.
# (A tuple, not a set: the order of keys in the generated file must not depend on hashing.)
_KEEP = ("type", "description", "default", "enum", "minimum", "maximum", "minLength", "maxLength", "pattern",
         "minItems", "maxItems", "maxProperties", "format", "x-kubernetes-int-or-string", "x-kubernetes-list-type",
         "x-kubernetes-list-map-keys", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-validations")


def _resolve(node: dict, defs: dict) -> dict:
    """Inline `$ref` and drop `null` from `anyOf` (optional fields are simply absent)."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[1]]
        node = {**target, **node}  # the field's own description and default win over the type's
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) == 1:
            del node["anyOf"]
            inner = _resolve(options[0], defs)
            node = {**inner, **{k: v for k, v in node.items() if k != "title"}}
        else:
            node["anyOf"] = options
    return node


def structural(node: dict, defs: dict, *, with_defaults: bool = True) -> dict:
    node = _resolve(node, defs)
    out: dict[str, Any] = {}
    if "anyOf" in node:  # int-or-string (quantities) is the only union the API uses
        types = sorted(o.get("type") for o in node["anyOf"])
        if types != ["integer", "string"]:
            raise ValueError(f"unsupported union {types} in {node.get('description')!r}")
        out["x-kubernetes-int-or-string"] = True
        if node.get("x-modelship-quantity"):
            out["x-kubernetes-validations"] = [QUANTITY_RULE]
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for key in _KEEP:
        if key in node:
            out[key] = copy.deepcopy(node[key])
    if node.get("x-modelship-quantity") and "x-kubernetes-validations" in node:  # the field's rules after it
        out["x-kubernetes-validations"] = [QUANTITY_RULE, *copy.deepcopy(node["x-kubernetes-validations"])]
    if "exclusiveMinimum" in node:  # JSON Schema 2020 -> OpenAPI 3.0
        out["minimum"], out["exclusiveMinimum"] = node["exclusiveMinimum"], True
    if "exclusiveMaximum" in node:
        out["maximum"], out["exclusiveMaximum"] = node["exclusiveMaximum"], True
    if out.get("default", 0) is None or not with_defaults:
        out.pop("default", None)
    if out.get("type") == "object" or "properties" in node:
        out["type"] = "object"
        if "properties" in node:
            out["properties"] = {k: structural(v, defs, with_defaults=with_defaults)
                                 for k, v in node["properties"].items()}
            if node.get("required"):
                out["required"] = list(node["required"])
        elif isinstance(node.get("additionalProperties"), dict):
            out["additionalProperties"] = structural(node["additionalProperties"], defs, with_defaults=with_defaults)
    if node.get("type") == "array":
        out["items"] = structural(node["items"], defs, with_defaults=with_defaults)
    if "description" in out:
        out["description"] = " ".join(out["description"].split())
        if out.get("default") not in (None, {}):  # `kubectl explain` shows descriptions, not defaults
            out["description"] += f" Default: `{out['default']}`."
    return out


def schema_of(model: type, *, with_defaults: bool = True) -> dict:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}), with_defaults=with_defaults)


# Rules that read metadata.name, which only the root of the schema sees.
ROOT_RULES = [
    api.rule(f"self.metadata.name.size() <= {api.MD_NAME_MAX} && self.metadata.name.matches('{api.MD_NAME}')",
             f"metadata.name must start with a lower-case letter, contain only lower-case letters, digits and '-', "
             f"and be at most {api.MD_NAME_MAX} characters: it names the Service, Deployment and download Job"),
    api.rule("!has(self.spec.router) || !has(self.spec.router.fallback) || "
             "!(self.metadata.name in self.spec.router.fallback)",
             "spec.router.fallback must name other ModelDeployments, not this one"),
]


def crd() -> dict:
    spec = schema_of(api.ModelDeploymentSpec)
    status = schema_of(api.ModelDeploymentStatus, with_defaults=False)
    root = {
        "type": "object",
        "description": " ".join((api.ModelDeployment.__doc__ or "").split()),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "modelship.io/v1alpha1"},
            "kind": {"type": "string", "description": "ModelDeployment"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": ROOT_RULES,
    }
    columns = [
        {"name": "Engine", "type": "string", "jsonPath": ".status.resolved.engine"},
        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas",
         "description": "Serving replicas that are ready."},
        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas",
         "description": "Replicas asked for (with autoscaling on: where it started; see Desired)."},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Revision", "type": "string", "jsonPath": ".status.resolved.shortSha",
         "description": "The commit being served."},
        {"name": "Repo", "type": "string", "jsonPath": ".spec.model.repo", "priority": 1},
        {"name": "Desired", "type": "integer", "jsonPath": ".status.autoscaling.desiredReplicas", "priority": 1,
         "description": "With autoscaling on: the replicas the autoscaler set."},
        {"name": "Scaling", "type": "string", "jsonPath": ".status.autoscaling.reason", "priority": 1,
         "description": "With autoscaling on: its last decision."},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{api.PLURAL}.{api.GROUP}",
                     "labels": {"app.kubernetes.io/name": "modelship", "app.kubernetes.io/part-of": "modelship"}},
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {"kind": api.KIND, "plural": api.PLURAL, "singular": api.SINGULAR,
                      "shortNames": api.SHORT_NAMES, "listKind": f"{api.KIND}List", "categories": ["modelship"]},
            "versions": [{
                "name": api.VERSION, "served": True, "storage": True,
                "schema": {"openAPIV3Schema": root},
                "subresources": {"status": {}, "scale": {
                    "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                    "labelSelectorPath": ".status.selector"}},
                "additionalPrinterColumns": columns,
            }],
        },
    }


HEADER = "# Generated by `modelship crd` from operator/modelship/api.py. Do not edit by hand.\n"


def render() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=120, allow_unicode=True)


CHART_CRD = "charts/modelship/templates/crd.yaml"


def render_chart() -> str:
    """The same CRD as a template of the chart: behind `crds.enabled`, kept on uninstall with
    `crds.keep` (text that looks like a template action is escaped, never evaluated)."""
    definition = crd()
    body = yaml.safe_dump(definition, sort_keys=False, width=120, allow_unicode=True).replace("{{", "{{ `{{` }}")
    name_line = f"  name: {definition['metadata']['name']}\n"
    keep = ("  {{- if .Values.crds.keep }}\n  annotations:\n"
            "    # Uninstalling the chart leaves the CRD: deleting it would delete every ModelDeployment.\n"
            "    helm.sh/resource-policy: keep\n  {{- end }}\n")
    body = body.replace(name_line, name_line + keep, 1)
    return ("{{- /* Generated by `modelship crd` from operator/modelship/api.py. Do not edit by hand. */}}\n"
            "{{- if .Values.crds.enabled }}\n" + body + "{{- end }}\n")


# --- the reference in docs/reference.md ----------------------------------------------------------

REF_BEGIN = "<!-- BEGIN GENERATED CRD REFERENCE (modelship crd) -->"
REF_END = "<!-- END GENERATED CRD REFERENCE -->"
REFERENCE_DOC = "docs/reference.md"  # the hand-written page the reference is spliced into


def _type_name(node: dict) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "quantity" if any("isQuantity" in r["rule"] for r in node.get("x-kubernetes-validations", [])) \
            else "int or string"
    t = node.get("type", "object")
    if t == "array":
        return f"[]{_type_name(node['items'])}"
    if t == "object" and "additionalProperties" in node:
        return f"map[string]{_type_name(node['additionalProperties'])}"
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    return t


def _rows(node: dict, path: str, required: set[str], out: list[str]) -> None:
    for name, child in (node.get("properties") or {}).items():
        p = f"{path}.{name}"
        req = " (required)" if name in required else ""
        desc = child.get("description", "").replace("|", "\\|")
        limits = [f"{k} {child[k]}" for k in ("minimum", "maximum") if k in child]
        if limits:
            desc += f" ({', '.join(limits)})"
        out.append(f"| `{p}`{req} | {_type_name(child)} | {desc} |")
        inner = child["items"] if child.get("type") == "array" else child
        if inner.get("properties"):
            _rows(inner, p + ("[]" if child.get("type") == "array" else ""), set(inner.get("required", [])), out)


def reference() -> str:
    doc = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    lines = [REF_BEGIN, "", "#### `spec`", "", "| Field | Type | Description |", "|---|---|---|"]
    _rows(doc["properties"]["spec"], "spec", set(doc["properties"]["spec"].get("required", [])), lines)
    lines += ["", "#### `status`", "", "| Field | Type | Description |", "|---|---|---|"]
    _rows(doc["properties"]["status"], "status", set(), lines)
    rules = []
    for node_path, node in _walk(doc, ""):
        for r in node.get("x-kubernetes-validations", []):
            if r is not QUANTITY_RULE and r != QUANTITY_RULE:
                rules.append(f"- `{node_path or '.'}`: {r['message']}")
    lines += ["", "#### Validation rules checked by the API server", "", *rules, "", REF_END]
    return "\n".join(lines)


def _walk(node: dict, path: str):
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{name}")
    if node.get("type") == "array":
        yield from _walk(node["items"], f"{path}[]")


def splice_reference(doc: str) -> str:
    pattern = re.compile(re.escape(REF_BEGIN) + ".*?" + re.escape(REF_END), re.S)
    if not pattern.search(doc):
        raise ValueError(f"{REFERENCE_DOC} has no {REF_BEGIN} ... {REF_END} section")
    return pattern.sub(lambda _: reference(), doc)


def write(repo: Path, check: bool) -> list[str]:
    """Write (or, with check, compare) the generated files; return the ones that differ."""
    doc = repo / REFERENCE_DOC
    if not doc.exists():  # it holds the hand-written text around the generated part: never made from nothing
        raise ValueError(f"{REFERENCE_DOC} is missing: it holds the API reference between its "
                         f"{REF_BEGIN} ... {REF_END} markers")
    targets = {repo / "crds" / CRD_FILE: render(), repo / CHART_CRD: render_chart(),
               doc: splice_reference(doc.read_text())}
    stale = []
    for path, text in targets.items():
        if not path.exists() or path.read_text() != text:
            stale.append(str(path.relative_to(repo)))
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    return stale
