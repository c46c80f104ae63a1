"""The Hub's answers, checked where they come in: the model's info as `huggingface_hub` parses
it (its commit, its files, its GGUF metadata) and the repo's small JSON files. An answer
that is not of the Hub's shape raises `BadAnswer` (resolve.py makes it the condition
HubBadAnswer); any other exception raised while resolving is the operator's own, and goes
up with its traceback instead of passing for a mirror gone wrong."""

from __future__ import annotations

import re

import requests
from huggingface_hub import HfApi
from huggingface_hub.errors import HFValidationError

SHA1 = re.compile(r"[0-9a-f]{40}")


class BadAnswer(Exception):
    """What the Hub (or something in its place) answered is not the Hub's JSON."""


def model_info(api: HfApi, repo: str, revision: str, timeout: float):
    """The model's info at `revision`, with its files' metadata, checked."""
    try:
        info = api.model_info(repo, revision=revision, files_metadata=True, timeout=timeout)
    except HFValidationError:
        raise  # (a ValueError too): the repo's name, the user's to fix
    except requests.JSONDecodeError as e:  # an error page with 200, a proxy's HTML
        raise BadAnswer(_said(e)) from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        # huggingface_hub's ModelInfo(**json) on JSON of another shape (a list, a sibling without
        # rfilename, an lfs without sha256, a date that is not one); the call has nothing else to fail.
        raise BadAnswer(_said(e)) from None
    _check(info)
    return info


def _check(info) -> None:
    if not isinstance(info.sha, str) or not SHA1.fullmatch(info.sha):
        raise BadAnswer(f"no commit sha in the model's info (sha: {str(info.sha)[:50]!r})")
    if info.siblings is not None and not isinstance(info.siblings, list):
        raise BadAnswer(f"siblings is a {type(info.siblings).__name__}, not a list")
    for s in info.siblings or []:
        if not isinstance(s.rfilename, str):
            raise BadAnswer(f"a sibling's rfilename is {s.rfilename!r}, not a string")
        if not _count(s.size) or (s.lfs is not None and not _count(s.lfs.get("size"))):
            raise BadAnswer(f"{s.rfilename!r} has size {s.size!r}, not a whole number of bytes")
        if not isinstance(s.blob_id, (str, type(None))) or (s.lfs is not None
                                                            and not isinstance(s.lfs.get("sha256"), str)):
            raise BadAnswer(f"{s.rfilename!r} has a blob id or sha256 that is not a string")
    gguf = getattr(info, "gguf", None)
    if gguf is not None and not isinstance(gguf, dict):
        raise BadAnswer(f"gguf is a {type(gguf).__name__}, not an object")
    if gguf and not (isinstance(gguf.get("architecture"), (str, type(None))) and _count(gguf.get("context_length"))):
        raise BadAnswer(f"gguf.architecture {gguf.get('architecture')!r} or gguf.context_length "
                        f"{gguf.get('context_length')!r} is not a name and a whole number")


def _count(value) -> bool:
    """None, or a whole number that is not negative (and not a bool, which Python counts as one)."""
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)


def _said(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"


def weight_map(index: dict) -> list[str] | None:
    """The files model.safetensors.index.json names, or None when it names none in the shape of
    one (it only refines the choice of files, as a missing index does)."""
    files = index.get("weight_map")
    if not isinstance(files, dict) or not all(isinstance(f, str) for f in files.values()):
        return None
    return sorted(set(files.values())) or None


def architecture(config: dict) -> tuple[str | None, int | None]:
    """The architecture and context length a config.json states, each None where it states
    none in the shape of one."""
    names = config.get("architectures")
    arch = names[0] if isinstance(names, list) and names and isinstance(names[0], str) else None
    arch = arch or (config.get("model_type") if isinstance(config.get("model_type"), str) else None)
    ctx = config.get("max_position_embeddings") or config.get("n_positions")
    return arch, ctx if _count(ctx) else None
