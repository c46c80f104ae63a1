"""The air-gapped case for real: the test bed's olah mirror, serving a local git repo with the
real SmolLM2 GGUF, to the resolver and to `modelship fetch`."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from modelship import manifests, weights
from modelship.api import ModelSource
from modelship.reconcile.resolve import HubResolver, ResolveError

pytestmark = [pytest.mark.integration, pytest.mark.localnode]


@pytest.fixture(scope="module")
def mirror(cluster) -> str:
    from modelship_testbed.config import TestbedConfig

    if cluster.local_node is None:
        pytest.skip("needs the test bed (its Hub mirror); this cluster is another one")
    cfg = TestbedConfig.load()
    if not cfg.hub_mirror:
        pytest.skip("the test bed runs without its Hub mirror")
    return f"http://127.0.0.1:{cfg.ports.hub_mirror}"


def mirror_head(repo: str) -> str:
    from modelship_testbed.hubmirror import mirror_dir

    return subprocess.run(["git", "-C", str(mirror_dir() / "models" / repo), "rev-parse", "main"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_resolution_and_download_through_olah(mirror, tmp_path):
    from modelship_testbed.binaries import smollm2_gguf

    repo = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
    r = HubResolver().resolve(ModelSource(repo=repo), mirror, None)  # no tag: Q4_K_M, Q8_0, then the first GGUF
    src = smollm2_gguf()
    assert r.sha == mirror_head(repo) and r.model_file == src.name and r.quantization == "Q4_1"
    assert [(f.path, f.size) for f in r.files] == [(src.name, src.stat().st_size)]  # sizes from HEAD requests
    from modelship_testbed.hubmirror import mirror_dir

    # olah's files are kept in git: each is verified by its git blob id, the ETag of its HEAD answer
    assert r.files[0].git_sha1 == subprocess.run(
        ["git", "-C", str(mirror_dir() / "models" / repo), "rev-parse", f"{r.sha}:{src.name}"],
        capture_output=True, text=True, check=True).stdout.strip()
    progress = weights.download(r.repo, r.sha, mirror, str(tmp_path), [manifests.file_spec(f) for f in r.files],
                         log=lambda _: None)
    got = tmp_path / "models--HuggingFaceTB--SmolLM2-135M-Instruct-GGUF" / "snapshots" / r.sha / src.name
    assert progress.done == src.stat().st_size
    assert hashlib.sha256(got.read_bytes()).hexdigest() == hashlib.sha256(src.read_bytes()).hexdigest()


def test_olah_failures_become_reasons(mirror):
    with pytest.raises(ResolveError) as e:
        HubResolver().resolve(ModelSource(repo="HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", quantization="Q8_0"),
                              mirror, None)
    assert e.value.reason == "QuantizationNotFound" and "Q4_1 (93.8 MiB)" in e.value.message
    with pytest.raises(ResolveError) as e:
        HubResolver().resolve(ModelSource(repo="nobody/nothing"), mirror, None)
    assert e.value.reason in ("RepoNotFound", "HubError"), e.value
