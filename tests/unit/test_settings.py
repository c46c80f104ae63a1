"""The operator's settings: sources, errors, documentation."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelship.settings import ConfigError, Settings, load

REPO = Path(__file__).resolve().parents[2]


def test_settings_from_file_then_environment(tmp_path, monkeypatch):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("pools:\n  gpu: {gpuResource: nvidia.com/gpu}\n  small: {nodeSelector: {size: s}}\n"
                   "defaultCpuPool: small\nhubEndpoint: http://mirror:8090\n")
    monkeypatch.setenv("MODELSHIP_CONFIG", str(cfg))
    monkeypatch.setenv("MODELSHIP_NAMESPACES", "a, b")
    monkeypatch.setenv("MODELSHIP_HUB_ENDPOINT", "http://other:1")
    s = load()
    assert s.pools["small"].node_selector == {"size": "s"} and s.default_cpu_pool == "small"
    assert s.namespaces == ["a", "b"]
    assert s.hub_endpoint == "http://other:1"  # the environment wins over the file


@pytest.mark.parametrize("content,message", [
    ("defaultCpuPool: nope\n", "default pool 'nope' is not among the configured pools"),
    ("metricsPort: lots\n", "invalid operator setting metricsPort"),
    ("downloadPool: nope\n", "downloadPool 'nope' is not among the configured pools"),
    ("[1, 2]\n", "must hold a mapping"),
])
def test_bad_settings_say_what_to_fix(tmp_path, monkeypatch, content, message):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(content)
    monkeypatch.setenv("MODELSHIP_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match=message):
        load()


def test_readme_documents_every_setting():
    readme = (REPO / "docs" / "configuration.md").read_text()
    from pydantic.alias_generators import to_camel

    for name in Settings.model_fields:
        assert f"`{to_camel(name)}`" in readme, f"docs/configuration.md does not document the setting {to_camel(name)}"
        assert f"`MODELSHIP_{name.upper()}`" in readme, f"docs/configuration.md does not name MODELSHIP_{name.upper()}"


def test_kubernetes_service_links_are_never_settings(monkeypatch):
    """A Service named `modelship-metrics` would give MODELSHIP_METRICS_PORT=tcp://...: not a port."""
    monkeypatch.setenv("MODELSHIP_METRICS_PORT", "tcp://10.96.0.11:9090")
    assert load().metrics_port == 9090


def test_the_default_engine_is_tgi_unless_the_admin_chooses(monkeypatch):
    assert load().default_engine == "tgi"
    monkeypatch.setenv("MODELSHIP_DEFAULT_ENGINE", "vllm")
    assert load().default_engine == "vllm"
    monkeypatch.setenv("MODELSHIP_DEFAULT_ENGINE", "llamacpp")  # GGUF models get llama.cpp whatever it says
    with pytest.raises(ConfigError, match="invalid operator setting defaultEngine: Input should be 'tgi', 'vllm' or "
                                          "'sglang'"):
        load()
