"""What `ls` and `status` show, as pure functions: a ModelDeployment (the dict the API server
returns) in, rows, lines or a rich renderable out. No I/O, so they are tested on recorded objects.

The times are passed in (`now`), so that ages read the same in a test as on a terminal.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from ..clock import parse
from ..units import human_bytes

LS_COLUMNS = ("NAME", "PHASE", "READY", "ENGINE", "QUANT", "REVISION", "MODEL", "AGE")
PHASE_STYLE = {"Ready": "green", "Failed": "red", "Degraded": "yellow", "Downloading": "cyan",
               "Starting": "cyan", "Resolving": "cyan", "Pending": "yellow"}


def dump(obj: Any, fmt: str) -> str:
    """The object as `-o json` or `-o yaml` prints it."""
    if fmt == "json":
        return json.dumps(obj, indent=2)
    import yaml

    return yaml.safe_dump(obj, sort_keys=False).rstrip("\n")


def age(timestamp: str | None, now: dt.datetime) -> str:
    """kubectl's age: `45s`, `12m`, `3h`, `5d`; `-` when unknown."""
    if not timestamp:
        return "-"
    seconds = max(0, int((now - parse(timestamp)).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def duration(seconds: float | None) -> str:
    """`1h 2m`, `3m 20s`, `12s`; `-` when unknown."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 60}m {s % 60}s" if s >= 60 else f"{s}s"


def ls_row(obj: dict, now: dt.datetime, namespaced: bool = False) -> list[str]:
    """One row of `modelship ls` (with the namespace first for `-A`)."""
    meta, spec, status = obj.get("metadata", {}), obj.get("spec", {}), obj.get("status") or {}
    resolved = status.get("resolved") or {}
    desired = spec.get("replicas", 1)
    if status.get("autoscaling"):
        desired = status["autoscaling"].get("desiredReplicas", desired)
    quant = resolved.get("quantization") or (spec.get("model") or {}).get("quantization") \
        or (spec.get("serving") or {}).get("quantize") or "-"
    row = [meta.get("name", "?"), status.get("phase") or "Pending",
           f"{status.get('readyReplicas') or 0}/{desired}",
           resolved.get("engine") or (spec.get("engine") or {}).get("type") or "auto", quant,
           resolved.get("shortSha") or (resolved.get("sha") or "")[:7] or "-",
           (status.get("endpoint") or {}).get("model") or "-", age(meta.get("creationTimestamp"), now)]
    return ([meta.get("namespace", "")] if namespaced else []) + row


def ls_table(items: list[dict], now: dt.datetime, namespaced: bool = False):
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in (("NAMESPACE",) if namespaced else ()) + LS_COLUMNS:
        table.add_column(column, no_wrap=True)
    for obj in items:
        row = ls_row(obj, now, namespaced)
        phase_at = 2 if namespaced else 1
        row[phase_at] = f"[{PHASE_STYLE.get(row[phase_at], 'white')}]{row[phase_at]}[/]"
        table.add_row(*row)
    return table


def failure_message(obj: dict) -> str:
    """Why a Failed ModelDeployment stopped: `Ready`'s message (which `Stalled` repeats)."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    for kind in ("Ready", "Stalled"):
        for c in conditions:
            if c.get("type") == kind and c.get("message") and c.get("status") != ("True" if kind == "Ready" else "False"):
                return f"{c.get('reason', '')}: {c['message']}".lstrip(": ")
    return next((c.get("message") for c in conditions if c.get("status") == "False" and c.get("message")),
                "the operator reports phase Failed")


def curl_example(endpoint: dict) -> str:
    """A request to the OpenAI-compatible API, as a person would paste it."""
    body = json.dumps({"model": endpoint.get("model", ""),
                       "messages": [{"role": "user", "content": "Hello!"}]})
    return f"curl -s {endpoint.get('openAIBaseURL', '')}/chat/completions -H 'Content-Type: application/json' -d '{body}'"


def download_line(download: dict) -> str:
    """`1.2 GiB / 4.0 GiB  30%  12.0 MiB/s  3m 20s left` (the rate from what is left and the ETA)."""
    done, total = download.get("bytesDone") or 0, download.get("bytesTotal") or 0
    eta = download.get("etaSeconds")
    rate = f"{human_bytes((total - done) / eta)}/s" if eta and total > done else "-"
    left = f"{duration(eta)} left" if eta is not None else "time left unknown"
    return f"{human_bytes(done)} / {human_bytes(total)}  {download.get('percent', 0)}%  {rate}  {left}"


def download_bar(download: dict):
    """A progress bar of `status.download`, with bytes done/total, rate and time left."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    grid = Table.grid(padding=(0, 1))
    grid.add_row(ProgressBar(total=max(1, download.get("bytesTotal") or 0),
                             completed=download.get("bytesDone") or 0, width=40), download_line(download))
    return Group("[bold]Download[/]", grid)


def summary_lines(obj: dict) -> list[str]:
    """The head of `modelship status`: phase, replicas, the resolved model, autoscaling."""
    meta, spec, status = obj.get("metadata", {}), obj.get("spec", {}), obj.get("status") or {}
    phase = status.get("phase") or "Pending"
    lines = [f"[bold]{meta.get('namespace', 'default')}/{meta.get('name', '?')}[/]  "
             f"phase [{PHASE_STYLE.get(phase, 'white')}]{phase}[/]",
             f"Replicas: {status.get('readyReplicas') or 0} ready / {spec.get('replicas', 1)} desired"
             + (f" (autoscaling {spec.get('minReplicas', 1)}..{spec['maxReplicas']})" if spec.get("maxReplicas")
                else "")]
    resolved = status.get("resolved")
    if resolved:
        lines.append(f"Model: {resolved.get('repo')}@{resolved.get('revision')} -> {resolved.get('sha')} "
                     f"({resolved.get('engine')}, {resolved.get('format')}"
                     + (f", {resolved['quantization']}" if resolved.get("quantization") else "")
                     + f", {human_bytes(resolved.get('totalBytes') or 0)})")
        lines += [f"  {f.get('path')}  {human_bytes(f.get('size') or 0)}" for f in resolved.get("files") or []]
    else:
        model = spec.get("model") or {}
        lines.append(f"Model: {model.get('repo')}@{model.get('revision', 'main')} (not resolved yet)")
    scaling = status.get("autoscaling")
    if scaling:
        lines.append(f"Autoscaling: {scaling.get('desiredReplicas')} replicas, {scaling.get('reason')}"
                     + (f": {scaling['message']}" if scaling.get("message") else ""))
    return lines


def endpoint_lines(obj: dict) -> list[str]:
    endpoint = (obj.get("status") or {}).get("endpoint")
    if not endpoint:
        return []
    return ["[bold]Endpoint[/] (inside the cluster)",
            f"  URL: {endpoint.get('url')}", f"  OpenAI base URL: {endpoint.get('openAIBaseURL')}",
            f"  model: {endpoint.get('model')}", f"  {curl_example(endpoint)}"]


def conditions_table(obj: dict):
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold", title_justify="left")
    for column in ("CONDITION", "STATUS", "REASON", "MESSAGE"):
        table.add_column(column, overflow="fold")
    for c in (obj.get("status") or {}).get("conditions") or []:
        style = {"True": "green", "False": "red"}.get(c.get("status"), "yellow")
        table.add_row(escape(c.get("type", "")), f"[{style}]{escape(c.get('status', ''))}[/]",
                      escape(c.get("reason", "")), escape(c.get("message", "")))
    return table


def status_view(obj: dict):
    """Everything `modelship status` shows, as one rich renderable."""
    from rich.console import Group
    from rich.markup import escape

    status = obj.get("status") or {}
    parts: list[Any] = [line if line.startswith(("[bold]", "Replicas")) else escape(line)
                        for line in summary_lines(obj)]
    if status.get("download") and status.get("phase") == "Downloading":
        parts.append(download_bar(status["download"]))
    if status.get("conditions"):
        parts.append(conditions_table(obj))
    if status.get("phase") == "Failed":
        parts.append(f"[red]Failed:[/] {escape(failure_message(obj))}")
    parts += [line if line.startswith("[bold]") else escape(line) for line in endpoint_lines(obj)]
    return Group(*parts)


def to_text(renderable: Any, width: int = 160) -> str:
    """A renderable as plain text (for tests, logs and pipes)."""
    import io

    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=width, color_system=None, force_terminal=False).print(renderable)
    return out.getvalue()
