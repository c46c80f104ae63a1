"""Resolution: from `spec.model` to exactly what will be served (`status.resolved`).

The reconcile loop depends only on the small `Resolver` interface below. A resolver returns a
`ResolvedModel` (commit sha, format, files with sizes) or raises `ResolveError` with a
CamelCase reason and a message a person can act on. `HubResolver` asks a Hub or a mirror;
`CatalogResolver` answers from a YAML file of pre-resolved models first (pinned entries for
air-gapped clusters and tests) and asks the Hub for the rest.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

import httpx
import requests
import yaml
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, HFValidationError, OfflineModeIsEnabled,
                                    RepositoryNotFoundError, RevisionNotFoundError)
from pydantic import ValidationError

from ..api import ModelSource, ResolvedFile, ResolvedModel
from ..units import human_bytes
from ..weights.volume import unsafe_name
from . import hub_answer
from .types import ResolveError


class Resolver(Protocol):
    def resolve(self, source: ModelSource, endpoint: str, token: str | None) -> ResolvedModel:
        """Resolve `source` against the Hub at `endpoint`; raise ResolveError when it cannot."""


def quant_matches(wanted: str, model: ResolvedModel) -> bool:
    w = wanted.lower()
    return w in {(model.quantization or "").lower(), (model.model_file or "").lower(),
                 (model.model_file or "").rsplit("/", 1)[-1].lower()}


RECENT_NS = 2_000_000_000  # a catalog file changed less than 2 s ago is read again at the next resolution


def _stamp(path: Path) -> tuple[int, int, int]:
    """(mtime, size, inode): what tells a file changed (OSError when it is gone)."""
    st = path.stat()
    return st.st_mtime_ns, st.st_size, st.st_ino


class CatalogResolver:
    """Pre-resolved models from a YAML list of `status.resolved` entries."""

    def __init__(self, path: Path, fallback: Resolver | None = None):
        self.path, self.fallback = path, fallback
        # The entries last read and the file's stamp then, parsed again when the file changes (a
        # ConfigMap's update swaps its inode): parsing was 2.9% of the CPU of a 500-model burst.
        self._read: tuple[tuple[int, int, int], tuple[ResolvedModel, ...]] | None = None
        self._reading = threading.Lock()  # (the reconciles that miss at once parse it once)

    def entries(self) -> tuple[ResolvedModel, ...]:
        """The catalog's entries (shared between callers, never changed by them)."""
        try:
            if (found := self._cached(_stamp(self.path))) is not None:
                return found
            with self._reading:
                stamp = _stamp(self.path)
                if (found := self._cached(stamp)) is not None:
                    return found
                # Changed moments ago, it may change again within one tick of its clock, size and all
                recent = time.time_ns() - stamp[0] < RECENT_NS
                data = yaml.safe_load(self.path.read_text()) or []
                found = tuple(ResolvedModel.model_validate(e) for e in data)
        except (OSError, yaml.YAMLError, ValidationError, TypeError) as e:
            raise ResolveError("CatalogUnreadable", f"the operator's catalogFile {self.path} cannot be used: "
                                                    f"{str(e).splitlines()[0]}", transient=True) from e
        # (a file changed between the stat and the read: its new stamp differs, read again next time)
        self._read = None if recent else (stamp, found)
        return found

    def _cached(self, stamp: tuple[int, int, int]) -> tuple[ResolvedModel, ...] | None:
        """The entries kept, if the file's stamp is what it was when they were read."""
        read = self._read
        return read[1] if read is not None and read[0] == stamp else None

    def resolve(self, source: ModelSource, endpoint: str, token: str | None) -> ResolvedModel:
        same_repo = [e for e in self.entries() if e.repo == source.repo]
        at_rev = [e for e in same_repo if source.revision in (e.revision, e.sha)]
        if not same_repo or not at_rev:
            if self.fallback is not None:
                return self.fallback.resolve(source, endpoint, token)
            if not same_repo:
                raise ResolveError("RepoNotFound", f"{source.repo} is not in the operator's catalog "
                                                   f"({self.path}); add it there, or check the name")
            raise ResolveError("RevisionNotFound", f"{source.repo} has no revision {source.revision!r} in the "
                                                   f"catalog; it has {sorted({e.revision for e in same_repo})}")
        if source.quantization:
            chosen = [e for e in at_rev if quant_matches(source.quantization, e)]
            if not chosen:
                have = ", ".join(f"{e.quantization} ({e.total_bytes} bytes)" for e in at_rev if e.quantization)
                raise ResolveError("QuantizationNotFound",
                                   f"{source.repo}@{source.revision} has no {source.quantization}; it has: "
                                   f"{have or 'no GGUF quantizations'}")
            return _refuse_unsafe(_exclude(chosen[0], source), source)
        # No quantization asked: Q4_K_M, then Q8_0, then the first entry (as for the Hub).
        for tag in ("Q4_K_M", "Q8_0"):
            for e in at_rev:
                if quant_matches(tag, e):
                    return _refuse_unsafe(_exclude(e, source), source)
        return _refuse_unsafe(_exclude(at_rev[0], source), source)


def _exclude(model: ResolvedModel, source: ModelSource) -> ResolvedModel:
    """Drop the files `spec.model.exclude` names (a catalog entry already lists its files, so
    `spec.model.files` cannot add any)."""
    if not source.exclude:
        return model
    keep = [f for f in model.files if not any(fnmatch.fnmatch(f.path, p) for p in source.exclude)]
    if model.model_file and model.model_file not in {f.path for f in keep}:
        raise ResolveError("NoServableFiles", f"model.exclude removes {model.model_file}, the file to serve; "
                                              f"narrow the exclude patterns")
    return model.model_copy(update={"files": keep, "total_bytes": sum(f.size for f in keep)})


def _refuse_unsafe(model: ResolvedModel, source: ModelSource) -> ResolvedModel:
    """A file to download whose name could leave the volume is refused (the download Job
    refuses it again as it writes). Odd names the choice leaves out are no concern: they are
    never written."""
    unsafe_files(source, [f.path for f in model.files])
    return model


def unsafe_files(source: ModelSource, files: list[str]) -> None:
    for name in files:
        why = unsafe_name(name)
        if why is not None:
            shown = repr(name) if len(name) <= 80 else repr(name[:60]) + f"... ({len(name)} characters)"
            raise ResolveError("UnsafeFileName", f"{source.repo}@{source.revision} has a file named {shown} that "
                                                 f"cannot be written safely ({why}); it is needed to serve the "
                                                 f"model, so the repository cannot be served: fix the name on the "
                                                 f"Hub, or choose other files (spec.model.quantization or files)")


# --- the Hub ---------------------------------------------------------------------------------

SHARD = re.compile(r"^(?P<prefix>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.I)
QUANT = re.compile(r"(?<![A-Za-z0-9])(I?Q\d(?:_[A-Z0-9]+)*|F16|BF16|F32|TQ\d_\d)(?=[.-])", re.I)
SAFETENSORS_EXTRAS = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                      "tokenizer.model", "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json",
                      "chat_template.jinja", "chat_template.json", "preprocessor_config.json")
NOT_A_MODEL = ("mmproj", "imatrix")


def _is_gguf_model(path: str) -> bool:
    base = path.rsplit("/", 1)[-1].lower()
    return base.endswith(".gguf") and not any(word in base for word in NOT_A_MODEL)


def quant_tag(path: str) -> str | None:
    m = QUANT.search(path.rsplit("/", 1)[-1])
    return m.group(1).upper() if m else None


def _tag_matches(tag: str, path: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(tag)}[.-]", path.rsplit("/", 1)[-1], re.I) is not None


def _with_shards(chosen: str, names: list[str]) -> list[str]:
    """A shard of a split GGUF brings all its shards; the first one is the file to load."""
    m = SHARD.match(chosen)
    if not m:
        return [chosen]
    prefix, count = m.group("prefix"), m.group("count")
    return sorted(n for n in names if (s := SHARD.match(n)) and s.group("prefix") == prefix
                  and s.group("count") == count)


def choose_gguf(names: list[str], quantization: str | None) -> list[str] | None:
    """The GGUF files to download, the one to load first; None when the tag is absent."""
    models = sorted(n for n in names if _is_gguf_model(n))
    if quantization and quantization.lower().endswith(".gguf"):
        found = [n for n in models if n == quantization or n.rsplit("/", 1)[-1] == quantization]
        return _with_shards(found[0], names) if found else None
    for tag in ([quantization] if quantization else ["Q4_K_M", "Q8_0"]):
        found = [n for n in models if _tag_matches(tag, n)]
        if found:
            return _with_shards(found[0], names)
    if quantization:
        return None
    return _with_shards(models[0], names) if models else None


def choose_safetensors(names: list[str], indexed: list[str] | None = None) -> list[str]:
    """The weights (`indexed`: the files an index's weight_map names; else the top-level
    model*.safetensors, never `consolidated*` duplicates), config and tokenizer files."""
    top = [n for n in names if "/" not in n]
    shards = [n for n in top if n.endswith(".safetensors")]
    if indexed:
        shards = [n for n in shards if n in indexed]
    elif any(n.startswith("model") for n in shards):
        shards = [n for n in shards if n.startswith("model")]
    shards = [n for n in shards if not n.startswith("consolidated")] or shards
    weights = shards + (["model.safetensors.index.json"] if "model.safetensors.index.json" in top else [])
    if not any(n.endswith(".safetensors") for n in weights):
        weights = [n for n in top if re.match(r"pytorch_model.*\.bin$", n)] + (
            ["pytorch_model.bin.index.json"] if "pytorch_model.bin.index.json" in top else [])
    if not weights:
        return []
    return sorted(set(weights) | {n for n in top if n in SAFETENSORS_EXTRAS})


def _apply_patterns(selected: list[str], names: list[str], source: ModelSource) -> list[str]:
    chosen = set(selected) | {n for n in names if any(fnmatch.fnmatch(n, p) for p in source.files)}
    return sorted(n for n in chosen if not any(fnmatch.fnmatch(n, p) for p in source.exclude))


def trust(pem: str) -> None:
    """Trust `pem` (a mirror's CA) for the Hub besides the system's CAs: `huggingface_hub`
    verifies with `requests`, which reads one bundle file from REQUESTS_CA_BUNDLE."""
    import ssl
    import tempfile

    import certifi

    try:
        ssl.create_default_context().load_verify_locations(cadata=pem)
    except ssl.SSLError as e:
        raise ValueError(f"hubCaBundle is not PEM certificates: {e}") from None
    bundle = tempfile.NamedTemporaryFile("w", prefix="modelship-ca-", suffix=".pem", delete=False)
    with bundle:
        bundle.write(Path(certifi.where()).read_text() + "\n" + pem)
    os.environ["REQUESTS_CA_BUNDLE"] = os.environ["SSL_CERT_FILE"] = bundle.name  # (httpx reads the second)


class HubResolver:
    """Resolution against a Hub (or a mirror) with `huggingface_hub`."""

    def __init__(self, timeout: float = 30.0, ca_bundle: str | None = None):
        self.timeout = timeout
        if ca_bundle:
            trust(ca_bundle)


    def resolve(self, source: ModelSource, endpoint: str, token: str | None) -> ResolvedModel:
        api = HfApi(endpoint=endpoint, token=token or False)
        with _hub_errors(source, endpoint, token):
            info = hub_answer.model_info(api, source.repo, source.revision, self.timeout)
            names = [s.rfilename for s in info.siblings or []]
            known = {s.rfilename: s for s in info.siblings or []}
            indexed = (hub_answer.weight_map(self._json(source, "model.safetensors.index.json", info.sha, endpoint,
                                                        token)) if "model.safetensors.index.json" in names else None)
            fmt, selected, model_file = self._select(source, names, lambda ns: self._sizes(ns, known, source,
                                                                                          endpoint, token, info.sha),
                                                     indexed)
            files = _apply_patterns(selected, names, source)
            unsafe_files(source, files)
            if model_file and model_file not in files:
                raise ResolveError("NoServableFiles", f"model.exclude removes {model_file}, the file to serve; "
                                                      f"narrow the exclude patterns")
            sizes = self._sizes(files, known, source, endpoint, token, info.sha)
            if getattr(info, "gated", False) and files:
                # model_info answers for gated repos without a token; the files do not.
                self._head(source.repo, files[0], info.sha, endpoint, token)
            arch, ctx = self._architecture(info, names, source, endpoint, token)
        resolved = [ResolvedFile(path=f, size=sizes[f][0], sha256=sizes[f][1], git_sha1=sizes[f][2]) for f in files]
        return ResolvedModel(
            repo=source.repo, revision=source.revision, sha=info.sha, short_sha=info.sha[:7],
            # (engine.type auto with the built-in default; the controller chooses with the
            # operator's defaultEngine, policy.choose_engine, and `modelship show` says which)
            engine="llamacpp" if fmt == "gguf" else "tgi", format=fmt, model_file=model_file,
            quantization=quant_tag(model_file) if model_file else None, files=resolved,
            total_bytes=sum(f.size for f in resolved), architecture=arch, context_length=ctx)

    def _select(self, source: ModelSource, names: list[str], sizes_of,
                indexed: list[str] | None = None) -> tuple[str, list[str], str | None]:
        ggufs = [n for n in names if _is_gguf_model(n)]
        weights = choose_safetensors(names, indexed)
        want_gguf = ggufs and (source.quantization or not weights)
        if want_gguf:
            chosen = choose_gguf(names, source.quantization)
            if chosen is None:
                by_tag: dict[str, int] = {}
                sizes = sizes_of(ggufs)
                for n in ggufs:
                    tag = quant_tag(n) or n
                    by_tag[tag] = by_tag.get(tag, 0) + sizes[n][0]
                have = ", ".join(f"{t} ({human_bytes(b)})" for t, b in sorted(by_tag.items()))
                raise ResolveError("QuantizationNotFound", f"{source.repo}@{source.revision} has no GGUF file for "
                                                           f"{source.quantization!r}; it has: {have}")
            return "gguf", chosen, chosen[0]
        if weights:
            return "safetensors", weights, None
        sample = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise ResolveError("NoServableFiles", f"{source.repo}@{source.revision} has no GGUF, safetensors or "
                                              f"PyTorch weights to serve (files: {sample or 'none'})")

    def _sizes(self, paths: list[str], known: dict, source: ModelSource, endpoint: str, token: str | None,
               sha: str) -> dict[str, tuple[int, str | None, str | None]]:
        """Size, sha256 (LFS files) and git blob sha1 (files kept in git) of each file: from
        the listing, or (olah's listing has no sizes) from each file's own metadata, where the
        ETag is the sha256 of an LFS file (X-Linked-Etag) or the git blob sha1 of another."""
        out = {}
        for p in paths:
            s = known.get(p)
            lfs = getattr(s, "lfs", None)
            if s is not None and getattr(s, "size", None) is not None:
                sha256 = (lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None))
                blob = getattr(s, "blob_id", None) if lfs is None else None  # an LFS file's is its pointer's
                out[p] = (int(s.size), sha256, blob if blob and re.fullmatch(r"[0-9a-f]{40}", blob) else None)
                continue
            meta = self._head(source.repo, p, sha, endpoint, token)
            etag = (meta.etag or "").strip('"')
            # A 40-hex ETag is the git blob id only for a file served from git itself: an LFS
            # file redirects (its ETag could be its pointer's id, if a proxy dropped X-Linked-Etag).
            in_git = meta.location is None or meta.location.split("?")[0].endswith(quote(p))
            out[p] = (int(meta.size or 0), etag if re.fullmatch(r"[0-9a-f]{64}", etag) else None,
                      etag if in_git and re.fullmatch(r"[0-9a-f]{40}", etag) else None)
        return out

    def _json(self, source: ModelSource, path: str, sha: str, endpoint: str, token: str | None) -> dict:
        """A small JSON file of the repo ({} when it cannot be had: it only refines choices)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            r = httpx.get(hf_hub_url(source.repo, path, revision=sha, endpoint=endpoint), headers=headers,
                          follow_redirects=True, timeout=self.timeout)
            r.raise_for_status()
            data = json.loads(r.text)
        except (httpx.HTTPError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _head(self, repo: str, path: str, sha: str, endpoint: str, token: str | None):
        return get_hf_file_metadata(hf_hub_url(repo, path, revision=sha, endpoint=endpoint), token=token or False,
                                    timeout=self.timeout)

    def _architecture(self, info, names: list[str], source: ModelSource, endpoint: str,
                      token: str | None) -> tuple[str | None, int | None]:
        gguf = getattr(info, "gguf", None) or {}  # (its shape checked by hub_answer.model_info)
        if gguf:
            return gguf.get("architecture"), gguf.get("context_length")
        if "config.json" not in names:
            return None, None
        return hub_answer.architecture(self._json(source, "config.json", info.sha, endpoint, token))


@contextmanager
def _hub_errors(source: ModelSource, endpoint: str, token: str | None):
    """The Hub's failures as conditions a person can act on."""
    where = f"{source.repo} on {endpoint}"
    try:
        yield
    except HFValidationError as e:
        raise ResolveError("InvalidRepo", f"{source.repo!r} is not a valid Hub repository name: "
                                          f"{str(e).splitlines()[0]}; fix spec.model.repo") from None
    except GatedRepoError:
        if token is None:
            raise ResolveError("GatedRepo", f"{where} is gated: accept its terms on the Hub with your account, then "
                                            f"`kubectl create secret generic hf-token --from-literal=token=hf_...` "
                                            f"and set spec.model.tokenSecretRef.name: hf-token") from None
        raise ResolveError("Unauthorized", f"the token from model.tokenSecretRef has no access to the gated "
                                           f"{where}: request access on the model's page, or use a token of an "
                                           f"account that has it") from None
    except RevisionNotFoundError:
        raise ResolveError("RevisionNotFound", f"{where} has no branch, tag or commit {source.revision!r}: check "
                                               f"spec.model.revision") from None
    except RepositoryNotFoundError:
        hint = ("; if it is private, the token from model.tokenSecretRef cannot see it" if token else
                "; if it is private, set spec.model.tokenSecretRef")
        raise ResolveError("RepoNotFound", f"{where} does not exist: check spec.model.repo{hint}") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else 0
        if status in (401, 403):
            raise ResolveError("Unauthorized", f"{where} refused the token from model.tokenSecretRef ({status}): "
                                               f"check that it is valid and has read access") from None
        if status == 429 or status >= 500 or status == 0:
            raise ResolveError("HubUnavailable", f"{where} answered {status or 'nothing'}; retrying with backoff",
                               transient=True) from None
        raise ResolveError("HubError", f"{where} answered {status}: {str(e).splitlines()[0]}") from None
    except (requests.ConnectionError, requests.Timeout) as e:
        raise _unreachable(endpoint, e) from None
    except hub_answer.BadAnswer as e:  # an error page, a mirror gone wrong (nothing else: see hub_answer.py)
        raise ResolveError("HubBadAnswer", f"{where}: the Hub API answered something that is not the Hub's JSON "
                                           f"({e}); "
                                           f"check that {endpoint} is a Hub or a Hub mirror; retrying with backoff",
                           transient=True) from None
    except (OfflineModeIsEnabled, OSError) as e:
        raise _unreachable(endpoint, e) from None


def _unreachable(endpoint: str, e: Exception) -> ResolveError:
    return ResolveError("HubUnreachable", f"cannot reach {endpoint} ({type(e).__name__}); retrying with backoff. "
                                          f"In an air-gapped cluster set spec.model.endpoint or the operator's "
                                          f"hubEndpoint to a mirror", transient=True)
