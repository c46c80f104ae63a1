"""The host paths a container's stand-in program needs, kept visible under the pod's volumes.

A container on the local node runs a program of this machine (this environment's Python, the
checkout's packages) in a mount namespace of its own, where the pod's volumes are bind-mounted
at their mountPaths. A volume mounted over a folder that holds one of those paths would hide
it: an emptyDir at /tmp, in a checkout under /tmp (a CI clone in /tmp/...), leaves the program
not found. Before such a volume is mounted, each hidden path is bind-mounted into the volume's
own folder at the same place (an empty folder made there for it), and the volume is then
mounted recursively, so that the container sees the path where it was and the rest of the
volume as the pod asked. Only emptyDir volumes are used this way (a folder is made in them; a
user's claim is never written to)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def needed() -> list[Path]:
    """This environment's prefix, its import path, and the folders of the checkout's packages."""
    paths = [Path(sys.prefix), Path(sys.base_prefix)]
    paths += [Path(p) for p in sys.path if p and Path(p).is_dir()]
    for package in ("modelship_testbed", "modelship"):
        spec = importlib.util.find_spec(package)
        if spec and spec.origin:
            paths.append(Path(spec.origin).resolve().parent.parent)
    return topmost(paths)


def topmost(paths: list[Path]) -> list[Path]:
    """The paths, absolute and resolved, without those inside another of them."""
    unique = sorted({p.resolve() for p in paths if p.is_absolute()}, key=lambda p: len(p.parts))
    out: list[Path] = []
    for p in unique:
        if not any(p.is_relative_to(q) for q in out):
            out.append(p)
    return out


def kept_visible(binds: list[tuple[Path, Path]], eligible: set[int], paths: list[Path]) -> list[tuple[int, Path, Path]]:
    """(bind index, host path, stash) for each path that the eligible bind (source, mountPath)
    would hide: the stash is where, in the bind's source folder, the path is mounted first."""
    out = []
    for i, (src, dst) in enumerate(binds):
        if i not in eligible:
            continue
        for p in paths:
            if p != dst and p.is_relative_to(dst):
                out.append((i, p, src / p.relative_to(dst)))
    return out
