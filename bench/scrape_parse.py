"""Benchmark: reading an engine's load from its metrics page (router/scrape.py `parse`), per
page, against the line-by-line reader it replaced (kept here as the baseline). The pages are
tests/unit/engine_pages.py's: vLLM's (about 240 lines, histograms mostly), SGLang's, and a
TGI-sized page; each parsed as the scraper does, with the target's engine named.

    .venv/bin/python bench/scrape_parse.py [--rounds 5] [--number 2000]
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))

from engine_pages import sglang_page, vllm_page  # noqa: E402
from modelship.router.scrape import KV_USAGE, RUNNING, WAITING, parse  # noqa: E402


def line_by_line(text: str, engine: str = "") -> tuple | None:
    """The reader before: every line split at its first blank (a label value with a blank, or a
    timestamp, defeated it), for the same names."""
    running = waiting = None
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name, _, rest = line.partition(" ")
        name = name.split("{", 1)[0]
        if name in RUNNING or name in WAITING or name in KV_USAGE:
            try:
                value = float(rest.split()[0])
            except (ValueError, IndexError):
                continue
            if name in RUNNING:
                running = (running or 0.0) + value
            elif name in WAITING:
                waiting = (waiting or 0.0) + value
    return None if running is None and waiting is None else (running or 0.0, waiting or 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--number", type=int, default=2000)
    args = ap.parse_args()
    tgi = "".join(f'tgi_request_duration_bucket{{le="{i}"}} 1\n' for i in range(150)) + \
        "tgi_batch_current_size 5\ntgi_queue_size 1\n"
    pages = {"vllm": vllm_page(3, 2, 0.4), "sglang": sglang_page(3, 2, 0.4), "tgi": tgi}
    print(f"{'page':<8} {'lines':>6} {'line by line':>14} {'parse':>10}  (µs per page, best of {args.rounds})")
    for engine, page in pages.items():
        best = [min(timeit.repeat(lambda: f(page, engine), number=args.number, repeat=args.rounds)) / args.number
                for f in (line_by_line, parse)]
        print(f"{engine:<8} {len(page.splitlines()):>6} {best[0] * 1e6:>14.1f} {best[1] * 1e6:>10.1f}")


if __name__ == "__main__":
    main()
