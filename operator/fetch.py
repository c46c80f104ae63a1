"""`modelship fetch`: what the download Job runs.

It lays files out as the Hub cache does (`models--org--name/snapshots/<sha>/<path>`), so one
volume can hold several revisions and engines find a plain folder per commit. A file already
there with the right size (and sha256, where known) is kept; a missing one is downloaded with
`huggingface_hub`. No path may leave DEST, whatever the repository's file names say.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable


class FetchError(Exception):
    pass


def parse_file(spec: str) -> tuple[int, str | None, str]:
    try:
        size, sha, path = spec.split(":", 2)
        return int(size), (sha or None), path
    except ValueError:
        raise FetchError(f"--file {spec!r} is not SIZE:SHA256:PATH") from None


def safe_target(root: Path, rel: str) -> Path:
    """root/rel, refusing names that leave root. Checked on the name itself, not by resolving
    links: in the Hub cache layout every snapshot file is a link into ../../blobs."""
    parts = Path(rel).parts
    if not rel or rel.startswith(("/", "\\")) or ".." in parts or "\x00" in rel or os.path.normpath(rel) != rel:
        raise FetchError(f"refusing file {rel!r}: its path leaves the snapshot folder")
    return root / rel


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check(path: Path, size: int, sha: str | None) -> str | None:
    """None if the file is complete and intact, else what is wrong."""
    if not path.exists():
        return "missing"
    have = path.stat().st_size
    if have != size:
        return f"{have} bytes instead of {size}"
    if sha and sha256_of(path) != sha:
        return "sha256 mismatch"
    return None


def run(repo: str, revision: str, endpoint: str | None, dest: str, files: list[str],
        log: Callable[[str], None]) -> None:
    root = Path(dest) / f"models--{repo.replace('/', '--')}" / "snapshots" / revision
    wanted = [parse_file(f) for f in files]
    targets = [(size, sha, rel, safe_target(root, rel)) for size, sha, rel in wanted]
    total = sum(size for size, *_ in wanted)
    done = 0
    for size, sha, rel, target in targets:
        problem = check(target, size, sha)
        if problem is None:
            done += size
            log(f"ok {rel} ({size} bytes) [{done}/{total} bytes]")
            continue
        log(f"fetching {rel}: {problem}")
        if problem != "missing":  # never keep a wrong copy (nor the blob a snapshot link points to)
            if target.is_symlink() or os.path.islink(root / rel):
                Path(os.path.realpath(root / rel)).unlink(missing_ok=True)
            (root / rel).unlink(missing_ok=True)
        try:
            from huggingface_hub import hf_hub_download

            hf_hub_download(repo, rel, revision=revision, cache_dir=dest, endpoint=endpoint,
                            token=os.environ.get("HF_TOKEN") or None)
        except Exception as e:  # noqa: BLE001 - one line for the Job's termination message
            raise FetchError(f"cannot download {rel} of {repo}@{revision} from {endpoint or 'the Hub'}: "
                             f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
        problem = check(target, size, sha)
        if problem:
            raise FetchError(f"{rel} of {repo}@{revision} is corrupt after download: {problem}")
        done += size
        log(f"ok {rel} ({size} bytes) [{done}/{total} bytes]")
    log(f"all {len(targets)} files of {repo}@{revision} are in place ({total} bytes)")
