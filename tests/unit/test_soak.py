"""bench/soak.py: its verdict on figures (pure), and a short soak of the real router process
(the ten-minute one is a documented command in bench/README.md, outside the test command)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def soak():
    if str(BENCH) not in sys.path:  # its helpers (bench/loopback.py), as when it runs as a script
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("soak", BENCH / "soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


MB = 2 ** 20


def test_verdict_names_errors_rss_growth_and_fd_growth():
    s = soak()
    flat = s.Tally(requests=10, streamed=5, samples=[(0, 60 * MB, 30), (5, 61 * MB, 40), (10, 61 * MB, 41)])
    figures, broken = s.verdict(flat, max_rss_mb=20, max_fds=10)
    assert broken == []
    assert figures["rss_mb"] == [60.0, 61.0, 61.0] and figures["fds"] == [30, 40, 41] and figures["errors"] == 0
    bad = s.Tally(requests=10, errors=["m stream=True: HTTP 502 x"],
                  samples=[(0, 60 * MB, 30), (5, 70 * MB, 40), (10, 85 * MB, 60)])
    _, broken = s.verdict(bad, max_rss_mb=20, max_fds=10)
    assert broken == ["1 requests failed, the first: m stream=True: HTTP 502 x",
                      "RSS grew 25.0 MB from start to end (bound 20 MB)",
                      "open file descriptors grew from 40 (middle) to 60 (bound +10)"]


@pytest.mark.slow
def test_short_soak_of_the_router_has_no_errors_and_flat_memory_and_fds():
    """30 s (8 s of it warm-up) at 6 clients over three models: zero errors, RSS within 10 MB
    of the start, FDs within 10 of the middle."""
    proc = subprocess.run([sys.executable, str(BENCH / "soak.py"), "--seconds", "30", "--warmup", "8",
                           "--sample-every", "2", "--max-rss-growth-mb", "10"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    print(figures)
    assert figures["errors"] == 0 and figures["requests"] > 300 and figures["streamed"] > 150
