"""No room on the volume anywhere in a Job, not only in a file's bytes (the lock, the record of
who uses a snapshot, a link, what prune does, the collection's lock): `modelship fetch` and
`modelship collect` end with the one VolumeFull line and exit code 28 (the download Job's
podFailurePolicy fails it at once on that code). Another OSError is not called a full volume."""

from __future__ import annotations

import builtins
import errno
import os
import pathlib
import re
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from modelship.cli import main
from modelship.weights import fetch as fetch_module, volume as volume_module

from .test_fetch import GGUF, SHA, hub, spec  # noqa: F401 - the fixture

USES = f".modelship/users/team-a/org--m@{SHA}"


def enospc(filename=None) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", *([str(filename)] if filename else []))


def full_opening(name: str):
    """`open` in volume.py, as the OS answers it when `name` cannot be created."""
    def opener(path, *args, **kw):
        if pathlib.Path(path).name == name:
            raise enospc(path)
        return builtins.open(path, *args, **kw)
    return opener


def full_touch(self, *a, **kw):
    raise enospc(self)


def full_prune(*a, **kw):
    raise enospc()  # (no file named: a journal, a folder's own block)


def full_symlink(src, dst, *a, **kw):
    raise enospc(dst)


FAULTS = {  # id: (what to patch, with what) -> what the line says was being written
    "the volume's lock": ((volume_module, "open", full_opening(".modelship.lock")), ".modelship.lock"),
    "the record of who uses the snapshot": ((pathlib.Path, "touch", full_touch), USES),
    "prune, afterwards": ((fetch_module, "prune", full_prune), "to the volume"),
}


@pytest.fixture(autouse=True)
def statvfs(monkeypatch):
    """A volume of 1 MiB with nothing free, so the line is known to the letter."""
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_bavail=0, f_frsize=4096, f_blocks=256))


def line(what: str, dest) -> str:
    return (f"Error: the volume is full: no space left writing {what} (0 of 1048576 bytes free on {dest}): grow the "
            f"claim or free space on it; the download then resumes from the bytes already there")


def fetch(hub, dest):
    return CliRunner().invoke(main, ["fetch", "--repo", "org/m", "--revision", SHA, "--endpoint", hub.url,
                                     "--dest", str(dest), "--file", spec("m-Q4_K_M.gguf", GGUF), "--user", "team-a",
                                     "--prune"])


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_no_room_outside_the_files_bytes_exits_28_with_the_one_line(hub, tmp_path, monkeypatch, fault):
    (target, name, fake), what = FAULTS[fault]
    monkeypatch.setattr(target, name, fake, raising=False)
    result = fetch(hub, tmp_path)
    assert (result.exit_code, result.output.splitlines()[-1]) == (28, line(what, tmp_path))


def test_no_room_for_a_snapshot_link_exits_28_with_its_name(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "symlink", full_symlink)
    result = fetch(hub, tmp_path)
    name = result.output.splitlines()[-1].split("writing ", 1)[1].split(" (", 1)[0]
    assert re.fullmatch(rf"models--org--m/snapshots/{SHA}/\.m-Q4_K_M\.gguf\.\d+\.\d+\.link", name)  # (made aside)
    assert (result.exit_code, result.output.splitlines()[-1]) == (28, line(name, tmp_path))


def test_no_room_for_the_collections_lock_exits_28_too(tmp_path, monkeypatch):
    monkeypatch.setattr(volume_module, "open", full_opening(".modelship.lock"), raising=False)
    result = CliRunner().invoke(main, ["collect", "--dest", str(tmp_path)])
    assert (result.exit_code, result.output.splitlines()[-1]) == (28, line(".modelship.lock", tmp_path))


def test_another_os_error_is_not_called_a_full_volume(hub, tmp_path, monkeypatch):
    def denied(self, *a, **kw):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))
    monkeypatch.setattr(pathlib.Path, "touch", denied)
    result = fetch(hub, tmp_path)
    assert result.exit_code == 1 and isinstance(result.exception, PermissionError)  # a traceback, not VolumeFull
    assert "the volume is full" not in result.output
