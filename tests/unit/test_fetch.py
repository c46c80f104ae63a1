"""`modelship fetch` against the fake Hub: the layout, resuming, verification, refusals."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
from pathlib import Path

import pytest

from modelship import weights
from modelship_testbed.hub_fake import FakeHub, FakeRepo

SHA = "3" * 40
MiB = 1024 * 1024
GGUF = (b"GGUF" + bytes(range(256)) * 4096 * 3)[: 3 * MiB]
CONFIG = b'{"architectures": ["X"]}'
SECOND = b"second weights" * 50_000


@pytest.fixture
def hub():
    h = FakeHub()
    h.add_repo(FakeRepo("org/m", {SHA: {"m-Q4_K_M.gguf": GGUF, "config.json": CONFIG, "sub/w.safetensors": SECOND,
                                        "../evil.gguf": b"x"}}, {"main": SHA}))
    h.add_repo(FakeRepo("org/gated", {SHA: {"m.gguf": b"gated"}}, {"main": SHA}, gated=True, tokens={"ok"}))
    h.start()
    yield h
    h.stop()


def spec(path: str, data: bytes, with_sha: bool = True) -> str:
    return f"{len(data)}:{hashlib.sha256(data).hexdigest() if with_sha else ''}:{path}"


def run(hub, dest: Path, files: list[str], repo: str = "org/m", **kw):
    lines: list[str] = []
    out = io.StringIO()  # a stream of this run's own: tests run fetchers in threads, and stdout is the process's
    fetcher = weights.Fetcher(repo, SHA, hub.url, dest, kw.pop("token", None), lines.append, retry_delay=0.01, **kw)
    progress = fetcher.fetch_all([weights.parse_file(f) for f in files], emit_every=0.05, out=out)
    fetcher.progress_lines = [json.loads(l) for l in out.getvalue().splitlines()]
    return progress, lines, fetcher


def snapshot(dest: Path, repo: str = "org/m") -> Path:
    return dest / f"models--{repo.replace('/', '--')}" / "snapshots" / SHA


def test_files_land_content_addressed_and_linked_from_the_snapshot(hub, tmp_path):
    progress, lines, f = run(hub, tmp_path, [spec("m-Q4_K_M.gguf", GGUF), spec("config.json", CONFIG, False),
                                             spec("sub/w.safetensors", SECOND)])
    snap = snapshot(tmp_path)
    for name, data in (("m-Q4_K_M.gguf", GGUF), ("config.json", CONFIG), ("sub/w.safetensors", SECOND)):
        link = snap / name
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))
        assert link.read_bytes() == data
        assert Path(os.path.realpath(link)).name == hashlib.sha256(data).hexdigest()
    assert progress.done == progress.total == len(GGUF) + len(CONFIG) + len(SECOND)
    last = f.progress_lines[-1]
    assert last["event"] == "done" and last["done"] == last["total"] and last["files_done"] == 3
    assert not list(tmp_path.rglob("*.incomplete"))
    # A second run finds everything in place and downloads nothing.
    served = dict(hub.served)
    run(hub, tmp_path, [spec("m-Q4_K_M.gguf", GGUF), spec("config.json", CONFIG, False)])
    assert hub.served == served


def test_a_dropped_connection_resumes_where_it_stopped(hub, tmp_path):
    hub.cut_after["m-Q4_K_M.gguf"] = MiB
    progress, lines, _ = run(hub, tmp_path, [spec("m-Q4_K_M.gguf", GGUF)])
    assert (snapshot(tmp_path) / "m-Q4_K_M.gguf").read_bytes() == GGUF
    assert any("retrying m-Q4_K_M.gguf" in l for l in lines), lines
    assert hub.served["m-Q4_K_M.gguf"] == len(GGUF)  # 1 MiB, then the rest from a Range request: no byte twice
    assert progress.done == len(GGUF)


def test_a_killed_download_resumes_from_its_partial_file(hub, tmp_path):
    digest = hashlib.sha256(GGUF).hexdigest()
    blobs = tmp_path / "models--org--m" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{digest}.incomplete").write_bytes(GGUF[: 2 * MiB])  # what a killed pod left behind
    run(hub, tmp_path, [spec("m-Q4_K_M.gguf", GGUF)])
    assert (snapshot(tmp_path) / "m-Q4_K_M.gguf").read_bytes() == GGUF
    assert hub.served["m-Q4_K_M.gguf"] == len(GGUF) - 2 * MiB


def test_a_corrupted_byte_is_caught_and_nothing_becomes_visible(hub, tmp_path):
    hub.corrupt.add("m-Q4_K_M.gguf")
    with pytest.raises(weights.FetchError, match="sha256 .* instead of .*twice.*corrupt"):
        run(hub, tmp_path, [spec("m-Q4_K_M.gguf", GGUF)])
    assert not (snapshot(tmp_path) / "m-Q4_K_M.gguf").exists()
    kept = [p for p in tmp_path.rglob("*") if p.is_file() and p.parent.name != ".locks"]
    assert not kept  # no blob, no partial file


def test_a_wrong_preloaded_file_is_replaced_and_a_right_one_kept(hub, tmp_path):
    snap = snapshot(tmp_path)
    snap.mkdir(parents=True)
    (snap / "config.json").write_bytes(CONFIG)  # right: kept as it is
    (snap / "m-Q4_K_M.gguf").write_bytes(b"not the weights")  # wrong: replaced
    run(hub, tmp_path, [spec("m-Q4_K_M.gguf", GGUF), spec("config.json", CONFIG)])
    assert not (snap / "config.json").is_symlink() and "config.json" not in hub.served
    assert (snap / "m-Q4_K_M.gguf").read_bytes() == GGUF


@pytest.mark.parametrize("bad", ["../evil.gguf", "/etc/passwd", "a/../../b", "sub/./x"])
def test_names_that_leave_the_volume_are_refused_before_anything_is_written(hub, tmp_path, bad):
    with pytest.raises(weights.FetchError, match="could leave the snapshot folder"):
        run(hub, tmp_path, [spec("config.json", CONFIG), f"1::{bad}"])
    assert not list(tmp_path.iterdir())


def test_a_gated_file_needs_the_token(hub, tmp_path):
    with pytest.raises(weights.FetchError, match="token from model.tokenSecretRef is missing or has no access"):
        run(hub, tmp_path, [spec("m.gguf", b"gated")], repo="org/gated")
    run(hub, tmp_path, [spec("m.gguf", b"gated")], repo="org/gated", token="ok")
    assert (snapshot(tmp_path, "org/gated") / "m.gguf").read_bytes() == b"gated"


def test_the_command_fails_with_one_line(tmp_path):
    from click.testing import CliRunner

    from modelship.cli import main

    result = CliRunner().invoke(main, ["fetch", "--repo", "org/m", "--revision", "main", "--dest", str(tmp_path),
                                       "--file", "1::a"])
    assert result.exit_code == 1
    assert "Error: --revision 'main' is not a commit sha" in result.output
    assert "Traceback" not in result.output


def test_two_fetchers_of_the_same_files_download_them_once(hub, tmp_path):
    """ModelDeployments sharing a cache volume run their Jobs at once: one copy, one download."""
    import threading

    hub.chunk_delay = 0.002  # long enough for both to be downloading at once
    errors = []

    def one():
        try:
            run(hub, tmp_path, [spec("m-Q4_K_M.gguf", GGUF), spec("sub/w.safetensors", SECOND)])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert hub.served["m-Q4_K_M.gguf"] == len(GGUF) and hub.served["sub/w.safetensors"] == len(SECOND)
    assert (snapshot(tmp_path) / "m-Q4_K_M.gguf").read_bytes() == GGUF
    assert len([p for p in (tmp_path / "models--org--m" / "blobs").iterdir()]) == 2  # no lock files left


def test_the_token_goes_to_the_hub_and_not_to_its_cdn(tmp_path):
    """The Hub redirects LFS files to a CDN on another host: the token must not follow."""
    h = FakeHub(cdn_host="127.0.0.2")
    h.add_repo(FakeRepo("org/gated", {SHA: {"m.gguf": b"gated", "config.json": b"{}"}}, {"main": SHA},
                        gated=True, tokens={"ok"}))
    h.start()
    try:
        run(h, tmp_path, [spec("m.gguf", b"gated"), spec("config.json", b"{}")], repo="org/gated", token="ok")
    finally:
        h.stop()
    assert (snapshot(tmp_path, "org/gated") / "m.gguf").read_bytes() == b"gated"
    cdn = [a for a in h.authorized if a[0] == "127.0.0.2"]
    hub = [a for a in h.authorized if a[0] == "127.0.0.1"]
    assert cdn and not any(had for _, _, had in cdn)  # the LFS file came from the CDN, without the token
    assert hub and all(had for _, _, had in hub)  # config.json came from the Hub itself, with it


def test_prune_keeps_what_is_served_and_wanted_and_removes_the_rest(hub, tmp_path):
    other = "4" * 40
    old = hub.repos["org/m"]
    hub.add_repo(FakeRepo("org/m", {**old.commits, other: {"m-Q4_K_M.gguf": b"older weights",
                                                           "config.json": CONFIG}}, old.refs))
    hub.add_repo(FakeRepo("org/gone", {SHA: {"g.gguf": b"nobody serves this"}}, {"main": SHA}))
    # Three snapshots on one volume: the one served, an older one, another repo's.
    weights.download("org/m", other, hub.url, str(tmp_path), [spec("m-Q4_K_M.gguf", b"older weights"),
                                                        spec("config.json", CONFIG)], log=lambda _: None)
    weights.download("org/gone", SHA, hub.url, str(tmp_path), [spec("g.gguf", b"nobody serves this")], log=lambda _: None)
    # The new revision downloads while `other` is still served: both stay, the rest goes.
    lines: list[str] = []
    weights.download("org/m", SHA, hub.url, str(tmp_path), [spec("m-Q4_K_M.gguf", GGUF), spec("config.json", CONFIG)],
              log=lines.append, keep=[f"org/m@{other}"])
    snaps = sorted(p.name for p in (tmp_path / "models--org--m" / "snapshots").iterdir())
    assert snaps == sorted([SHA, other]) and not (tmp_path / "models--org--gone").exists()
    assert (snapshot(tmp_path) / "m-Q4_K_M.gguf").read_bytes() == GGUF
    # The served revision done with: the next download keeps only itself, and its blobs.
    weights.download("org/m", SHA, hub.url, str(tmp_path), [spec("m-Q4_K_M.gguf", GGUF), spec("config.json", CONFIG)],
              log=lines.append, keep=[])
    assert [p.name for p in (tmp_path / "models--org--m" / "snapshots").iterdir()] == [SHA]
    blobs = sorted(p.name for p in (tmp_path / "models--org--m" / "blobs").iterdir())
    assert blobs == sorted([hashlib.sha256(GGUF).hexdigest(), hashlib.sha256(CONFIG).hexdigest()])
    assert any(l.startswith("pruned snapshot org/m@4444444") for l in lines)


def test_prune_leaves_a_blob_another_job_is_writing(tmp_path):
    import fcntl

    repo = tmp_path / "models--org--m"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots").mkdir()
    (repo / ".locks").mkdir()
    part = repo / "blobs" / ("c" * 64 + ".incomplete")
    part.write_bytes(b"half")
    abandoned = repo / "blobs" / ("d" * 64 + ".incomplete")
    abandoned.write_bytes(b"left by a killed pod")
    with open(repo / ".locks" / ("c" * 64), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another Job is downloading this one
        weights.prune(tmp_path, set(), lambda _: None)
    assert part.exists() and not abandoned.exists()


def test_collect_keeps_what_is_in_use_and_frees_the_rest(hub, tmp_path):
    hub.add_repo(FakeRepo("org/gone", {SHA: {"g.gguf": b"nobody serves this"}}, {"main": SHA}))
    weights.download("org/m", SHA, hub.url, str(tmp_path), [spec("m-Q4_K_M.gguf", GGUF)], log=lambda _: None)
    weights.download("org/gone", SHA, hub.url, str(tmp_path), [spec("g.gguf", b"nobody serves this")], log=lambda _: None)
    out = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(out):
        freed = weights.collect(str(tmp_path), [f"org/m@{SHA}"], log=lambda _: None)
    assert freed == len(b"nobody serves this")
    assert json.loads(out.getvalue()) == {"event": "collected", "freed": freed}
    assert not (tmp_path / "models--org--gone").exists()
    assert (snapshot(tmp_path) / "m-Q4_K_M.gguf").read_bytes() == GGUF
    with pytest.raises(weights.FetchError, match="is not ORG/NAME@COMMIT_SHA"):
        weights.collect(str(tmp_path), ["org/m@main"], log=lambda _: None)


def test_collect_waits_for_the_downloads_on_the_volume(hub, tmp_path):
    """A download holds the volume shared; a collection waits for it, then removes what it
    was not told to keep (and the download started first, so it had the volume first)."""
    import threading

    weights.download("org/m", SHA, hub.url, str(tmp_path), [spec("m-Q4_K_M.gguf", GGUF)], log=lambda _: None)
    said: list[str] = []
    with weights.volume_lock(tmp_path, exclusive=False):  # a download in progress
        t = threading.Thread(target=weights.collect, args=(str(tmp_path), [], said.append))
        t.start()
        # First a sign that the collection got as far as the lock (a thread may take a while
        # to start on a loaded machine), then a moment in which a collection that did not
        # wait would remove the snapshot.
        deadline = time.monotonic() + 5
        while not said and time.monotonic() < deadline:
            time.sleep(0.01)
        t.join(0.5)
        assert t.is_alive() and snapshot(tmp_path).exists()  # waiting, nothing removed yet
        assert said == ["waiting for the downloads on this volume to finish"]
    t.join(5)
    assert not t.is_alive() and not (tmp_path / "models--org--m").exists()


def test_a_file_kept_in_git_is_verified_by_its_git_blob_id(hub, tmp_path):
    from modelship_testbed.hub_fake import git_blob_sha1

    good = f"{len(CONFIG)}:git-{git_blob_sha1(CONFIG)}:config.json"
    run(hub, tmp_path, [good])
    assert (snapshot(tmp_path) / "config.json").read_bytes() == CONFIG
    # A pre-loaded plain file of the right size but other bytes is caught and replaced.
    target = snapshot(tmp_path) / "config.json"
    target.unlink()
    target.write_bytes(CONFIG.replace(b"X", b"Y"))
    run(hub, tmp_path, [good])
    assert target.is_symlink() and target.read_bytes() == CONFIG
    # The source serving other bytes than the id names: refused, nothing becomes visible.
    wrong = f"{len(CONFIG)}:git-{'0' * 40}:config.json"
    with pytest.raises(weights.FetchError, match="git blob sha1 .* instead of 0000.*twice.*corrupt"):
        run(hub, tmp_path / "other", [wrong])
    assert not (snapshot(tmp_path / "other") / "config.json").exists()
    with pytest.raises(weights.FetchError, match="not 40 hex digits"):
        weights.parse_file("2:git-abc:x.json")


def test_a_volume_shared_by_namespaces_keeps_what_another_namespace_uses(hub, tmp_path):
    """Each namespace collects with only its own ModelDeployments in view; the records on the
    volume keep it from removing what another namespace still serves."""
    hub.add_repo(FakeRepo("org/b", {SHA: {"b.gguf": b"team b's weights"}}, {"main": SHA}))
    weights.download("org/m", SHA, hub.url, str(tmp_path), [spec("m-Q4_K_M.gguf", GGUF)], log=lambda _: None, user="team-a")
    weights.download("org/b", SHA, hub.url, str(tmp_path), [spec("b.gguf", b"team b's weights")], log=lambda _: None,
              user="team-b")
    weights.download("org/m", SHA, hub.url, str(tmp_path), [spec("m-Q4_K_M.gguf", GGUF)], log=lambda _: None, user="team-b")
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:  # team a no longer uses org/m, and never used org/b: team b uses both
        assert weights.collect(str(tmp_path), [], log=lambda _: None, user="team-a") == 0
    assert snapshot(tmp_path).exists() and snapshot(tmp_path, "org/b").exists()
    assert sorted(p.name for p in (tmp_path / weights.USERS / "team-a").glob("*")) == []
    with contextlib.redirect_stdout(io.StringIO()):  # team b moves on from org/m: nobody uses it now
        weights.collect(str(tmp_path), [f"org/b@{SHA}"], log=lambda _: None, user="team-b")
    assert not (tmp_path / "models--org--m").exists() and snapshot(tmp_path, "org/b").exists()
    with pytest.raises(weights.FetchError, match="not a namespace name"):
        weights.record_use(tmp_path, "../x", f"org/b@{SHA}")
