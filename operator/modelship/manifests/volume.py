"""The weights' volume: a PersistentVolumeClaim holding the Hub cache layout."""

from __future__ import annotations

import math

from ..api import ModelDeployment, ResolvedModel
from ..settings import Settings
from ..units import GIB
from .meta import cache_labels, claim_name, finish, labels

MODELS_MOUNT = "/models"


def snapshot_dir(resolved: ResolvedModel) -> str:
    """The Hub cache layout: one folder per repo, one snapshot per commit."""
    return f"{MODELS_MOUNT}/models--{resolved.repo.replace('/', '--')}/snapshots/{resolved.sha}"


def volume_size(total_bytes: int, margin_percent: int) -> str:
    """Files' total plus the margin, at least 1Gi more, rounded up to whole GiB."""
    want = max(total_bytes * (100 + margin_percent) / 100, total_bytes + GIB)
    return f"{math.ceil(want / GIB)}Gi"


def pvc(md: ModelDeployment, resolved: ResolvedModel, settings: Settings, total_bytes: int | None = None) -> dict:
    st = md.spec.storage
    total = resolved.total_bytes if total_bytes is None else total_bytes
    size = str(st.size) if st.size is not None else volume_size(total, settings.storage_margin_percent)
    spec: dict = {"accessModes": [st.access_mode], "resources": {"requests": {"storage": size}}}
    if st.storage_class_name:
        spec["storageClassName"] = st.storage_class_name
    cache = st.shared_cache
    return finish({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": claim_name(md),
                                "labels": cache_labels("weights") if cache else labels(md, "weights")},
                   "spec": spec}, md, co_owned=cache)
