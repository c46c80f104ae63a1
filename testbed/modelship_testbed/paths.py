"""Where the test bed keeps things.

- what is built or fetched once and reused (binaries, SmolLM2's GGUF, olah's venv, the Hub
  mirror's repos): ``$MODELSHIP_CACHE`` or ``~/.cache/modelship``, one folder per
  ``<component>-<version>``;
- a running cluster's state (certificates, kubeconfig, etcd data, logs, volumes):
  ``$MODELSHIP_TESTBED_DIR`` or ``~/.local/state/modelship/testbed``.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    env = os.environ.get("MODELSHIP_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modelship"


def state_dir() -> Path:
    env = os.environ.get("MODELSHIP_TESTBED_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "modelship" / "testbed"


def kubeconfig_path() -> Path:
    return state_dir() / "kubeconfig"
