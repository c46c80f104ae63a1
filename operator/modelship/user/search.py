"""`modelship search` and `modelship show`: find a model on the Hub, and see what the operator
would serve of it, by the operator's own rules (`reconcile.resolve`: the GGUF default pick,
the files; `manifests.volume`: the volume size), so what they show is what it will do."""

from __future__ import annotations

import os

import click

from .common import EXIT_FAILED, EXIT_NOT_FOUND, UserError, console, kube_options, user_errors
from .fits import FORMULA

SORTS = {"downloads": "downloads", "likes": "likes", "modified": "lastModified", "created": "createdAt"}
EXPAND = ["siblings", "gated", "downloads", "likes", "lastModified", "createdAt", "private", "gguf"]
NOT_FOUND_REASONS = ("RepoNotFound", "RevisionNotFound", "QuantizationNotFound")
# engine.type auto serves safetensors with the operator's defaultEngine, which these commands
# cannot read (tgi unless the cluster admin chose vllm or sglang): they say so, not a guess.
DEFAULT_ENGINE = "defaultEngine"


def served_by(fmt: str, requested: str = "auto") -> str:
    """The engine `requested` (spec.engine.type) gets for weights of format `fmt`, as the operator
    chooses it (policy.choose_engine), or DEFAULT_ENGINE where the operator's setting decides."""
    from ..reconcile.policy import choose_engine

    return choose_engine(requested, fmt, DEFAULT_ENGINE)


def _endpoint_option(fn):
    fn = click.option("--token", default=lambda: os.environ.get("HF_TOKEN"), show_default="$HF_TOKEN",
                      help="Hugging Face token (gated or private repos).")(fn)
    return click.option("--endpoint", default=lambda: os.environ.get("HF_ENDPOINT", "https://huggingface.co"),
                        show_default="$HF_ENDPOINT, else https://huggingface.co", help="The Hub or a mirror.")(fn)


def _human(n: int | None) -> str:
    from ..units import human_bytes

    return "?" if n is None else human_bytes(n)


# --- search ----------------------------------------------------------------------------------

SEARCH_HELP = f"""Search the Hub for models the operator can serve.

\b
GGUF repos list every quantization with its size; `*` marks the one the operator picks when
spec.model.quantization is unset (Q4_K_M, then Q8_0, then the first file). The size, --max-size
and fits are those of the pick (with --quant: that quantization). Gated repos are hidden unless
--include-gated.

\b
fits (with --pool): {FORMULA}.

\b
Examples:
  modelship search qwen2.5 --gguf
  modelship search llama --author meta-llama --sort likes --limit 5
  modelship search smollm2 --quant Q8_0 --max-size 2GB -o json
  modelship search mistral --gguf --pool gpu --gpus 1
"""


@click.command("search", help=SEARCH_HELP)
@click.argument("query", required=False)
@click.option("--author", default=None, help="Only this user's or organisation's repos.")
@click.option("--quant", default=None, metavar="Q", help="Only GGUF repos with this quantization (e.g. Q4_K_M).")
@click.option("--gguf", is_flag=True, help="Only GGUF repos.")
@click.option("--sort", type=click.Choice(list(SORTS)), default="downloads", show_default=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--max-size", default=None, metavar="SIZE", help="The pick is at most this (8GB, 5GiB).")
@click.option("--include-gated", is_flag=True, help="Show gated repos too.")
@click.option("--pool", default=None, metavar="NAME", help="Add a fits column for this pool of the operator.")
@click.option("--gpus", type=click.IntRange(1, 64), default=None, help="GPUs for fits (default: the pool's maxGpus).")
@click.option("--operator-namespace", default=None, help="Where the operator's settings are (default: found).")
@_endpoint_option
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@kube_options
@user_errors
def search(query, author, quant, gguf, sort, limit, max_size, include_gated, pool, gpus, operator_namespace,
           endpoint, token, output, namespace, context, kubeconfig):
    from .fits import parse_size

    try:
        most = parse_size(max_size) if max_size else None
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--max-size") from None
    capacity = None
    if pool:
        from .common import Kube
        from .fits import cluster_pool

        capacity = cluster_pool(Kube.connect(kubeconfig, context, namespace), pool, operator_namespace, gpus)
    models = _list(endpoint, token, query, author, gguf or bool(quant), include_gated, SORTS[sort],
                   limit if not (quant or most or gguf) else min(limit * 5, max(limit, 100)))
    rows = []
    for m in models:
        row = _row(m, quant, gguf, include_gated, most, endpoint, token)
        if row is not None:
            rows.append(row)
        if len(rows) == limit:
            break
    if capacity is not None:
        _add_fits(rows, capacity)
    _print_search(rows, output, capacity)


def _list(endpoint, token, query, author, gguf, include_gated, sort, limit) -> list:
    """The Hub's search; one line when the endpoint cannot search (a mirror such as olah)."""
    import requests
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=endpoint, token=token or False)
    try:
        return list(api.list_models(search=query or None, author=author, filter="gguf" if gguf else None,
                                    gated=None if include_gated else False, sort=sort, direction=-1,
                                    limit=limit, expand=EXPAND))
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        if status in (401, 403):
            raise UserError(f"{endpoint} refused the search ({status}): check --token / $HF_TOKEN") from None
        raise UserError(f"{endpoint} cannot search models (it answered {status} on /api/models; a mirror such as "
                        f"olah has no search): look a repo up by name with `modelship show REPO`") from None
    except ValueError:
        raise UserError(f"{endpoint} cannot search models (its /api/models answer is not the Hub's); look a repo "
                        f"up by name with `modelship show REPO`") from None
    except (requests.ConnectionError, requests.Timeout) as e:
        raise UserError(f"cannot reach {endpoint} ({type(e).__name__}); check --endpoint / $HF_ENDPOINT") from None


def _row(m, quant, gguf_only, include_gated, most, endpoint, token) -> dict | None:
    """A repo as a row, or None when a filter drops it (Hub calls for sizes only for the kept)."""
    from ..api import ModelSource
    from ..reconcile.resolve import HubResolver, ResolveError, _is_gguf_model, choose_gguf

    if m.gated and not include_gated:
        return None
    names = [s.rfilename for s in m.siblings or []]
    ggufs = [n for n in names if _is_gguf_model(n)]
    if (gguf_only and not ggufs) or (quant and choose_gguf(names, quant) is None):
        return None
    try:  # the resolver's own choice of format and files (the safetensors index is not read here)
        fmt, picked, _ = HubResolver()._select(ModelSource(repo=m.id, quantization=quant), names, _no_sizes)
    except (ResolveError, ValueError):
        return None
    sizes = _sizes(m, ggufs + picked, endpoint, token)
    pick_bytes = sum(sizes.get(n) or 0 for n in picked) if all(n in sizes for n in picked) else None
    if most is not None and (pick_bytes is None or pick_bytes > most):
        return None
    return {"repo": m.id, "downloads": m.downloads, "likes": m.likes,
            "lastModified": m.last_modified.isoformat() if m.last_modified else None,
            "createdAt": m.created_at.isoformat() if m.created_at else None, "gated": bool(m.gated),
            "format": fmt, "engine": served_by(fmt),
            "pick": {"files": picked, "bytes": pick_bytes},
            "quantizations": quantizations(names, sizes, default_format(names))}


def _sizes(m, paths: list[str], endpoint, token) -> dict[str, int]:
    """From the listing when it has sizes; else as the resolver reads them (one model_info)."""
    listed = {s.rfilename: s.size for s in m.siblings or [] if getattr(s, "size", None) is not None}
    if all(p in listed for p in paths):
        return listed
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from ..api import ModelSource
    from ..reconcile.resolve import HubResolver

    try:
        info = HfApi(endpoint=endpoint, token=token or False).model_info(m.id, files_metadata=True)
        known = {s.rfilename: s for s in info.siblings or []}
        got = HubResolver()._sizes(paths, known, ModelSource(repo=m.id), endpoint, token, info.sha)
    except (HfHubHTTPError, OSError):
        return listed
    return {p: s[0] for p, s in got.items()}


def default_format(names: list[str]) -> str:
    """What the resolver serves when no quantization is asked for: the safetensors weights when
    the repo has them (TGI, vLLM or SGLang), else its GGUF files (its own rule, `HubResolver._select`)."""
    from ..api import ModelSource
    from ..reconcile.resolve import HubResolver, ResolveError

    try:
        return HubResolver()._select(ModelSource(repo="org/any"), names, _no_sizes)[0]
    except ResolveError:  # (nothing servable: no default to mark)
        return ""


def _no_sizes(names: list[str]) -> dict:
    """Sizes for the resolver's choice of files, which only needs them to explain a missing
    quantization (sizes are read afterwards, only for the files kept)."""
    return {n: (0, None, None) for n in names}


def quantizations(names: list[str], sizes: dict[str, int], served_format: str | None = "gguf") -> list[dict]:
    """Every GGUF quantization of a repo, its files and size, and the resolver's default pick
    (none when the resolver serves the repo's safetensors instead)."""
    from ..reconcile.resolve import _is_gguf_model, choose_gguf, quant_tag

    default = choose_gguf(names, None) if served_format == "gguf" else None
    by_tag: dict[str, list[str]] = {}
    for n in sorted(n for n in names if _is_gguf_model(n)):
        by_tag.setdefault(quant_tag(n) or n.rsplit("/", 1)[-1], []).append(n)
    out = []
    for tag, files in by_tag.items():
        total = sum(sizes[f] for f in files) if all(f in sizes for f in files) else None
        out.append({"quantization": tag, "files": files, "bytes": total,
                    "default": bool(default) and default[0] in files})
    return sorted(out, key=lambda q: (q["bytes"] is None, q["bytes"] or 0, q["quantization"]))


def _add_fits(rows: list[dict], capacity: dict) -> None:
    from .fits import fits, needed_bytes

    for row in rows:
        weights = row["pick"]["bytes"]
        need = needed_bytes(weights) if weights is not None else None
        row["fits"] = {"pool": capacity["pool"], "needed": need, "capacity": capacity["capacity"],
                       "fits": fits(need, capacity["capacity"]) if need is not None else None}


def _print_search(rows: list[dict], output: str, capacity: dict | None) -> None:
    if output == "json":
        import json

        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    if not rows:
        console().print("No models match.")
        return
    table = Table(box=None, header_style="bold")
    for col in ("REPO", "DOWNLOADS", "LIKES", "MODIFIED", "GATED", "SIZE", "QUANTS (* default)"):
        table.add_column(col, justify="right" if col in ("DOWNLOADS", "LIKES", "SIZE") else "left",
                         min_width=max(len(r["repo"]) for r in rows) if col == "REPO" else 16 if "*" in col else None,
                         no_wrap=col not in ("REPO", "QUANTS (* default)"), overflow="fold")  # names never cut
    if capacity is not None:
        table.add_column(f"FITS {capacity['pool']}", no_wrap=True)
    for r in rows:
        quants = "\n".join(f"{'*' if q['default'] else ' '} {q['quantization']} {_human(q['bytes'])}"
                           for q in r["quantizations"]) or r["format"]
        cells = [r["repo"], f"{r['downloads'] or 0:,}", str(r["likes"] or 0), (r["lastModified"] or "")[:10],
                 "yes" if r["gated"] else "", _human(r["pick"]["bytes"]), quants]
        if capacity is not None:
            f = r["fits"]["fits"]
            cells.append("?" if f is None else "yes" if f else "no")
        table.add_row(*cells)
    out = console()
    if not out.is_terminal:  # into a pipe or a file: whole lines, as kubectl writes them
        out.width = 240
    out.print(table)


# --- show ------------------------------------------------------------------------------------

SHOW_HELP = """Show what the operator would resolve for REPO[@REVISION]: the commit, the engine, the
files and their sizes, the quantization chosen (and every one the repo has, `*` the default),
the context length, the architecture, gated or not, and the volume size it would ask for.

\b
Examples:
  modelship show bartowski/SmolLM2-135M-Instruct-GGUF
  modelship show bartowski/SmolLM2-135M-Instruct-GGUF --quant Q8_0 -o yaml
  modelship show HuggingFaceTB/SmolLM2-135M-Instruct@main -o json
"""


@click.command("show", help=SHOW_HELP)
@click.argument("ref", metavar="REPO[@REVISION]")
@click.option("--quant", default=None, metavar="Q", help="GGUF quantization (tag or file name), as spec.model's.")
@click.option("--engine", type=click.Choice(["auto", "tgi", "vllm", "sglang", "llamacpp"]), default="auto",
              show_default=True, help="spec.engine.type: auto serves safetensors with the operator's defaultEngine.")
@_endpoint_option
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table", show_default=True)
@user_errors
def show(ref, quant, engine, endpoint, token, output):
    from pydantic import ValidationError

    from ..api import ModelSource
    from ..reconcile.resolve import HubResolver, ResolveError
    from ..reconcile.types import SpecError

    repo, _, revision = ref.partition("@")
    try:
        source = ModelSource(repo=repo, revision=revision or "main", quantization=quant)
    except ValidationError as e:
        raise UserError(f"{ref!r} is not REPO[@REVISION]: {e.errors()[0]['msg']}") from None
    try:
        resolved = HubResolver().resolve(source, endpoint, token)
        gated, quants = _repo_facts(source, resolved.sha, endpoint, token)
    except ResolveError as e:
        if e.transient:  # (the operator's words say it retries, and where to set a mirror: not this command's)
            raise UserError(f"{endpoint} did not answer well ({e.reason}); check --endpoint / $HF_ENDPOINT and "
                            "try again", EXIT_FAILED) from None
        if e.reason in ("GatedRepo", "Unauthorized"):  # (the operator's words name its Secret, not this flag)
            said = "is gated: it needs a token" if e.reason == "GatedRepo" else "refused the token given"
            raise UserError(f"{source.repo} {said}; pass --token (or set $HF_TOKEN) with a token that has access "
                            "to it", EXIT_FAILED) from None
        raise UserError(e.message, EXIT_NOT_FOUND if e.reason in NOT_FOUND_REASONS else EXIT_FAILED) from None
    try:
        resolved = resolved.model_copy(update={"engine": served_by(resolved.format, engine)})
    except SpecError as e:
        raise UserError(e.message.replace("engine.type", "--engine"), EXIT_FAILED) from None
    _print_show(describe(resolved, gated, quants), output)


def _repo_facts(source, sha: str, endpoint: str, token: str | None) -> tuple[bool, list[dict]]:
    """Gated or not, and every GGUF quantization with its size (as the resolver reads sizes)."""
    from huggingface_hub import HfApi

    from ..reconcile.resolve import HubResolver, _hub_errors, _is_gguf_model

    with _hub_errors(source, endpoint, token):
        info = HfApi(endpoint=endpoint, token=token or False).model_info(source.repo, revision=sha,
                                                                         files_metadata=True)
        names = [s.rfilename for s in info.siblings or []]
        ggufs = [n for n in names if _is_gguf_model(n)]
        known = {s.rfilename: s for s in info.siblings or []}
        sizes = HubResolver()._sizes(ggufs, known, source, endpoint, token, sha) if ggufs else {}
    return bool(info.gated), quantizations(names, {p: s[0] for p, s in sizes.items()}, default_format(names))


def describe(resolved, gated: bool, quants: list[dict]) -> dict:
    """What `show` prints: the resolved model, and the volume by the operator's own rule."""
    from ..manifests.volume import volume_size
    from ..settings import Settings

    margin = Settings.model_fields["storage_margin_percent"].default
    return {"repo": resolved.repo, "revision": resolved.revision, "sha": resolved.sha, "engine": resolved.engine,
            "format": resolved.format, "modelFile": resolved.model_file, "quantization": resolved.quantization,
            "files": [{"path": f.path, "bytes": f.size} for f in resolved.files], "totalBytes": resolved.total_bytes,
            "volumeSize": volume_size(resolved.total_bytes, margin), "contextLength": resolved.context_length,
            "architecture": resolved.architecture, "gated": gated, "quantizations": quants}


def _engine_said(engine: str) -> str:
    return "the operator's defaultEngine: tgi, vllm or sglang" if engine == DEFAULT_ENGINE else engine


def _print_show(d: dict, output: str) -> None:
    if output in ("json", "yaml"):
        import json

        import yaml

        click.echo(json.dumps(d, indent=2) if output == "json" else yaml.safe_dump(d, sort_keys=False), nl=False)
        if output == "json":
            click.echo()
        return
    from rich.table import Table

    out = console()
    facts = Table(box=None, show_header=False)
    facts.add_column(style="bold")
    facts.add_column()
    for key, value in (("repo", f"{d['repo']}@{d['revision']}"), ("commit", d["sha"]),
                       ("engine", f"{_engine_said(d['engine'])} ({d['format']})"),
                       ("quantization", d["quantization"] or "-"),
                       ("architecture", d["architecture"] or "?"), ("context length", d["contextLength"] or "?"),
                       ("gated", "yes" if d["gated"] else "no"), ("total", _human(d["totalBytes"])),
                       ("volume", f"{d['volumeSize']} (files + storageMarginPercent, the operator's default)")):
        facts.add_row(key, str(value))
    out.print(facts)
    files = Table(title="files", box=None, header_style="bold", title_justify="left")
    files.add_column("PATH")
    files.add_column("SIZE", justify="right")
    for f in d["files"]:
        files.add_row(f["path"], _human(f["bytes"]))
    out.print(files)
    if d["quantizations"]:
        quants = Table(title="quantizations (* default)", box=None, header_style="bold",
                       title_justify="left")
        for col in ("", "QUANT", "SIZE", "FILES"):
            quants.add_column(col)
        for q in d["quantizations"]:
            quants.add_row("*" if q["default"] else "", q["quantization"], _human(q["bytes"]), str(len(q["files"])))
        out.print(quants)


COMMANDS: list = [search, show]
