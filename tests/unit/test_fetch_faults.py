"""`modelship fetch` against a mirror that misbehaves (stalls mid-file, sends too much, sends
wrong bytes), hostile names at write time, and a pre-loaded volume (storage.existingClaim)
whose links point out of it: each ends in one line saying what failed, in bounded time, with
no bad bytes left and nothing written outside the volume."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from modelship import weights
from modelship.weights import fetch as fetch_module
from modelship.weights.volume import unsafe_name
from modelship_testbed.hub_fake import FakeHub, FakeRepo

SHA = "4" * 40
MiB = 1024 * 1024
GGUF = (b"GGUF" + bytes(range(256)) * 4096)[: MiB]


@pytest.fixture
def hub():
    h = FakeHub()
    h.add_repo(FakeRepo("org/m", {SHA: {"m-Q4_K_M.gguf": GGUF, "config.json": b"{}"}}, {"main": SHA}))
    h.start()
    yield h
    h.stop()


def spec(path: str, data: bytes) -> str:
    return f"{len(data)}:{hashlib.sha256(data).hexdigest()}:{path}"


def fetcher(hub, dest: Path, timeout: float = 5.0) -> weights.Fetcher:
    return weights.Fetcher("org/m", SHA, hub.url, dest, None, lambda m: None, retry_delay=0.01, timeout=timeout)


def fetch(hub, dest: Path, files: list[str], timeout: float = 5.0):
    return fetcher(hub, dest, timeout).fetch_all([weights.parse_file(f) for f in files], emit_every=60,
                                                out=open(os.devnull, "w"))


def leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in (dest / "models--org--m" / "blobs").glob("*"))


def test_a_stall_mid_file_times_out_and_resumes(hub, tmp_path):
    hub.stall_after["m-Q4_K_M.gguf"] = (256 * 1024, 5.0)  # once: the next try gets the rest
    started = time.monotonic()
    fetch(hub, tmp_path, [spec("m-Q4_K_M.gguf", GGUF)], timeout=0.5)
    assert time.monotonic() - started < 4  # the read timed out; it did not wait for the stall to end
    assert (tmp_path / "models--org--m" / "snapshots" / SHA / "m-Q4_K_M.gguf").read_bytes() == GGUF
    assert hub.served["m-Q4_K_M.gguf"] < 2 * len(GGUF)  # resumed, not started again


def test_a_mirror_that_always_stalls_fails_after_bounded_tries(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_module, "ATTEMPTS", 3)
    stalls = iter(range(10))

    def stall_again(*_):  # every try stalls after 64 KiB more
        hub.stall_after["m-Q4_K_M.gguf"] = (64 * 1024, 3.0)
        next(stalls)
    monkeypatch.setattr(fetch_module.time, "sleep", stall_again)
    stall_again()
    with pytest.raises(weights.FetchError) as e:
        fetch(hub, tmp_path, [spec("m-Q4_K_M.gguf", GGUF)], timeout=0.3)
    assert str(e.value) == (f"cannot download m-Q4_K_M.gguf of org/m@{SHA} from {hub.url}: TimeoutError: "
                            f"timed out")
    assert not (tmp_path / "models--org--m" / "snapshots" / SHA / "m-Q4_K_M.gguf").exists()


def test_wrong_bytes_twice_fail_and_leave_no_partial_file(hub, tmp_path):
    hub.corrupt.add("m-Q4_K_M.gguf")
    good = hashlib.sha256(GGUF).hexdigest()
    bad = hashlib.sha256(bytes([GGUF[0] ^ 0xFF]) + GGUF[1:]).hexdigest()
    with pytest.raises(weights.FetchError) as e:
        fetch(hub, tmp_path, [spec("m-Q4_K_M.gguf", GGUF)])
    assert str(e.value) == f"m-Q4_K_M.gguf: sha256 {bad} instead of {good} (twice): the source serves corrupt data"
    assert leftovers(tmp_path) == []  # neither the bad partial file nor a blob


def test_a_file_longer_than_listed_is_corrupt_not_resumed(hub, tmp_path):
    hub.trailing["m-Q4_K_M.gguf"] = b"trailing garbage"
    with pytest.raises(weights.FetchError) as e:
        fetch(hub, tmp_path, [spec("m-Q4_K_M.gguf", GGUF)])
    assert str(e.value) == (f"m-Q4_K_M.gguf: {len(GGUF) + 16} bytes served, the Hub lists {len(GGUF)} (twice): "
                            f"the source serves corrupt data")
    assert leftovers(tmp_path) == []


def test_a_connection_cut_short_of_its_content_length_resumes(hub, tmp_path):
    hub.cut_after["m-Q4_K_M.gguf"] = 300_000  # the Content-Length said more than came
    fetch(hub, tmp_path, [spec("m-Q4_K_M.gguf", GGUF)])
    assert leftovers(tmp_path) == [hashlib.sha256(GGUF).hexdigest()]


HOSTILE = ["../../etc/passwd", "/etc/passwd", "a/../../b", "m\x00.gguf", "m\n.gguf", "..\\m.gguf",
           "\uff0e\uff0e/m.gguf", "m\u202egguf.exe", "a" * 300, "a/./b", "."]  # (why: test_hub_bad_inputs.py)


@pytest.mark.parametrize("name", HOSTILE)
def test_the_job_refuses_hostile_names_before_writing(hub, tmp_path, name):
    with pytest.raises(weights.FetchError) as e:
        fetch(hub, tmp_path, [spec("config.json", b"{}"), f"1::{name}"])
    assert str(e.value) == f"refusing file {name!r}: {unsafe_name(name)}, so its path could leave the snapshot folder"
    assert list(tmp_path.iterdir()) == []


# --- a pre-loaded volume (storage.existingClaim) ---------------------------------------------

@pytest.fixture
def volume(tmp_path):
    """A pre-loaded volume at tmp_path/vol, and a folder beside it that must stay untouched."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"not yours")
    vol = tmp_path / "vol"
    (vol / "models--org--m" / "snapshots" / SHA).mkdir(parents=True)
    return vol, outside


def snap(vol: Path) -> Path:
    return vol / "models--org--m" / "snapshots" / SHA


@pytest.mark.parametrize("link", ["/etc/passwd", "../../../../outside/secret", "{outside}/secret"])
def test_a_preloaded_link_out_of_the_volume_is_refused(hub, volume, link):
    vol, outside = volume
    target = link.format(outside=outside)
    os.symlink(target, snap(vol) / "m-Q4_K_M.gguf")
    with pytest.raises(weights.FetchError) as e:
        fetch(hub, vol, [spec("m-Q4_K_M.gguf", GGUF)])
    assert str(e.value) == (f"refusing m-Q4_K_M.gguf: it is a link to {os.path.realpath(snap(vol) / target)}, "
                            f"outside the volume; remove that link from the volume (storage.existingClaim)")
    assert os.readlink(snap(vol) / "m-Q4_K_M.gguf") == target and hub.served == {}  # left as it was
    assert (outside / "secret").read_bytes() == b"not yours"


def test_a_preloaded_folder_link_out_of_the_volume_is_never_written_through(hub, volume):
    vol, outside = volume
    os.symlink(outside, snap(vol) / "sub")
    with pytest.raises(weights.FetchError) as e:
        fetch(hub, vol, [spec("sub/m-Q4_K_M.gguf", GGUF)])
    assert str(e.value) == (f"refusing the folder of sub/m-Q4_K_M.gguf: it is a link to {outside}, outside the "
                            f"volume; remove that link from the volume (storage.existingClaim)")
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


@pytest.mark.parametrize("folder", ["models--org--m/blobs", f"models--org--m/snapshots/{SHA}", "models--org--m"])
def test_a_preloaded_layout_folder_that_links_out_is_refused(hub, tmp_path, folder):
    outside, vol = tmp_path / "outside", tmp_path / "vol"
    outside.mkdir()
    (vol / folder).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, vol / folder)
    with pytest.raises(weights.FetchError) as e:
        fetch(hub, vol, [spec("m-Q4_K_M.gguf", GGUF)])
    assert str(e.value).startswith("refusing models--org--m") and "outside the volume" in str(e.value)
    assert list(outside.iterdir()) == []


def test_a_link_inside_the_volume_to_no_blob_is_replaced_by_the_verified_download(hub, volume):
    vol, _ = volume
    (vol / "elsewhere").mkdir()
    (vol / "elsewhere" / "m.gguf").write_bytes(b"something else")
    os.symlink("../../../elsewhere/m.gguf", snap(vol) / "m-Q4_K_M.gguf")
    fetch(hub, vol, [spec("m-Q4_K_M.gguf", GGUF)])
    assert os.readlink(snap(vol) / "m-Q4_K_M.gguf") == f"../../blobs/{hashlib.sha256(GGUF).hexdigest()}"
    assert (vol / "elsewhere" / "m.gguf").read_bytes() == b"something else"  # not written through


def test_a_partial_file_that_is_a_link_is_not_written_through(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_module, "ATTEMPTS", 1)
    outside = tmp_path / "outside"
    outside.write_bytes(b"")
    blobs = tmp_path / "vol" / "models--org--m" / "blobs"
    blobs.mkdir(parents=True)
    os.symlink(outside, blobs / f"{hashlib.sha256(GGUF).hexdigest()}.incomplete")
    with pytest.raises(weights.FetchError, match="Too many levels of symbolic links"):
        fetch(hub, tmp_path / "vol", [spec("m-Q4_K_M.gguf", GGUF)])
    assert outside.read_bytes() == b""


def test_a_source_that_serves_far_past_the_listed_size_is_cut_off_before_filling_the_volume(hub, tmp_path,
                                                                                         monkeypatch):
    """It stops reading at the first chunk past the listed size (the volume would fill first and
    blame itself); the check of the size then calls the source corrupt."""
    from modelship.weights import hashing

    monkeypatch.setattr(hashing, "CHUNK", 4096)
    hub.trailing["m-Q4_K_M.gguf"] = b"x" * (4 << 20)
    with pytest.raises(weights.FetchError) as e:
        fetch(hub, tmp_path, [spec("m-Q4_K_M.gguf", GGUF)])
    served = int(str(e.value).split(": ")[1].split(" bytes served")[0])
    assert len(GGUF) < served <= len(GGUF) + 4096 and "the source serves corrupt data" in str(e.value), e.value
