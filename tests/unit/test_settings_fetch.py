"""The operator's settings (sources, errors, documentation) and the download command."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from modelship import fetch
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
    readme = (REPO / "README.md").read_text()
    from pydantic.alias_generators import to_camel

    for name in Settings.model_fields:
        assert f"`{to_camel(name)}`" in readme, f"README.md does not document the setting {to_camel(name)}"
        assert f"`MODELSHIP_{name.upper()}`" in readme, f"README.md does not name MODELSHIP_{name.upper()}"


def test_fetch_keeps_intact_files_and_refuses_paths_outside_the_volume(tmp_path):
    data = b"weights" * 100
    sha = hashlib.sha256(data).hexdigest()
    snap = tmp_path / "models--org--m" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "m.gguf").write_bytes(data)
    lines = []
    fetch.run("org/m", "a" * 40, None, str(tmp_path), [f"{len(data)}:{sha}:m.gguf"], log=lines.append)
    assert lines[-1].startswith("all 1 files")
    with pytest.raises(fetch.FetchError, match="leaves the snapshot folder"):
        fetch.run("org/m", "a" * 40, None, str(tmp_path), ["1::../../../etc/passwd"], log=lines.append)
    with pytest.raises(fetch.FetchError, match="leaves the snapshot folder"):
        fetch.run("org/m", "a" * 40, None, str(tmp_path), ["1::/etc/passwd"], log=lines.append)


def test_fetch_does_not_trust_a_corrupt_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snap = tmp_path / "models--org--m" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "m.gguf").write_bytes(b"x" * 10)
    with pytest.raises(fetch.FetchError, match="cannot download m.gguf"):
        fetch.run("org/m", "a" * 40, "http://127.0.0.1:9", str(tmp_path), [f"10:{'0' * 64}:m.gguf"],
                  log=lambda _: None)


def test_fetch_accepts_the_hub_cache_layout_with_links_into_blobs(tmp_path):
    data = b"gguf weights"
    sha = hashlib.sha256(data).hexdigest()
    repo_dir = tmp_path / "models--org--m"
    (repo_dir / "blobs").mkdir(parents=True)
    (repo_dir / "blobs" / sha).write_bytes(data)
    snap = repo_dir / "snapshots" / ("b" * 40) / "sub"
    snap.mkdir(parents=True)
    (snap / "m.gguf").symlink_to(Path("../../../blobs") / sha)
    lines = []
    fetch.run("org/m", "b" * 40, None, str(tmp_path), [f"{len(data)}:{sha}:sub/m.gguf"], log=lines.append)
    assert lines[0].startswith("ok sub/m.gguf")
