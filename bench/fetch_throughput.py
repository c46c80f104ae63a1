"""Benchmark: `modelship fetch` against curl, the same file from the same mirror, side by side.

    .venv/bin/python bench/fetch_throughput.py [--rounds 5] [--mib 1024]

Sources, on 127.0.0.1: the fake Hub (aiohttp, in a process of its own) serving a 1 GiB file
(`--mib`), and the test bed's olah mirror (when the test bed is up) serving SmolLM2's 98 MB
GGUF. Each round runs, one after the other so all see the same machine: curl (`-L -o FILE`,
written to the page cache), curl then `sync FILE` (on disk when done, as fetch's files
are), and `modelship fetch` (which also hashes, fsyncs and links). Prints MB/s (median of
the rounds) and the ratios; the goal is fetch >= 90% of curl.
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
    from modelship_testbed.binaries import smollm2_gguf

    return smollm2_gguf()


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


def measure(name: str, endpoint: str, sha: str, size: int, rounds: int) -> None:
    url = f"{endpoint}/{REPO}/resolve/{sha}/{FILE}"
    modelship = str(Path(sys.executable).with_name("modelship"))
    runs: dict[str, list[float]] = {"curl": [], "curl+fsync": [], "fetch": []}
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            runs["curl"].append(timed(["curl", "-sSfL", "-o", f"{tmp}/f", url]))
        with tempfile.TemporaryDirectory() as tmp:  # on disk when done, as fetch's files are
            runs["curl+fsync"].append(timed(["sh", "-c", f'curl -sSfL -o "$1" {url} && sync "$1"', "-", f"{tmp}/f"]))
        with tempfile.TemporaryDirectory() as tmp:
            runs["fetch"].append(timed([modelship, "fetch", "--repo", REPO, "--revision", sha, "--endpoint", endpoint,
                                        "--dest", tmp, f"--file={size}::{FILE}"]))
    rate = {k: size / statistics.median(v) / 1e6 for k, v in runs.items()}
    print(f"{name:<9} curl {rate['curl']:7.1f} MB/s   curl+fsync {rate['curl+fsync']:7.1f} MB/s   "
          f"modelship fetch {rate['fetch']:7.1f} MB/s   fetch/curl {rate['fetch'] / rate['curl']:6.1%}   "
          f"fetch/(curl+fsync) {rate['fetch'] / rate['curl+fsync']:6.1%}   "
          f"(median of {rounds}, {size / 1e6:.0f} MB)")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--mib", type=int, default=1024, help="size of the fake Hub's file (a multiple of 64)")
    args = p.parse_args()
    if not shutil.which("curl"):
        raise SystemExit("curl is needed for the comparison")
    sha = "a" * 40
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / FILE  # 1 GiB by default: process start-up (curl's and Python's) weighs little
        with open(big, "wb") as f:
            block = smollm2().read_bytes()[: 64 << 20]
            for _ in range(args.mib // 64):
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
