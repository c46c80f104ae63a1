"""`modelship search` and `modelship show` against the fake Hub (its `/api/models` search and
model info), with the operator's own resolver rules; the fit computation as a pure function."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from modelship.cli import main
from modelship.reconcile.resolve import choose_gguf, quant_tag
from modelship.settings import PoolProfile
from modelship.user.fits import fits, kv_allowance, needed_bytes, parse_size, pool_capacity
from modelship_testbed.hub_fake import FakeHub, FakeRepo

SHA = "1" * 40
KB = 1000


def blob(n: int, seed: str) -> bytes:
    return (seed.encode() * (n // len(seed) + 1))[:n]


CHAT = {"README.md": b"# card", "chat-Q4_K_M.gguf": blob(3 * KB, "a"), "chat-Q8_0.gguf": blob(5 * KB, "b"),
        "chat-Q2_K.gguf": blob(1 * KB, "c"), "mmproj-chat-f16.gguf": blob(900, "e"),
        "big/chat-Q6_K-00001-of-00002.gguf": blob(4 * KB, "g"), "big/chat-Q6_K-00002-of-00002.gguf": blob(1500, "h")}
ST = {"config.json": json.dumps({"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 8192}).encode(),
      "tokenizer.json": b"{}", "model.safetensors": blob(20 * KB, "k"), "README.md": b"# card"}


@pytest.fixture(scope="module")
def hub():
    h = FakeHub()
    h.add_repo(FakeRepo("org/chat-GGUF", {SHA: CHAT}, {"main": SHA}, downloads=500, likes=3,
                        created="2025-03-01T00:00:00.000Z", modified="2026-02-01T00:00:00.000Z"))
    tiny = {"tiny-Q8_0.gguf": blob(2 * KB, "t"), "tiny-F16.gguf": blob(4 * KB, "u")}
    h.add_repo(FakeRepo("org/tiny-GGUF", {SHA: tiny},
                        {"main": SHA}, downloads=900, likes=1, created="2025-06-01T00:00:00.000Z",
                        modified="2025-07-01T00:00:00.000Z"))
    h.add_repo(FakeRepo("other/chat-llama", {SHA: ST}, {"main": SHA}, downloads=100, likes=50,
                        created="2025-01-01T00:00:00.000Z", modified="2026-03-01T00:00:00.000Z"))
    h.add_repo(FakeRepo("org/gated-chat-GGUF", {SHA: {"g-Q4_K_M.gguf": blob(KB, "o")}}, {"main": SHA}, gated=True,
                        downloads=1000, tokens={"hf_good"}))
    h.start()
    yield h
    h.stop()


def run(*args: str, code: int = 0):
    r = CliRunner(env={"COLUMNS": "160"}).invoke(main, list(args), catch_exceptions=False)
    assert r.exit_code == code, r.output
    return r


def search(hub, *args: str, code: int = 0):
    r = run("search", *args, "--endpoint", hub.url, "-o", "json", code=code)
    return json.loads(r.output) if code == 0 else r


def repos(rows) -> list[str]:
    return [r["repo"] for r in rows]


def test_search_sorts_by_downloads_and_hides_gated_repos(hub):
    assert repos(search(hub)) == ["org/tiny-GGUF", "org/chat-GGUF", "other/chat-llama"]
    assert repos(search(hub, "--include-gated"))[0] == "org/gated-chat-GGUF"


@pytest.mark.parametrize("sort,first", [("likes", "other/chat-llama"), ("modified", "other/chat-llama"),
                                        ("created", "org/tiny-GGUF"), ("downloads", "org/tiny-GGUF")])
def test_sort(hub, sort, first):
    assert repos(search(hub, "--sort", sort))[0] == first


def test_query_author_limit_and_gguf(hub):
    assert repos(search(hub, "chat")) == ["org/chat-GGUF", "other/chat-llama"]
    assert repos(search(hub, "--author", "other")) == ["other/chat-llama"]
    assert repos(search(hub, "--limit", "1")) == ["org/tiny-GGUF"]
    assert repos(search(hub, "--gguf")) == ["org/tiny-GGUF", "org/chat-GGUF"]
    search_qs = [q for kind, q in hub.requests if kind == "search"]
    assert "filter=gguf" in search_qs[-1] and "gated=False" in search_qs[-1]


def test_quantizations_sizes_and_the_resolvers_default_pick(hub):
    row = {r["repo"]: r for r in search(hub)}["org/chat-GGUF"]
    quants = {q["quantization"]: q for q in row["quantizations"]}
    assert set(quants) == {"Q2_K", "Q4_K_M", "Q8_0", "Q6_K"}  # never mmproj
    assert quants["Q6_K"]["bytes"] == 5500 and len(quants["Q6_K"]["files"]) == 2
    default = [q["quantization"] for q in row["quantizations"] if q["default"]]
    assert default == [quant_tag(choose_gguf(list(CHAT), None)[0])] == ["Q4_K_M"]
    assert row["pick"] == {"files": ["chat-Q4_K_M.gguf"], "bytes": 3000}
    tiny = {r["repo"]: r for r in search(hub)}["org/tiny-GGUF"]
    assert [q["quantization"] for q in tiny["quantizations"] if q["default"]] == ["Q8_0"]
    st = {r["repo"]: r for r in search(hub)}["other/chat-llama"]
    # (the operator's defaultEngine serves safetensors under engine.type auto: not always TGI)
    assert (st["format"], st["engine"], st["quantizations"]) == ("safetensors", "defaultEngine", [])
    assert st["pick"]["bytes"] == 20 * KB + len(ST["config.json"]) + 2


def test_sizes_from_model_info_when_the_listing_has_none(hub):
    hub.search_sizes = False
    try:
        before = sum(1 for kind, _ in hub.requests if kind == "info")
        rows = search(hub, "--gguf", "--limit", "1")
        assert rows[0]["pick"]["bytes"] == 2000
        assert sum(1 for kind, _ in hub.requests if kind == "info") - before == 1  # only for the repo shown
    finally:
        hub.search_sizes = True


def test_quant_and_max_size_filters(hub):
    assert repos(search(hub, "--quant", "Q2_K")) == ["org/chat-GGUF"]
    rows = search(hub, "--quant", "Q8_0")
    assert repos(rows) == ["org/tiny-GGUF", "org/chat-GGUF"] and rows[1]["pick"]["bytes"] == 5000
    assert repos(search(hub, "--max-size", "2.5KB")) == ["org/tiny-GGUF"]
    assert repos(search(hub, "--max-size", "4KiB")) == ["org/tiny-GGUF", "org/chat-GGUF"]
    assert repos(search(hub, "--quant", "Q8_0", "--max-size", "3KB")) == ["org/tiny-GGUF"]


def test_json_shape(hub):
    row = search(hub, "--limit", "1")[0]
    assert set(row) == {"repo", "downloads", "likes", "lastModified", "createdAt", "gated", "format", "engine",
                        "pick", "quantizations"}
    assert row["downloads"] == 900 and row["gated"] is False and row["lastModified"].startswith("2025-07-01")


def test_table_marks_the_default_pick(hub):
    out = run("search", "chat", "--endpoint", hub.url).output
    assert "org/chat-GGUF" in out and "* Q4_K_M" in out and "  Q8_0" in out


def test_a_mirror_that_cannot_search_says_so_in_one_line(hub):
    hub.searchable = False
    try:
        r = search(hub, "chat", code=1)
    finally:
        hub.searchable = True
    assert "cannot search models" in r.output and "modelship show REPO" in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_help_has_examples():
    for cmd in ("search", "show"):
        out = run(cmd, "--help").output
        assert "Examples:" in out and f"modelship {cmd} " in out
    assert "weights x 1.2" in run("search", "--help").output


# --- show ------------------------------------------------------------------------------------

def show(hub, *args: str, code: int = 0):
    r = run("show", *args, "--endpoint", hub.url, *(["-o", "json"] if code == 0 else []), code=code)
    return json.loads(r.output) if code == 0 else r


def test_show_a_gguf_repo(hub):
    d = show(hub, "org/chat-GGUF")
    assert (d["sha"], d["engine"], d["format"], d["quantization"]) == (SHA, "llamacpp", "gguf", "Q4_K_M")
    assert d["files"] == [{"path": "chat-Q4_K_M.gguf", "bytes": 3000}] and d["totalBytes"] == 3000
    assert d["volumeSize"] == "2Gi" and d["gated"] is False
    assert [q["quantization"] for q in d["quantizations"] if q["default"]] == ["Q4_K_M"]
    d = show(hub, "org/chat-GGUF@main", "--quant", "Q6_K")
    assert d["modelFile"] == "big/chat-Q6_K-00001-of-00002.gguf" and d["totalBytes"] == 5500


def test_show_a_safetensors_repo(hub):
    d = show(hub, "other/chat-llama")
    assert (d["engine"], d["format"], d["architecture"], d["contextLength"]) == (
        "defaultEngine", "safetensors", "LlamaForCausalLM", 8192)
    assert [f["path"] for f in d["files"]] == ["config.json", "model.safetensors", "tokenizer.json"]
    assert d["quantizations"] == [] and d["totalBytes"] == sum(f["bytes"] for f in d["files"])
    out = run("show", "other/chat-llama", "--endpoint", hub.url).output
    assert SHA in out and "model.safetensors" in out and "2Gi" in out
    assert "the operator's defaultEngine: tgi, vllm or sglang (safetensors)" in out
    assert show(hub, "other/chat-llama", "--engine", "vllm")["engine"] == "vllm"
    assert show(hub, "org/chat-GGUF", "--engine", "auto")["engine"] == "llamacpp"
    r = show(hub, "org/chat-GGUF", "--engine", "sglang", code=1)
    assert r.output.strip().endswith("--engine is sglang, but the resolved files are GGUF, which llama.cpp serves: "
                                     "use --engine llamacpp (or auto), or a safetensors repo")


@pytest.mark.parametrize("args,words", [(["org/missing"], "does not exist"),
                                        (["org/chat-GGUF@nope"], "no branch, tag or commit"),
                                        (["org/chat-GGUF", "--quant", "IQ1_S"], "has no GGUF file")])
def test_show_not_found_is_one_line_and_exit_3(hub, args, words):
    r = show(hub, *args, code=3)
    assert words in r.output and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_show_gated_without_a_token_is_exit_1(hub):
    r = show(hub, "org/gated-chat-GGUF", code=1)
    assert "is gated" in r.output
    assert show(hub, "org/gated-chat-GGUF", "--token", "hf_good")["gated"] is True


# --- fits ------------------------------------------------------------------------------------

def node(labels: dict, allocatable: dict) -> dict:
    return {"metadata": {"labels": labels}, "status": {"allocatable": allocatable}}


def test_needed_bytes_and_kv_allowance():
    assert needed_bytes(1000) == 1200 + 100  # x1.2 + 10% when the shape is unknown
    assert kv_allowance(0, context_length=4096, layers=32, kv_heads=8, head_dim=128) == 2 * 32 * 8 * 128 * 4096 * 2


def test_pool_capacity_gpu_and_cpu():
    gpu = PoolProfile(nodeSelector={"p": "gpu"}, gpuResource="nvidia.com/gpu", maxGpus=4)
    nodes = [node({"nvidia.com/gpu.memory": "24576"}, {"nvidia.com/gpu": "2"}),
             node({"nvidia.com/gpu.memory": "81920"}, {"nvidia.com/gpu": "1"}), node({}, {"memory": "64Gi"})]
    assert pool_capacity(gpu, nodes) == 81920 * 2 ** 20  # 1 x 80 GiB beats 2 x 24 GiB
    assert pool_capacity(gpu, nodes, gpus=1) == 81920 * 2 ** 20
    assert pool_capacity(gpu, nodes[:1], gpus=1) == 24576 * 2 ** 20
    assert pool_capacity(gpu, [node({}, {"memory": "64Gi"})]) is None  # no GPU memory label: unknown
    cpu = PoolProfile(nodeSelector={"p": "cpu"})
    assert pool_capacity(cpu, [node({}, {"memory": "8Gi"}), node({}, {"memory": "16Gi"})]) == 16 * 2 ** 30
    assert pool_capacity(cpu, []) is None


def test_fits_and_sizes():
    assert fits(needed_bytes(8 * 10 ** 9), 16 * 2 ** 30) is True
    assert fits(needed_bytes(14 * 10 ** 9), 16 * 2 ** 30) is False
    assert fits(100, None) is None
    assert parse_size("8GB") == 8 * 10 ** 9 and parse_size("5GiB") == parse_size("5Gi") == 5 * 2 ** 30
    assert parse_size("700m") == 700 * 10 ** 6 and parse_size("1024") == 1024
    with pytest.raises(ValueError):
        parse_size("lots")


class FakeCore:
    """What `cluster_pool` reads of CoreV1Api: the operator's settings ConfigMap and the nodes."""

    def __init__(self, settings: str, nodes: list[dict], down: bool = False):
        from types import SimpleNamespace as NS

        self.cm = NS(data={"settings.yaml": settings}, metadata=NS(namespace="modelship", name="modelship-operator"))
        self.nodes, self.down, self.selectors = nodes, down, []

    def list_config_map_for_all_namespaces(self, label_selector):
        import urllib3

        if self.down:
            raise urllib3.exceptions.MaxRetryError(None, "/api/v1/configmaps")
        assert label_selector == "app.kubernetes.io/component=operator"
        from types import SimpleNamespace as NS

        return NS(items=[self.cm])

    def list_node(self, label_selector, _preload_content):
        from types import SimpleNamespace as NS

        self.selectors.append(label_selector)
        return NS(data=json.dumps({"items": self.nodes}).encode())


@pytest.fixture
def cluster(monkeypatch):
    from types import SimpleNamespace as NS

    from modelship.user import common

    core = FakeCore("pools:\n  small:\n    nodeSelector: {modelship.io/pool: small}\n"
                    "    gpuResource: nvidia.com/gpu\n    maxGpus: 1\n",
                    [node({"nvidia.com/gpu.memory": "0"}, {"nvidia.com/gpu": "1"}),
                     node({"nvidia.com/gpu.memory": "1"}, {"nvidia.com/gpu": "1"})])  # 1 MiB of GPU memory
    monkeypatch.setattr(common.Kube, "connect", classmethod(lambda cls, *a: NS(core=lambda: core)))
    return core


def test_search_fits_a_pool_of_the_operators_settings(hub, cluster):
    rows = {r["repo"]: r for r in search(hub, "--pool", "small")}
    assert cluster.selectors == ["modelship.io/pool=small"]
    chat = rows["org/chat-GGUF"]["fits"]
    assert chat == {"pool": "small", "needed": needed_bytes(3000), "capacity": 2 ** 20, "fits": True}
    assert "FITS small" in run("search", "--pool", "small", "--endpoint", hub.url).output


def test_search_with_an_unknown_pool_or_no_cluster_is_one_line(hub, cluster):
    r = search(hub, "--pool", "huge", code=1)
    assert "no pool 'huge'" in r.output and "small" in r.output and len(r.output.strip().splitlines()) == 1
    cluster.down = True
    r = search(hub, "--pool", "small", code=1)
    assert "cannot reach the cluster" in r.output and len(r.output.strip().splitlines()) == 1


def test_a_repo_with_safetensors_and_gguf_marks_no_default_quantization():
    """The operator serves such a repo's safetensors (TGI) unless a quantization is asked for, so
    no quantization is its default pick."""
    from modelship.reconcile.resolve import HubResolver
    from modelship.user.search import default_format, quantizations

    both = ["config.json", "model.safetensors", "tokenizer.json", "m-Q4_K_M.gguf", "m-Q8_0.gguf"]
    assert default_format(both) == "safetensors" == HubResolver()._select(
        __import__("modelship.api", fromlist=["ModelSource"]).ModelSource(repo="o/m"), both,
        lambda ns: {n: (0, None, None) for n in ns})[0]
    assert not any(q["default"] for q in quantizations(both, {}, default_format(both)))
    gguf_only = both[3:]
    assert [q["quantization"] for q in quantizations(gguf_only, {}, default_format(gguf_only)) if q["default"]] == \
        ["Q4_K_M"]


def test_unexpected_failures_and_markup_stay_one_line(tmp_path):
    """An unreachable cluster (urllib3's errors are not OSErrors) is one line, and a condition
    message with brackets is shown as written."""
    from click.testing import CliRunner

    from modelship.cli import main
    from modelship.user.render import conditions_table

    kubeconfig = tmp_path / "kc"
    kubeconfig.write_text("""apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
""")
    out = CliRunner().invoke(main, ["ls", "--kubeconfig", str(kubeconfig)])
    assert out.exit_code == 1 and "cannot reach the cluster's API server" in out.output, out.output
    assert "Traceback" not in out.output
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(conditions_table({"status": {"conditions": [
        {"type": "Ready", "status": "False", "reason": "X", "message": "path [/models] missing [bold]"}]}}))
    assert "path [/models] missing [bold]" in console.export_text()


def test_show_of_a_gated_repo_without_a_token_names_the_flag(hub):
    from click.testing import CliRunner

    from modelship.cli import main

    out = CliRunner().invoke(main, ["show", "org/gated-chat-GGUF", "--endpoint", hub.url])
    assert out.exit_code == 1 and "--token" in out.output and "Traceback" not in out.output, out.output
