"""The API's single source: the committed CRD and docs/reference.md match the models, and the
generated schema is structural (what the API server requires of a CRD)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelship import api, crd

REPO = Path(__file__).resolve().parents[2]


def test_committed_crd_and_readme_reference_match_the_models():
    stale = crd.write(REPO, check=True)
    assert not stale, f"{stale} differ from operator/modelship/api.py: run `modelship crd` and commit the result"


def _nodes(node: dict, path: str = ""):
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if "items" in node:
        yield from _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}{{}}")


def schema() -> dict:
    return crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_schema_is_structural_and_every_field_is_described():
    for path, node in _nodes(schema()):
        text = repr(node)
        assert "$ref" not in text and "$defs" not in text and "'null'" not in text, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        assert "anyOf" not in node or node.get("x-kubernetes-int-or-string"), f"{path} is a union"
        if path.startswith((".spec", ".status")) and not path.endswith(("[]", "{}")):
            assert node.get("description"), f"{path} has no description"


def test_defaults_enums_and_subresources():
    doc = schema()["properties"]["spec"]["properties"]
    assert doc["model"]["properties"]["revision"]["default"] == "main"
    assert doc["replicas"]["default"] == 1
    assert doc["engine"]["default"] == {} and doc["engine"]["properties"]["type"]["default"] == "auto"
    assert doc["engine"]["properties"]["type"]["enum"] == ["auto", "tgi", "vllm", "sglang", "llamacpp"]
    assert doc["storage"]["properties"]["accessMode"]["enum"][0] == "ReadWriteOnce"
    version = crd.crd()["spec"]["versions"][0]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert version["subresources"]["scale"]["labelSelectorPath"] == ".status.selector"
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:5] == ["Engine", "Ready", "Replicas", "Phase", "Revision"] and columns[-1] == "Age"
    assert crd.crd()["spec"]["names"]["shortNames"] == ["md", "mdep"]


def test_status_has_no_defaults_and_conditions_are_a_map_by_type():
    status = schema()["properties"]["status"]
    assert all("default" not in n for _, n in _nodes(status))
    conds = status["properties"]["conditions"]
    assert conds["x-kubernetes-list-type"] == "map" and conds["x-kubernetes-list-map-keys"] == ["type"]


def test_the_models_refuse_what_the_crd_refuses():
    with pytest.raises(ValueError):
        api.ModelDeploymentSpec.model_validate({"model": {"repo": "a/b"}, "replica": 2})  # unknown field
    with pytest.raises(ValueError):
        api.ModelDeploymentSpec.model_validate({"model": {"repo": "a/b"}, "engine": {"type": "triton"}})
    spec = api.ModelDeploymentSpec.model_validate({"model": {"repo": "a/b"}})
    assert spec.engine.type == "auto" and spec.model.revision == "main" and spec.replicas == 1


def test_examples_are_valid_model_deployments():
    import yaml

    examples = sorted((REPO / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == api.KIND:
                api.ModelDeployment.model_validate(doc)


def test_every_condition_reason_the_operator_writes_is_documented():
    import re

    source = "".join(f.read_text() for f in sorted((REPO / "operator" / "modelship" / "reconcile").rglob("*.py")))
    reasons = set(re.findall(r'(?:SpecError|ResolveError)\(\s*"([A-Za-z]+)"', source))
    reasons |= set(re.findall(r'"(?:True|False)", "([A-Za-z]+)"', source))  # cond(...), set_condition(...)
    reasons |= set(re.findall(r'blocked\("([A-Za-z]+)"', source))
    reasons |= set(re.findall(r'Event\("Warning", "([A-Za-z]+)"', source))
    reasons |= set(re.findall(r'reason = "([A-Za-z]+)" if', source))
    reasons |= set(re.findall(r'"(?:True|False)", \w+ or "([A-Za-z]+)"', source))  # crash or "RollingOut"
    reasons |= set(re.findall(r'crash = "([A-Za-z]+)" if', source))
    assert {"PoolNotFound", "Downloading", "RollingOut", "RepoNotFound", "ClaimNotFound", "ApplyRejected",
            "WaitingForDownload", "Waking", "CrashLoopBackOff"} <= reasons, reasons  # the scan finds reasons however they are written
    readme = (REPO / "docs" / "reference.md").read_text()
    missing = sorted(r for r in reasons if f"`{r}`" not in readme)
    assert not missing, f"docs/reference.md does not explain the condition reasons {missing}"


def test_each_quantize_value_goes_to_exactly_the_pinned_engines_that_take_it():
    """QUANTIZE_ENGINES against the pinned images' own choice lists: a value the engine's
    --quantization takes is offered for it, and no other (vLLM 0.29.0 has no bitsandbytes,
    SGLang 0.5.20 no plain marlin)."""
    from modelship.settings import Images

    from .engine_choices import SGLANG_QUANTIZATION, SGLANG_VERSION, VLLM_QUANTIZATION, VLLM_VERSION

    images = Images()
    assert images.vllm.endswith(f":v{VLLM_VERSION}") and f":v{SGLANG_VERSION}-" in images.sglang, \
        "the images moved: copy their choice lists into tests/unit/engine_choices.py"
    from typing import get_args

    declared = set(get_args(get_args(api.ServingSpec.model_fields["quantize"].annotation)[0]))
    assert declared == set(api.QUANTIZE_ENGINES)
    for engine, choices in (("vllm", VLLM_QUANTIZATION), ("sglang", SGLANG_QUANTIZATION)):
        offered = {q for q, has in api.QUANTIZE_ENGINES.items() if engine in has}
        assert offered == declared & set(choices), engine
    assert api.quantize_message("vllm").endswith("vLLM takes awq, compressed-tensors, fp8 and gptq")
    assert api.quantize_message("sglang").endswith("SGLang takes awq, compressed-tensors, fp8, gptq and bitsandbytes")
