"""The volume's layout and what every Job on it shares: the Hub cache layout's names, the
records of which namespace uses which snapshot, and the locks.

    DEST/models--org--name/blobs/<sha256>                 the bytes, named by their hash
    DEST/models--org--name/snapshots/<commit>/<path>  ->  ../../blobs/<sha256>
    DEST/models--org--name/.locks/<blob>                  one lock per blob (kept, empty)
    DEST/.modelship/users/<namespace>/<org--name@sha>     who uses what (volumes shared across namespaces)
    DEST/.modelship.lock                                  downloads hold it shared, a collection alone
"""

from __future__ import annotations

import fcntl
import os
import re
import unicodedata
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

CHUNK = 1 << 20


class FetchError(Exception):
    """What a Job says when it fails: one line a person can act on."""

    exit_code = 1


# What a Job says, and its exit code, when the volume has no room left: the Job fails at
# once (its podFailurePolicy: another pod would find the volume as full) and the operator
# names it (condition reason VolumeFull) and tries again later.
VOLUME_FULL = "the volume is full"
VOLUME_FULL_EXIT = 28  # ENOSPC


class VolumeFull(FetchError):
    exit_code = VOLUME_FULL_EXIT


def volume_full(dest: Path, what: str, have: int, size: int) -> VolumeFull:
    """The one line for a volume with no room left, with what it would take."""
    try:
        st = os.statvfs(dest)
        free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    except OSError:
        free = total = 0
    written = f"{have} of {size} bytes written; " if size else ""
    return VolumeFull(f"{VOLUME_FULL}: no space left writing {what} ({written}{free} of "
                      f"{total} bytes free on {dest}): grow the claim or free space on it; the download then "
                      f"resumes from the bytes already there")


def is_full(e: OSError) -> bool:
    import errno

    return e.errno in (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def full_is_said(dest: Path):
    """No room on the volume anywhere in a Job (its locks, its records, its links, a folder;
    a file's bytes say more, in `Fetcher.download`): the one VolumeFull line and exit 28,
    not a traceback and exit 1."""
    try:
        yield
    except OSError as e:
        if not is_full(e):
            raise
        name = os.fsdecode(e.filename) if e.filename is not None else None
        inside_dest = name is not None and os.path.abspath(name).startswith(os.path.abspath(dest) + os.sep)
        raise volume_full(dest, os.path.relpath(name, dest) if inside_dest else name or "to the volume", 0, 0) from None


def repo_dir(dest: Path, repo: str) -> Path:
    return dest / f"models--{repo.replace('/', '--')}"


def repo_of(folder: Path) -> str:
    """`org/name` of a `models--org--name` folder."""
    return folder.name.removeprefix("models--").replace("--", "/", 1)


NAME_MAX, PATH_MAX = 255, 1024  # bytes of one component (most filesystems), of the whole name


def unsafe_name(rel: str) -> str | None:
    """Why a file name of a repository cannot be a path under the snapshot folder (None: it
    can). Judged on the name alone: `..`, `.` or empty components, absolute paths,
    backslashes, control and invisible format characters (NUL, newline, a right-to-left
    override), names that become `..` once Unicode-normalized (fullwidth dots), and
    components longer than a filesystem takes."""
    if not rel:
        return "it is empty"
    if rel.startswith("/"):
        return "it is an absolute path"
    if "\\" in rel:
        return "it has a backslash"
    odd = next((c for c in rel if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")), None)
    if odd is not None:
        return f"it has the control or invisible character U+{ord(odd):04X}"
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts) or any(p in ("", ".", "..") for p in
                                                       unicodedata.normalize("NFKC", rel).split("/")):
        return "it has an empty, '.' or '..' component"
    if len(rel.encode()) > PATH_MAX or any(len(p.encode()) > NAME_MAX for p in parts):
        return f"it is longer than a filesystem takes ({NAME_MAX} bytes a component, {PATH_MAX} in all)"
    return None


def safe_target(root: Path, rel: str) -> Path:
    """root/rel, refusing names that leave root (`unsafe_name`). Checked on the name itself,
    not by resolving links: in the Hub cache layout every snapshot file is a link into
    ../../blobs; `inside` checks the folders once they exist."""
    why = unsafe_name(rel)
    if why is not None:
        raise FetchError(f"refusing file {rel!r}: {why}, so its path could leave the snapshot folder")
    return root / rel


def inside(root: Path, path: Path, what: str) -> Path:
    """`path`, once its links are followed, still under `root` (followed too): a folder of a
    pre-loaded volume (existingClaim) that is a link out of it is refused, never written through."""
    real, top = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    if real != top and top not in real.parents:
        raise FetchError(f"refusing {what}: it is a link to {real}, outside the volume; remove that link "
                         f"from the volume (storage.existingClaim)")
    return path


@contextmanager
def blob_lock(folder: Path, key: str, wait: bool = True):
    """The lock of one blob of a repo folder: yields True when held (False: another Job holds
    it and `wait` is False). Lock files are kept: deleting one would let two holders in."""
    locks = folder / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / key, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True


USERS = Path(".modelship") / "users"  # DEST/.modelship/users/<namespace>/<org--name@sha>: who uses what


def _user_file(dest: Path, user: str, key: str) -> Path:
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", user):
        raise FetchError(f"--user {user!r} is not a namespace name")
    return dest / USERS / user / key.replace("/", "--", 1)


def record_use(dest: Path, user: str, key: str) -> None:
    """Say on the volume itself that `user` (a namespace) uses snapshot `key`: a volume shared
    by several namespaces (ReadWriteMany) is collected by each of them, and none of them sees
    the others' ModelDeployments."""
    marker = _user_file(dest, user, key)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


def _key_of(marker: Path) -> str:
    return marker.name.replace("--", "/", 1)


def used_by_others(dest: Path, user: str | None) -> set[str]:
    """The snapshots other namespaces said they use."""
    return {_key_of(marker) for marker in (dest / USERS).glob("*/*") if marker.parent.name != user}


def forget_uses(dest: Path, user: str, keep: set[str]) -> None:
    """`user`'s records of the snapshots it no longer keeps go."""
    for marker in (dest / USERS / user).glob("*"):
        if _key_of(marker) not in keep:
            marker.unlink(missing_ok=True)


VOLUME_LOCK = ".modelship.lock"


@contextmanager
def volume_lock(dest: Path, exclusive: bool, log: Callable[[str], None] | None = None):
    """The whole volume: downloads hold it shared, a collection holds it alone. The operator
    never starts one while the other runs; this lock makes that hold even for a Job that
    outlived its reason (a retried pod, a Job left from before)."""
    dest.mkdir(parents=True, exist_ok=True)
    # read-write ("a+"): NFSv4 refuses a shared lock on a file opened write-only
    with open(dest / VOLUME_LOCK, "a+") as lock:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(lock, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if log:
                log("waiting for " + ("the downloads on this volume to finish" if exclusive
                                      else "the collection of unused snapshots on this volume to finish"))
            fcntl.flock(lock, mode)
        yield
