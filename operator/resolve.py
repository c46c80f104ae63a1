"""Resolution: from `spec.model` to exactly what will be served (`status.resolved`).

The reconcile loop depends only on the small `Resolver` interface below. A resolver returns a
`ResolvedModel` (commit sha, format, files with sizes) or raises `ResolveError` with a
CamelCase reason and a message a person can act on. `CatalogResolver` answers from a YAML file
of pre-resolved models (air-gapped clusters, tests); the Hub resolver comes with Hub support.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml
from pydantic import ValidationError

from .api import ModelSource, ResolvedModel


@dataclass
class ResolveError(Exception):
    reason: str
    message: str
    transient: bool = False

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class Resolver(Protocol):
    def resolve(self, source: ModelSource, endpoint: str, token: str | None) -> ResolvedModel:
        """Resolve `source` against the Hub at `endpoint`; raise ResolveError when it cannot."""


def quant_matches(wanted: str, model: ResolvedModel) -> bool:
    w = wanted.lower()
    return w in {(model.quantization or "").lower(), (model.model_file or "").lower(),
                 (model.model_file or "").rsplit("/", 1)[-1].lower()}


class CatalogResolver:
    """Pre-resolved models from a YAML list of `status.resolved` entries."""

    def __init__(self, path: Path, fallback: Resolver | None = None):
        self.path, self.fallback = path, fallback

    def entries(self) -> list[ResolvedModel]:
        try:
            data = yaml.safe_load(self.path.read_text()) or []
            return [ResolvedModel.model_validate(e) for e in data]
        except (OSError, yaml.YAMLError, ValidationError, TypeError) as e:
            raise ResolveError("CatalogUnreadable", f"the operator's catalogFile {self.path} cannot be used: "
                                                    f"{str(e).splitlines()[0]}", transient=True) from e

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
            return _exclude(chosen[0], source)
        # No quantization asked: Q4_K_M, then Q8_0, then the first entry (as for the Hub).
        for tag in ("Q4_K_M", "Q8_0"):
            for e in at_rev:
                if quant_matches(tag, e):
                    return _exclude(e, source)
        return _exclude(at_rev[0], source)


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


class HubUnavailable:
    """Stands in until the operator resolves models on the Hub itself (a later release)."""

    def resolve(self, source: ModelSource, endpoint: str, token: str | None) -> ResolvedModel:
        raise ResolveError("HubResolutionUnavailable",
                           f"this operator build resolves models only from its catalog (catalogFile), and "
                           f"{source.repo} is not in it; add it to the catalog", transient=False)
