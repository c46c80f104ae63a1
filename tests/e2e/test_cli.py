"""The commands for people (docs/cli.md) on the test bed, as a user runs them: `show` through the
real olah mirror (and `search` told plainly that a mirror cannot search); `deploy --dry-run`
accepted by the API server; `deploy --wait` to Ready with `status` showing the download's
progress meanwhile; `chat` driven through a pseudo-terminal against the real SmolLM2 through a
router; `bench`, its token counts against llama-server's own counters, its JSON against the
documented schema."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ..conftest import REPO, wait_for
from ..integration.conftest import (POOLS, SMOLLM2_FILE, SMOLLM2_SHA, HelmOperator,  # noqa: F401
                                    crd_installed, kwok_pools)
from ..integration.test_autoscaling import Router

pytestmark = [pytest.mark.integration, pytest.mark.localnode, pytest.mark.slow]

MODELSHIP = str(Path(sys.executable).with_name("modelship"))
MODEL_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"


def ms(cluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([MODELSHIP, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "KUBECONFIG": cluster.kubeconfig, "NO_COLOR": "1", "COLUMNS": "200"})


def mirror_url() -> str:
    from modelship_testbed.config import TestbedConfig

    return f"http://127.0.0.1:{TestbedConfig.load().ports.hub_mirror}"


def test_show_through_the_real_mirror_and_search_says_a_mirror_cannot(cluster, local_node):
    from modelship_testbed.binaries import smollm2_gguf

    out = ms(cluster, "show", MODEL_REPO, "--endpoint", mirror_url(), "-o", "json")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    text = json.dumps(shown)
    assert re.search(r'"[0-9a-f]{40}"', text), text  # the commit sha the operator would pin
    assert "llamacpp" in text and "Q4_1" in text and SMOLLM2_FILE in text
    assert str(smollm2_gguf().stat().st_size) in text  # the file's real size
    missing = ms(cluster, "show", "nobody/nothing-GGUF", "--endpoint", mirror_url())
    assert missing.returncode == 3 and missing.stderr.startswith("Error: ") and "Traceback" not in missing.stderr
    search = ms(cluster, "search", "smollm2", "--endpoint", mirror_url())
    assert search.returncode == 1 and "modelship show" in search.stderr and "Traceback" not in search.stderr, \
        search.stderr


def test_deploy_dry_run_is_accepted_by_the_api_server(cluster, crd_installed, namespace):
    out = ms(cluster, "deploy", f"{MODEL_REPO}@main", "--quant", "Q4_K_M", "--pool", "cpu", "--min-replicas", "0",
             "--max-replicas", "2", "--alias", "tiny-chat", "--dry-run", "-o", "yaml", "-n", namespace)
    assert out.returncode == 0, out.stderr
    applied = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=out.stdout)
    assert "(server dry run)" in applied
    assert not cluster.kubectl("get", "md", "-n", namespace, "-o", "name")  # nothing was made


def test_search_says_whether_the_default_pick_fits_the_operators_pools(cluster, namespace, crd_installed,
                                                                      kwok_pools, tmp_path):
    """`search --pool`: the pools of the operator's own settings (its ConfigMap, as the chart makes
    it), their nodes' GPU memory (the kwok GPU node's nvidia.com/gpu.memory) or memory."""
    from modelship_testbed.hub_fake import FakeHub, FakeRepo

    h = FakeHub()
    big = b"\0" * (48 << 20)  # 48 MiB of "weights", named as the Hub names a 7B's quantizations
    h.add_repo(FakeRepo("org/Small-GGUF", {"1" * 40: {"small.Q4_K_M.gguf": big, "small.Q8_0.gguf": big + big}},
                        {"main": "1" * 40}))
    h.start()
    op = HelmOperator(cluster, namespace, tmp_path, h.url)
    try:
        op.start(pools=kwok_pools)
        # The gpu pool: an H100's 81559 MiB x its maxGpus (8); the cpu pool: its kwok node's 128Gi.
        for pool, capacity in (("gpu", 81559 * 2**20 * 8), ("cpu", 128 * 2**30)):
            out = ms(cluster, "search", "small", "--endpoint", h.url, "--pool", pool, "--operator-namespace",
                     namespace, "-o", "json")
            assert out.returncode == 0, out.stderr
            row = json.loads(out.stdout)[0]
            assert row["repo"] == "org/Small-GGUF" and "Q4_K_M" in json.dumps(row), row
            assert row["fits"]["pool"] == pool and row["fits"]["capacity"] == capacity, row["fits"]
            assert row["fits"]["fits"] is True and 48 << 20 < row["fits"]["needed"] < 96 << 20, row["fits"]
        unknown = ms(cluster, "search", "small", "--endpoint", h.url, "--pool", "nope", "--operator-namespace",
                     namespace)
        assert unknown.returncode == 1 and "nope" in unknown.stderr and "Traceback" not in unknown.stderr
    finally:
        op.stop()
        h.stop()


@pytest.fixture
def hub():
    """SmolLM2 at the sha the operator's catalog pins it to, slowed so that the download lasts."""
    from modelship_testbed.binaries import smollm2_gguf
    from modelship_testbed.hub_fake import FakeHub, FakeRepo

    h = FakeHub()
    h.add_repo(FakeRepo(MODEL_REPO, {SMOLLM2_SHA: {"README.md": b"# SmolLM2", SMOLLM2_FILE: smollm2_gguf().read_bytes()}},
                        {"main": SMOLLM2_SHA}))
    h.chunk_delay = 0.004  # ~6 s for 98 MB
    h.start()
    yield h
    h.stop()


def llama_counters(url: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    value = {m.group(1): float(m.group(2)) for m in re.finditer(r"^llamacpp:(\w+) ([0-9.e+]+)$", text, re.M)}
    return value["prompt_tokens_total"], value["tokens_predicted_total"]


def test_deploy_wait_status_chat_and_bench(cluster, namespace, crd_installed, local_node, hub, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    jsonschema = pytest.importorskip("jsonschema")
    op = HelmOperator(cluster, namespace, tmp_path, hub.url).start(pools=POOLS)
    router = None
    try:
        deploy = subprocess.Popen(
            [MODELSHIP, "deploy", MODEL_REPO, "--quant", "Q4_1", "--pool", "local", "--name", "smollm2", "-n",
             namespace, "--set", "serving.chatTemplate=chatml", "--set", "serving.contextLength=2048", "--wait",
             "--timeout", "300"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "KUBECONFIG": cluster.kubeconfig, "NO_COLOR": "1"})
        seen: list[str] = []

        def progress() -> bool:  # `status` while the weights download: bytes, and the time left
            out = ms(cluster, "status", "smollm2", "-n", namespace).stdout
            seen.append(out)
            return "Downloading" in out and re.search(r"\d+(\.\d+)? ?[MG]i?B", out) and "left" in out.lower()

        wait_for(progress, 120, "`modelship status` to show the download's progress",
                 lambda: "\n---\n".join(seen[-2:]), interval=0.5)
        said, _ = deploy.communicate(timeout=300)
        assert deploy.returncode == 0, said
        listed = ms(cluster, "ls", "-n", namespace)
        assert listed.returncode == 0 and "smollm2" in listed.stdout and "Ready" in listed.stdout, listed.stdout

        router = Router(cluster, namespace)
        chat = pexpect.spawn(MODELSHIP, ["chat", "smollm2", "--router-url", router.url, "--temperature", "0",
                                         "--max-tokens", "48"], env={**os.environ, "NO_COLOR": "1"},
                             encoding="utf-8", timeout=120)
        chat.sendline("What is the capital of France?")
        chat.expect(re.compile("paris", re.I))
        chat.sendline("/clear")
        chat.sendline("/exit")
        chat.expect(pexpect.EOF)
        chat.close()
        assert chat.exitstatus == 0, chat.before

        pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", "modelship.io/deployment=smollm2,"
                                          "app.kubernetes.io/component=server", "-o", "json"))["items"]
        engine = f"http://{pods[0]['status']['podIP']}:8080"
        before = llama_counters(engine)
        bench = ms(cluster, "bench", "smollm2", "--router-url", router.url, "--concurrency", "1,2", "--requests",
                   "4", "--max-tokens", "16", "--prompt-tokens", "32", "-o", "json", timeout=300)
        assert bench.returncode == 0, bench.stderr
        after = llama_counters(engine)
        report = json.loads(bench.stdout)
        jsonschema.validate(report, json.loads((REPO / "docs" / "bench.schema.json").read_text()))
        assert [r["concurrency"] for r in report["runs"]] == [1, 2]
        generated = sum(r["generated_tokens"] for r in report["runs"])
        prompt = sum(r["prompt_tokens"] for r in report["runs"])
        # llama-server counts what it generated exactly; of the prompts, only what it evaluated
        # (a prefix it had cached, the chat template's opening, is not counted again).
        assert after[1] - before[1] == generated, (before, after, report["runs"])
        assert 0 < after[0] - before[0] <= prompt, (before, after, report["runs"])
        print(f"bench: {generated} tokens generated (llama-server: {after[1] - before[1]:.0f}), {prompt} prompt "
              f"tokens (llama-server evaluated {after[0] - before[0]:.0f}); "
              + "; ".join(f"c={r['concurrency']}: {r['generated_tokens_per_s']:.1f} tok/s, TTFT p50 "
                          f"{r['ttft_ms']['p50']:.0f} ms" for r in report["runs"]))
        gone = ms(cluster, "delete", "smollm2", "-n", namespace, "--wait")
        assert gone.returncode == 0, gone.stderr
        assert ms(cluster, "status", "smollm2", "-n", namespace).returncode == 3
    finally:
        if router:
            router.close()
        op.stop()
