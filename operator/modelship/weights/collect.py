"""`modelship collect`, and the pruning a download does on a volume of its own: snapshots
nothing uses any more leave the volume, then the blobs only they linked to."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable

from .volume import FetchError, blob_lock, forget_uses, full_is_said, repo_of, used_by_others, volume_lock


def _linked(folder: Path) -> set[str]:
    """The blobs a repo folder's snapshots link to."""
    return {os.path.realpath(p) for p in (folder / "snapshots").rglob("*") if p.is_symlink()}


def _prune_repo(folder: Path, keep: set[str], log: Callable[[str], None]) -> int:
    """One `models--org--name` folder: its snapshots not kept, then its blobs nothing links to
    (each under its lock, looked at again once held). Returns the bytes freed."""
    repo = repo_of(folder)
    for snap in sorted((folder / "snapshots").glob("*")):
        if f"{repo}@{snap.name}" not in keep:
            shutil.rmtree(snap, ignore_errors=True)
            log(f"pruned snapshot {repo}@{snap.name[:7]}")
    freed = 0
    linked = _linked(folder)
    for blob in sorted((folder / "blobs").glob("*")):
        if str(blob.resolve()) in linked:
            continue
        with blob_lock(folder, blob.name.removesuffix(".incomplete"), wait=False) as held:
            if held and str(blob.resolve()) not in _linked(folder):  # not being downloaded or linked now
                freed += blob.stat().st_size
                blob.unlink(missing_ok=True)
    if not any((folder / "snapshots").glob("*")) and not any((folder / "blobs").glob("*")):
        shutil.rmtree(folder, ignore_errors=True)
    return freed


def prune(dest: Path, keep: set[str], log: Callable[[str], None], user: str | None = None) -> int:
    """Remove snapshots not in `keep` ("org/name@sha") and not used by another namespace (as
    recorded on the volume), then blobs no snapshot links to and abandoned partial files. A
    blob whose lock another Job holds is left alone. `user`'s own records of snapshots not
    kept go first. Returns the bytes freed."""
    if user:
        forget_uses(dest, user, keep)
    keep = set(keep) | used_by_others(dest, user)
    freed = sum(_prune_repo(folder, keep, log) for folder in sorted(dest.glob("models--*")))
    if freed:
        log(f"pruned {freed} bytes no snapshot uses")
    return freed


def collect(dest: str, keep: list[str], log: Callable[[str], None], user: str | None = None) -> int:
    """Remove every snapshot not in `keep` and the blobs only they used, alone on the volume.
    Returns the bytes freed; prints one JSON line saying so (the operator reads it)."""
    for k in keep:
        if not re.fullmatch(r"[^@\s]+/[^@\s]+@[0-9a-f]{40}", k):
            raise FetchError(f"--keep {k!r} is not ORG/NAME@COMMIT_SHA")
    root = Path(dest)
    if not root.is_dir():
        raise FetchError(f"--dest {dest} is not a folder (is the volume mounted?)")
    with full_is_said(root), volume_lock(root, exclusive=True, log=log):
        freed = prune(root, set(keep), log, user)
    print(json.dumps({"event": "collected", "freed": freed}), flush=True)
    return freed
