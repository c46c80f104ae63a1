"""The image, checked as far as it can be without a container engine: the Dockerfile is
conventional (pinned base, multi-stage, non-root, one image), and the wheel it builds
installs into a fresh virtual environment where every entry point the chart's pods and the
operator's Jobs call runs: `--help` for each, and a real start of the router, the operator
and a download."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from ..conftest import REPO, wait_for
from .conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_dockerfile_is_pinned_multi_stage_and_non_root():
    text = (REPO / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(bases) == 2, bases  # a build stage and the runtime stage
    for base in bases:
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), f"{base}: pin the full version and the Debian release"
    assert re.search(r"^USER 65532:65532$", text, re.M)  # the chart's runAsUser
    assert re.search(r'^ENTRYPOINT \["modelship"\]$', text, re.M)  # the chart's args are subcommands


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """The wheel the Dockerfile's build stage makes, installed as its runtime stage does."""
    root = tmp_path_factory.mktemp("image")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(root / "wheels"),
                    str(REPO)], check=True, timeout=300)
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    wheels = [str(w) for w in (root / "wheels").glob("*.whl")]
    subprocess.run([str(root / "venv" / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", *wheels],
                   check=True, timeout=600)
    return root / "venv"


def run(venv: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(venv), **kw.pop("env", {})}
    return subprocess.run([str(venv / "bin" / "modelship"), *args], capture_output=True, text=True, timeout=120,
                          env=env, **kw)


def test_every_entry_point_of_the_chart_and_the_jobs_answers_help(venv):
    chart = (REPO / "charts" / "modelship" / "templates")
    assert "args: [operator]" in (chart / "operator.yaml").read_text()
    assert "- router" in (chart / "router.yaml").read_text()
    for command in ("operator", "router", "fetch", "collect"):  # the chart's two, the Jobs' two
        out = run(venv, command, "--help")
        assert out.returncode == 0 and "Usage: modelship " + command in out.stdout, out.stderr
    # The product alone: no test bed in the image.
    assert run(venv, "testbed", "--help").returncode != 0
    assert not list((venv / "lib").glob("python*/site-packages/modelship_testbed"))


def test_the_router_and_a_download_really_start_from_the_wheel(venv, tmp_path, fake_hub):
    port = free_port()
    models = tmp_path / "models.yaml"
    models.write_text(yaml.safe_dump({"models": [{"name": "m", "endpoints": ["http://127.0.0.1:9"]}]}))
    proc = subprocess.Popen([str(venv / "bin" / "modelship"), "router", "--host", "127.0.0.1", "--port", str(port),
                             "--static", str(models)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env={"PATH": f"{venv / 'bin'}:/usr/bin:/bin"})
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200, 30,
                 "the wheel's router to answer /health")
        assert "m" in {m["id"] for m in httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()["data"]}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=45) in (0, -signal.SIGTERM)  # drained, then the signal's own exit
    from modelship_testbed.hub_fake import FakeRepo, sha256

    repo, sha, data = "image-test/tiny-GGUF", "7" * 40, b"GGUF weights from the wheel"
    fake_hub.add_repo(FakeRepo(repo, {sha: {"m-Q4_K_M.gguf": data}}, {"main": sha}))
    out = run(venv, "fetch", "--repo", repo, "--revision", sha, "--endpoint", fake_hub.url, "--dest",
              str(tmp_path / "volume"), "--file", f"{len(data)}:{sha256(data)}:m-Q4_K_M.gguf")
    assert out.returncode == 0, out.stderr[-2000:]
    got = tmp_path / "volume" / f"models--{repo.replace('/', '--')}" / "snapshots" / sha / "m-Q4_K_M.gguf"
    assert got.read_bytes() == data


def test_the_operator_really_starts_from_the_wheel(venv, cluster, crd_installed, namespace, tmp_path):
    health = free_port()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"healthPort": health, "metricsPort": 0,
                                                          "bindHost": "127.0.0.1", "namespaces": [namespace]}))
    log = tmp_path / "operator.log"
    with open(log, "w") as out:  # (the child has its own copy of the descriptor)
        proc = subprocess.Popen([str(venv / "bin" / "modelship"), "operator"], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                env={"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "KUBECONFIG": cluster.kubeconfig,
                                     "MODELSHIP_CONFIG": str(tmp_path / "config.yaml"), "HOME": str(tmp_path)})
    try:
        # Kopf's start-up handler ran (the CRD found, the controller made), and it answers.
        wait_for(lambda: "modelship operator started" in log.read_text(), 60, "the wheel's operator to start",
                 log.read_text)
        assert httpx.get(f"http://127.0.0.1:{health}/healthz", timeout=2).json()["state"] == "leading"
        assert proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
