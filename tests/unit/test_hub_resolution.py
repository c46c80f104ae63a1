"""Resolution against a fake Hub that speaks the Hub's HTTP API to the real huggingface_hub
client: every selection rule and every failure reason."""

from __future__ import annotations

import hashlib
import json

import pytest

from modelship.api import ModelSource
from modelship.reconcile.resolve import HubResolver, ResolveError, choose_gguf
from modelship_testbed.hub_fake import FakeHub, FakeRepo, git_blob_sha1

SHA1, SHA2 = "1" * 40, "2" * 40
MiB = 1024 * 1024


def blob(n: int, seed: str) -> bytes:
    return (seed.encode() * (n // len(seed) + 1))[:n]


@pytest.fixture(scope="module")
def hub():
    h = FakeHub()
    h.add_repo(FakeRepo("org/chat-GGUF", {SHA1: {
        "README.md": b"# card", "chat-Q4_K_M.gguf": blob(3000, "a"), "chat-Q8_0.gguf": blob(5000, "b"),
        "chat-Q2_K.gguf": blob(1000, "c"), "chat-IQ4_XS.gguf": blob(2000, "d"), "mmproj-chat-f16.gguf": blob(900, "e"),
        "chat.imatrix.gguf": blob(100, "f"),
        "big/chat-Q6_K-00001-of-00002.gguf": blob(4000, "g"), "big/chat-Q6_K-00002-of-00002.gguf": blob(1500, "h"),
    }}, {"main": SHA1, "v1": SHA1}))
    h.add_repo(FakeRepo("org/vision-GGUF", {SHA1: {"mmproj-model-f16.gguf": blob(500, "i"),
                                                  "model-Q5_K_S.gguf": blob(700, "j")}}, {"main": SHA1}))
    config = json.dumps({"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 8192}).encode()
    st = {"config.json": config, "generation_config.json": b"{}", "tokenizer.json": b"{}",
          "tokenizer_config.json": b"{}", "model-00001-of-00002.safetensors": blob(2 * MiB, "k"),
          "model-00002-of-00002.safetensors": blob(MiB, "l"), "model.safetensors.index.json": b"{}",
          "README.md": b"# card", "original/consolidated.00.pth": blob(300, "m"), "onnx/model.safetensors": b"x"}
    h.add_repo(FakeRepo("org/llama", {SHA1: st, SHA2: {**st, "config.json": b"{}"}},
                        {"main": SHA2, "v1.0": SHA1, "dev": SHA1}))
    h.add_repo(FakeRepo("org/old", {SHA1: {"config.json": b"{}", "pytorch_model.bin": blob(400, "n")}},
                        {"main": SHA1}))
    h.add_repo(FakeRepo("org/gated", {SHA1: {"m-Q4_K_M.gguf": blob(300, "o")}}, {"main": SHA1}, gated=True,
                        tokens={"hf_good"}))
    h.add_repo(FakeRepo("org/private", {SHA1: {"m-Q4_K_M.gguf": blob(300, "p")}}, {"main": SHA1}, private=True,
                        tokens={"hf_good"}))
    index = json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                       "b": "model-00002-of-00002.safetensors"}}).encode()
    h.add_repo(FakeRepo("org/mistral", {SHA1: {  # the original weights beside the sharded ones, at the top
        "config.json": b"{}", "consolidated.safetensors": blob(3000, "r"), "params.json": b"{}",
        "model-00001-of-00002.safetensors": blob(1000, "s"), "model-00002-of-00002.safetensors": blob(1000, "t"),
        "model.safetensors.index.json": index, "tokenizer.json": b"{}"}}, {"main": SHA1}))
    h.add_repo(FakeRepo("org/docs-only", {SHA1: {"README.md": b"# no weights", "notes.txt": b"x"}},
                        {"main": SHA1}))
    h.add_repo(FakeRepo("mirror/chat-GGUF", {SHA1: {"chat-Q4_K_M.gguf": blob(3000, "q"),
                                                   "config.json": b"{}"}}, {"main": SHA1}, sizes_in_listing=False))
    h.start()
    yield h
    h.stop()


def resolve(hub, repo: str, token: str | None = None, **model):
    return HubResolver(timeout=5).resolve(ModelSource(repo=repo, **model), hub.url, token)


def paths(r) -> list[str]:
    return [f.path for f in r.files]


def fails(hub, reason: str, repo: str, token: str | None = None, **model) -> ResolveError:
    with pytest.raises(ResolveError) as e:
        resolve(hub, repo, token, **model)
    assert e.value.reason == reason, e.value
    return e.value


def test_gguf_default_is_q4_k_m_then_q8_0_and_never_mmproj_or_imatrix(hub):
    r = resolve(hub, "org/chat-GGUF")
    assert (r.format, r.engine, r.model_file, r.quantization) == ("gguf", "llamacpp", "chat-Q4_K_M.gguf", "Q4_K_M")
    assert paths(r) == ["chat-Q4_K_M.gguf"] and r.sha == SHA1 and r.total_bytes == 3000
    assert r.files[0].sha256 == hashlib.sha256(blob(3000, "a")).hexdigest()
    r = resolve(hub, "org/vision-GGUF")  # no Q4_K_M or Q8_0: the first GGUF that is a model
    assert r.model_file == "model-Q5_K_S.gguf"


def test_gguf_tag_is_case_insensitive_and_needs_a_boundary(hub):
    assert resolve(hub, "org/chat-GGUF", quantization="q8_0").model_file == "chat-Q8_0.gguf"
    assert resolve(hub, "org/chat-GGUF", quantization="IQ4_XS").model_file == "chat-IQ4_XS.gguf"
    assert choose_gguf(["m-IQ4_XS.gguf"], "Q4_XS") is None  # Q4_XS is not IQ4_XS
    assert choose_gguf(["m-Q4_K_M.gguf"], "Q4_K") is None  # Q4_K is not Q4_K_M


def test_gguf_explicit_file_name_and_split_shards(hub):
    assert resolve(hub, "org/chat-GGUF", quantization="chat-Q2_K.gguf").model_file == "chat-Q2_K.gguf"
    r = resolve(hub, "org/chat-GGUF", quantization="Q6_K")
    assert paths(r) == ["big/chat-Q6_K-00001-of-00002.gguf", "big/chat-Q6_K-00002-of-00002.gguf"]
    assert r.model_file == "big/chat-Q6_K-00001-of-00002.gguf" and r.total_bytes == 5500


def test_absent_quantization_lists_what_the_repo_has_with_sizes(hub):
    e = fails(hub, "QuantizationNotFound", "org/chat-GGUF", quantization="Q3_K_L")
    assert "'Q3_K_L'" in e.message and "Q4_K_M (2.9 KiB)" in e.message and "Q6_K (5.4 KiB)" in e.message
    assert "mmproj" not in e.message


def test_safetensors_picks_weights_config_and_tokenizer_and_reads_the_architecture(hub):
    r = resolve(hub, "org/llama", revision="v1.0")
    assert (r.format, r.engine, r.sha) == ("safetensors", "tgi", SHA1)
    assert paths(r) == ["config.json", "generation_config.json", "model-00001-of-00002.safetensors",
                        "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json",
                        "tokenizer_config.json"]
    assert r.total_bytes == sum(f.size for f in r.files) and r.files[2].sha256
    # Files kept in git (not LFS) have no sha256 but a git blob id, which verifies them too.
    config = next(f for f in r.files if f.path == "config.json")
    assert config.sha256 is None and config.git_sha1 == git_blob_sha1(hub.repos["org/llama"].commits[SHA1]
                                                                     ["config.json"])
    assert r.files[2].git_sha1 is None  # an LFS file's blob id names its pointer, not its bytes
    assert (r.architecture, r.context_length) == ("LlamaForCausalLM", 8192)
    assert resolve(hub, "org/old").files[-1].path == "pytorch_model.bin"  # no safetensors: .bin


def test_user_patterns_add_and_remove_files(hub):
    r = resolve(hub, "org/llama", files=["*.md"], exclude=["tokenizer*", "generation_config.json"])
    assert "README.md" in paths(r) and not any(p.startswith(("tokenizer", "generation")) for p in paths(r))
    fails(hub, "NoServableFiles", "org/chat-GGUF", exclude=["*.gguf"])


def test_revisions_resolve_to_commits(hub):
    assert resolve(hub, "org/llama").sha == SHA2  # main
    assert resolve(hub, "org/llama", revision="dev").sha == SHA1  # a branch
    assert resolve(hub, "org/llama", revision=SHA1).sha == SHA1  # a commit
    e = fails(hub, "RevisionNotFound", "org/llama", revision="nope")
    assert "'nope'" in e.message


def test_failures_say_what_to_do(hub):
    assert "check spec.model.repo" in fails(hub, "RepoNotFound", "org/absent").message
    assert "set spec.model.tokenSecretRef" in fails(hub, "RepoNotFound", "org/private").message
    assert resolve(hub, "org/private", token="hf_good").model_file == "m-Q4_K_M.gguf"
    assert "kubectl create secret generic" in fails(hub, "GatedRepo", "org/gated").message
    assert "request access" in fails(hub, "Unauthorized", "org/gated", token="hf_other").message
    assert resolve(hub, "org/gated", token="hf_good").files[0].size == 300
    assert "no GGUF, safetensors or PyTorch weights" in fails(hub, "NoServableFiles", "org/docs-only").message


def test_token_never_appears_in_messages(hub):
    for repo in ("org/gated", "org/private", "org/absent"):
        with pytest.raises(ResolveError) as e:
            resolve(hub, repo, token="hf_secret_value_123")
        assert "hf_secret_value_123" not in str(e.value)


def test_a_mirror_without_sizes_in_its_listing_is_asked_per_file(hub):
    r = resolve(hub, "mirror/chat-GGUF")
    assert r.files[0].size == 3000 and r.files[0].sha256 == hashlib.sha256(blob(3000, "q")).hexdigest()
    assert any(m == "HEAD" and p.endswith("chat-Q4_K_M.gguf") for m, p in hub.requests)
    config = next(f for f in resolve(hub, "mirror/chat-GGUF", files=["config.json"]).files
                  if f.path == "config.json")  # kept in git: its ETag is the git blob id
    assert config.git_sha1 == git_blob_sha1(b"{}") and config.sha256 is None


def test_an_unreachable_hub_is_temporary():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    with pytest.raises(ResolveError) as e:
        HubResolver(timeout=2).resolve(ModelSource(repo="org/x"), f"http://127.0.0.1:{port}", None)
    assert e.value.reason == "HubUnreachable" and e.value.transient and "mirror" in e.value.message


def test_safetensors_takes_the_shards_the_index_names_not_consolidated_copies(hub):
    r = resolve(hub, "org/mistral")
    assert paths(r) == ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                        "model.safetensors.index.json", "tokenizer.json"]


def test_a_repo_name_the_hub_refuses_is_a_clear_permanent_error(hub):
    e = fails(hub, "InvalidRepo", "a--b/c")
    assert not e.transient and "fix spec.model.repo" in e.message
