"""`modelship bench NAME`: how fast the model NAME answers through the router, at one or more
levels of concurrency. What is measured and how is in `bench_run`; this module is the command,
its table and its JSON (`docs/bench.schema.json`, schema `modelship.bench/v1`)."""

from __future__ import annotations

import json
from typing import Any

import click

from .common import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_USAGE, UserError, console, err_console, user_errors
from .reach import auth_headers, router, router_options

SCHEMA = "modelship.bench/v1"
MAX_REQUESTS, MAX_DURATION_S, MAX_CONCURRENCY = 100_000, 3600.0, 1024


def levels(text: str) -> list[int]:
    try:
        found = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        found = []
    if not found or any(c < 1 or c > MAX_CONCURRENCY for c in found):
        raise UserError(f"--concurrency takes levels from 1 to {MAX_CONCURRENCY} separated by commas "
                        f"(like 1,4,16), not {text!r}", EXIT_USAGE)
    return found


def client_info() -> dict[str, Any]:
    """The machine that sent the requests (its speed bounds what a bench can show)."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    cores, memory = memory_and_cores()
    return {"cpu_model": cpu, "cores": cores, "memory_total_bytes": memory, "python": platform.python_version(),
            "platform": platform.platform()}


def memory_and_cores() -> tuple[int, int]:
    """psutil where it is installed (it is not a dependency), else what POSIX says."""
    import os

    try:
        import psutil

        return psutil.cpu_count(logical=True) or 1, psutil.virtual_memory().total
    except ImportError:
        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            memory = 0
        return os.cpu_count() or 1, memory


def run_levels(plan: Any, concurrency: list[int], requests: int | None, duration: float | None) -> list[dict]:
    import asyncio

    from .bench_run import level, summary

    err = err_console()
    runs = []
    for c in concurrency:
        if err.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(TextColumn(f"concurrency {c}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=err, transient=True) as progress:
                task = progress.add_task("", total=requests)
                samples, wall = asyncio.run(level(plan, c, requests, duration, lambda: progress.advance(task)))
        else:
            samples, wall = asyncio.run(level(plan, c, requests, duration))
        runs.append(summary(c, samples, wall))
    return runs


def report(configuration: dict, runs: list[dict]) -> dict[str, Any]:
    from .bench_run import averages

    return {"schema": SCHEMA, "configuration": configuration, "runs": runs, "averages": averages(runs),
            "client": client_info()}


def table(result: dict[str, Any]) -> None:
    from rich.table import Table

    cfg = result["configuration"]
    t = Table(title=f"{cfg['model']} via {cfg['api']} ({cfg['prompt_tokens']} prompt tokens, "
                    f"at most {cfg['max_tokens']} generated)")
    for name in ("conc.", "req.", "err.", "prompt\ntok/s", "gen.\ntok/s", "TTFT ms\np50/p90/p99",
                 "latency ms\np50/p90/p99"):
        t.add_column(name, justify="right", no_wrap=True)

    def three(p: dict) -> str:
        return "/".join("-" if p[k] is None else f"{p[k]:.0f}" for k in ("p50", "p90", "p99"))

    for r in result["runs"]:
        t.add_row(str(r["concurrency"]), str(r["requests"]), str(r["errors"]), f"{r['prompt_tokens_per_s']:.1f}",
                  f"{r['generated_tokens_per_s']:.1f}", three(r["ttft_ms"]), three(r["latency_ms"]))
    con = console()
    con.print(t)
    for r in result["runs"]:
        for example in r["error_examples"]:
            con.print(f"concurrency {r['concurrency']}: {example}", style="red", highlight=False, markup=False)


EXAMPLES = """
\b
Examples:
  modelship bench smollm2
  modelship bench smollm2 --concurrency 1,4,16 --requests 32 --max-tokens 128
  modelship bench smollm2 --duration 60 -o json > smollm2.json
  modelship bench mistral --api tgi --prompt-tokens 512
"""


@click.command(epilog=EXAMPLES)
@click.argument("name")
@click.option("--concurrency", default="1,4", show_default=True, help="Levels of concurrency, comma-separated.")
@click.option("--requests", type=click.IntRange(1, MAX_REQUESTS), default=None,
              help="Requests per level (default 16 unless --duration).")
@click.option("--duration", type=click.FloatRange(1, MAX_DURATION_S), default=None,
              help="Seconds per level instead of a count.")
@click.option("--prompt-tokens", type=click.IntRange(8, 100_000), default=128, show_default=True,
              help="About how many tokens each prompt has.")
@click.option("--max-tokens", type=click.IntRange(1, 100_000), default=64, show_default=True,
              help="Most tokens generated per request.")
@click.option("--api", type=click.Choice(["openai", "tgi"]), default="openai", show_default=True,
              help="openai: /v1/chat/completions streamed; tgi: TGI's /models/NAME/generate_stream.")
@click.option("--timeout", type=click.FloatRange(1, 3600), default=120.0, show_default=True,
              help="Seconds one request may take.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@router_options
@user_errors
def bench(name, concurrency, requests, duration, prompt_tokens, max_tokens, api, timeout, output, router_url,
          router_namespace, api_key, kubeconfig, context, namespace):
    """Measure the model NAME through the router: tokens per second, time to first token, latency."""
    from .bench_run import Plan

    found = levels(concurrency)
    if requests is None and duration is None:
        requests = 16
    with router(router_url, router_namespace, kubeconfig, context, namespace) as url:
        plan = Plan(url, name, api, prompt_tokens, max_tokens, auth_headers(api_key), timeout)
        runs = run_levels(plan, found, requests, duration)
    configuration = {"model": name, "api": api, "concurrency": found, "requests_per_level": requests,
                     "duration_s_per_level": duration, "prompt_tokens": prompt_tokens, "max_tokens": max_tokens,
                     "timeout_s": timeout, "router": "given" if router_url else "found"}
    result = report(configuration, runs)
    if output == "json":
        click.echo(json.dumps(result, indent=2))
    else:
        table(result)
    if all(r["errors"] == r["requests"] for r in runs):
        examples = [e for r in runs for e in r["error_examples"]]
        first = examples[0] if examples else "no request was sent"
        # An unknown model is "not found", as `chat` says it (exit 3); anything else failed (1).
        not_found = bool(examples) and all(e.startswith("not found (404)") for e in examples)
        raise UserError(f"every request failed ({first})", EXIT_NOT_FOUND if not_found else EXIT_FAILED)


COMMANDS = [bench]
