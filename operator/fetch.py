"""`modelship fetch`: what the download Job runs.

Files land in the Hub cache layout, content-addressed:

    DEST/models--org--name/blobs/<sha256>                 the bytes, named by their hash
    DEST/models--org--name/snapshots/<commit>/<path>  ->  ../../blobs/<sha256>

so one volume holds several revisions (and ModelDeployments) with one copy of each file, and
an engine gets a plain folder per commit. For each file:

- a blob that exists with the right size is done (blobs are only ever renamed into place
  after they were verified); a plain file already in the snapshot (a pre-loaded volume) is
  verified (size, and sha256 where known) and kept;
- otherwise it is downloaded to `blobs/<key>.incomplete`, resuming from what is there with
  an HTTP Range request (after a crash, a killed pod, a dropped connection), then checked
  (size, and sha256 where the Hub gives one) and only then renamed into place and linked;
- several files download at once (`--parallel`);
- no name can leave DEST: paths are checked as names, never resolved through links.

Progress goes to stdout as one JSON object per line (`{"event": "progress", "done": ...,
"total": ..., "rate": ..., "eta": ...}`), every two seconds and at the end; the operator
reads the last one from the pod's log. Messages for people go to stderr. The exit code is
non-zero with one line saying what failed, which Kubernetes keeps as the termination
message.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from contextlib import contextmanager
from urllib.parse import quote, urljoin, urlsplit

CHUNK = 1 << 20
ATTEMPTS = 5


class FetchError(Exception):
    pass


@dataclass
class Wanted:
    path: str
    size: int
    sha256: str | None
    git_sha1: str | None = None  # a file kept in git, not LFS: its git blob id

    def verify(self, path: Path) -> bool:
        """Whether the file at `path` is this one (size, then the strongest hash there is)."""
        if path.stat().st_size != self.size:
            return False
        if self.sha256:
            return sha256_of(path) == self.sha256
        if self.git_sha1:
            return git_sha1_of(path) == self.git_sha1
        return True


def parse_file(spec: str) -> Wanted:
    """SIZE:SHA256:PATH, or SIZE:git-SHA1:PATH (a file kept in git), or SIZE::PATH."""
    try:
        size, digest, path = spec.split(":", 2)
        digest = digest.lower()
        git = digest.removeprefix("git-") if digest.startswith("git-") else None
        wanted = Wanted(path, int(size), None if git is not None else (digest or None), git)
    except ValueError:
        raise FetchError(f"--file {spec!r} is not SIZE:SHA256:PATH (or SIZE:git-SHA1:PATH)") from None
    if wanted.sha256 and not re.fullmatch(r"[0-9a-f]{64}", wanted.sha256):
        raise FetchError(f"--file {spec!r}: the sha256 is not 64 hex digits")
    if git is not None and not re.fullmatch(r"[0-9a-f]{40}", git):
        raise FetchError(f"--file {spec!r}: the git blob sha1 is not 40 hex digits")
    return wanted


def safe_target(root: Path, rel: str) -> Path:
    """root/rel, refusing names that leave root. Checked on the name itself, not by resolving
    links: in the Hub cache layout every snapshot file is a link into ../../blobs."""
    parts = Path(rel).parts
    if not rel or rel.startswith(("/", "\\")) or ".." in parts or "\x00" in rel or os.path.normpath(rel) != rel:
        raise FetchError(f"refusing file {rel!r}: its path leaves the snapshot folder")
    return root / rel


def feed(path: Path, update: Callable[[bytes], None]) -> None:
    """Pass a file's bytes, a chunk at a time, to `update` (a hash's)."""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            update(chunk)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    feed(path, h.update)
    return h.hexdigest()


def git_sha1_of(path: Path) -> str:
    """The id git gives the file's content: sha1 of `blob <size>\\0` and the bytes."""
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    feed(path, h.update)
    return h.hexdigest()


class Progress:
    def __init__(self, total: int, files: int, out=None):
        self.total, self.files, self.out = total, files, out
        self.done = self.files_done = 0
        self.started = time.monotonic()
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.done += n

    def file_done(self) -> None:
        with self.lock:
            self.files_done += 1

    def line(self, event: str = "progress") -> str:
        with self.lock:
            elapsed = max(time.monotonic() - self.started, 1e-6)
            rate = self.done / elapsed
            left = max(self.total - self.done, 0)
            return json.dumps({"event": event, "done": self.done, "total": self.total, "files_done": self.files_done,
                               "files": self.files, "rate": int(rate),
                               "eta": int(left / rate) if rate > 0 and left else 0})

    def emit(self, event: str = "progress") -> None:
        print(self.line(event), file=self.out or sys.stdout, flush=True)


class Fetcher:
    def __init__(self, repo: str, revision: str, endpoint: str, dest: Path, token: str | None,
                 log: Callable[[str], None], parallel: int = 4, timeout: float = 30.0, retry_delay: float = 1.0):
        if not re.fullmatch(r"[0-9a-f]{40}", revision):
            raise FetchError(f"--revision {revision!r} is not a commit sha (the operator pins one before "
                             f"downloading)")
        self.repo, self.revision, self.endpoint = repo, revision, endpoint.rstrip("/")
        self.repo_dir = dest / f"models--{repo.replace('/', '--')}"
        self.snapshot = self.repo_dir / "snapshots" / revision
        self.blobs = self.repo_dir / "blobs"
        self.log, self.parallel, self.retry_delay = log, max(1, parallel), retry_delay
        self.token, self.timeout = token, timeout

    @contextmanager
    def open(self, url: str, headers: dict[str, str], redirects: int = 5):
        """GET with redirects; the token goes only to the endpoint's own host (not to a CDN)."""
        origin = urlsplit(self.endpoint)
        for _ in range(redirects + 1):
            parts = urlsplit(url)
            conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            conn = conn_cls(parts.netloc, timeout=self.timeout)
            hdrs = {"User-Agent": "modelship-fetch", "Accept-Encoding": "identity", **headers}
            if self.token and (parts.scheme, parts.netloc) == (origin.scheme, origin.netloc):
                hdrs["Authorization"] = f"Bearer {self.token}"
            try:
                conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=hdrs)
                r = conn.getresponse()
                if r.status in (301, 302, 303, 307, 308) and r.getheader("Location"):
                    url = urljoin(url, r.getheader("Location"))
                    r.read()
                    continue
                yield r
                return
            finally:
                conn.close()
        raise HTTPError(f"too many redirects for {urlsplit(url)._replace(query='').geturl()}")

    def url(self, path: str) -> str:
        return f"{self.endpoint}/{self.repo}/resolve/{self.revision}/{quote(path)}"

    # --- one file ---------------------------------------------------------------------------

    def present(self, w: Wanted, target: Path) -> bool:
        """Whether the snapshot already holds this file, intact."""
        if target.is_symlink():
            blob = Path(os.path.realpath(target))
            if blob.parent != self.blobs.resolve() or not blob.exists():
                return False
            if w.sha256 and blob.name == w.sha256:  # renamed into place only once verified
                return blob.stat().st_size == w.size
            return w.verify(blob)
        if target.is_file():  # pre-loaded as a plain file
            return w.verify(target)
        return False

    def fetch_one(self, w: Wanted, progress: Progress) -> None:
        target = safe_target(self.snapshot, w.path)
        if self.present(w, target):
            progress.add(w.size)
            progress.file_done()
            self.log(f"ok {w.path} ({w.size} bytes, already there)")
            return
        key = w.sha256 or hashlib.sha256(f"{self.revision}/{w.path}".encode()).hexdigest()
        blob = self.blobs / key
        self.blobs.mkdir(parents=True, exist_ok=True)
        # Other Jobs may want the same blob at the same time (ModelDeployments sharing a cache
        # volume): one downloads, the others wait and then find it there.
        locks = self.repo_dir / ".locks"  # empty files, kept: deleting one would let two holders in
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / key, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (w.sha256 and blob.exists() and blob.stat().st_size == w.size):
                digest = self.download(w, blob, progress)
                if not w.sha256:  # name a blob without a known hash by its content, like the others
                    named = self.blobs / digest
                    os.replace(blob, named)
                    blob = named
            else:
                progress.add(w.size)
            self.link(target, blob)  # under the lock: a pruner never sees it finished and unlinked
        progress.file_done()
        self.log(f"ok {w.path} ({w.size} bytes)")

    def download(self, w: Wanted, blob: Path, progress: Progress) -> str:
        """Download (or finish downloading) one file into `blob`; return its sha256."""
        part = blob.with_name(blob.name + ".incomplete")
        part.parent.mkdir(parents=True, exist_ok=True)
        last: Exception | None = None
        for attempt in range(1, ATTEMPTS + 1):
            have = part.stat().st_size if part.exists() else 0
            if have > w.size:
                part.unlink()
                have = 0
            progress.add(have)
            counted = have
            try:
                headers = {"Range": f"bytes={have}-"} if have else {}
                with self.open(self.url(w.path), headers) as r:
                    if r.status in (401, 403):
                        raise FetchError(f"{self.repo}: {w.path} answered {r.status}: the token from "
                                         f"model.tokenSecretRef is missing or has no access")
                    if r.status == 404:
                        raise FetchError(f"{self.repo}@{self.revision} has no file {w.path} (404)")
                    complete = r.status == 416 and have == w.size
                    if not complete and r.status not in (200, 206):
                        raise HTTPError(f"HTTP {r.status} for {w.path}")
                    if r.status == 200 and have:  # the server ignored Range: start over
                        progress.add(-have)
                        counted -= have
                        have = 0
                    with Sink(part, keep=have, git_size=w.size if w.git_sha1 and not w.sha256 else None) as sink:
                        # Large reads straight from the socket into reused buffers (http.client:
                        # a third faster than httpx's streaming here); hashed in a thread.
                        while not complete and (n := sink.fill(r)):
                            progress.add(n)
                            counted += n
                        digest = sink.finish()  # hashed, and on disk
                        got = sink.git.hexdigest() if sink.git else None
                size = part.stat().st_size
                if size != w.size:
                    raise Incomplete(f"{w.path}: {size} bytes so far, expected {w.size}")
                if w.sha256 and digest != w.sha256:
                    part.unlink()
                    raise ChecksumError(f"{w.path}: sha256 {digest} instead of {w.sha256}")
                if got is not None and got != w.git_sha1:
                    part.unlink()
                    raise ChecksumError(f"{w.path}: git blob sha1 {got} instead of {w.git_sha1}")
                # On disk (Sink.finish) before it is visible: after a crash a blob's name must
                # still mean its bytes.
                os.replace(part, blob)
                dir_fd = os.open(blob.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
                return digest
            except ChecksumError as e:
                progress.add(-counted)
                if attempt >= 2:
                    raise FetchError(f"{e} (twice): the source serves corrupt data") from None
                last = e
                self.log(f"retrying {w.path} from scratch: {e}")
            except FetchError:
                progress.add(-counted)
                raise
            except (Incomplete, HTTPError, http.client.HTTPException, OSError) as e:  # resumed from what is there
                progress.add(-counted)
                last = e
                self.log(f"retrying {w.path} (attempt {attempt}/{ATTEMPTS}) after {type(e).__name__}: {e}")
            time.sleep(min(self.retry_delay * 2 ** (attempt - 1), 10))
        raise FetchError(f"cannot download {w.path} of {self.repo}@{self.revision} from {self.endpoint}: "
                         f"{type(last).__name__}: {last}")

    def link(self, target: Path, blob: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        rel = os.path.relpath(blob, target.parent)
        # A name of its own: another Job (or thread) may be linking the same file right now.
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.link")
        tmp.unlink(missing_ok=True)
        os.symlink(rel, tmp)
        os.replace(tmp, target)

    # --- all files --------------------------------------------------------------------------

    def run(self, wanted: list[Wanted], emit_every: float = 2.0) -> Progress:
        for w in wanted:
            safe_target(self.snapshot, w.path)  # refuse a bad name before anything is written
        progress = Progress(sum(w.size for w in wanted), len(wanted))
        stop = threading.Event()

        def reporter() -> None:
            while not stop.wait(emit_every):
                progress.emit()

        thread = threading.Thread(target=reporter, daemon=True)
        thread.start()
        try:
            with ThreadPoolExecutor(self.parallel) as pool:
                for future in [pool.submit(self.fetch_one, w, progress) for w in wanted]:
                    future.result()
        finally:
            stop.set()
            thread.join()
        progress.emit("done")
        return progress


class Sink:
    """Where a download's bytes go: the partial file, written from a few reused buffers, and
    sha256, computed in a thread of its own (hashlib releases the GIL) so that hashing
    overlaps the network and the disk.

    Behind the writes, the thread also starts the writeback of what it has hashed and drops
    it from the page cache (posix_fadvise DONTNEED): the final fsync then has little left to
    do, and a 100 GB download does not fill the Job's memory (page cache is charged to it)
    with pages nobody reads. `keep` bytes already in the file (a resumed download) are
    hashed first."""

    BUFFERS = 4  # a few chunks in flight overlap hashing with I/O; 4 files at once share 1 GiB
    WINDOW = 32 << 20

    def __init__(self, path: Path, keep: int = 0, git_size: int | None = None) -> None:
        import queue

        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.ftruncate(self.fd, keep)
        os.lseek(self.fd, keep, os.SEEK_SET)
        self.h = hashlib.sha256()
        # With `git_size`, also the git blob id of a file of that size, in the same pass.
        self.git = hashlib.sha1(b"blob %d\0" % git_size) if git_size is not None else None
        self.hashes = [self.h] + ([self.git] if self.git else [])
        self.free: "queue.Queue[bytearray]" = queue.Queue()
        for _ in range(self.BUFFERS):
            self.free.put(bytearray(CHUNK))
        self.work: "queue.Queue[tuple[bytearray, int] | None]" = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.closed = False
        try:
            if keep:
                with open(path, "rb") as f:
                    left = keep
                    while left:
                        buf = self.free.get()
                        n = f.readinto(memoryview(buf)[:min(left, CHUNK)])
                        if not n:
                            break
                        self.work.put((buf, n))
                        left -= n
        except BaseException:  # no thread or descriptor left behind
            self.__exit__(None, None, None)
            raise

    def _run(self) -> None:
        done = older = last = 0  # bytes hashed; where the window before the last one began, and the last
        while (item := self.work.get()) is not None:
            buf, n = item
            for h in self.hashes:
                h.update(memoryview(buf)[:n])
            self.free.put(buf)
            done += n
            if done - last >= self.WINDOW and hasattr(os, "posix_fadvise"):
                try:  # writeback starts for the last window; the one before is clean by now, and goes
                    os.posix_fadvise(self.fd, older, done - older, os.POSIX_FADV_DONTNEED)
                except OSError:
                    pass
                older, last = last, done

    def fill(self, r) -> int:
        """Read the next piece of the response `r` into a buffer, write it, pass it on to be
        hashed; return its size (0: the response ended)."""
        buf = self.free.get()
        n = r.readinto(buf)
        if not n:
            self.free.put(buf)
            return 0
        view = memoryview(buf)[:n]
        while view:
            view = view[os.write(self.fd, view):]
        self.work.put((buf, n))
        return n

    def finish(self) -> str:
        """The sha256 of the whole file, once it is on disk."""
        self._stop()
        os.fsync(self.fd)
        return self.h.hexdigest()

    def _stop(self) -> None:
        if not self.closed:
            self.closed = True
            self.work.put(None)
            self.thread.join()

    def __enter__(self) -> "Sink":
        return self

    def __exit__(self, *exc) -> None:
        self._stop()
        os.close(self.fd)


class HTTPError(Exception):
    """An HTTP answer that is worth retrying (5xx, an unexpected status, a redirect loop)."""


class ChecksumError(Exception):
    """The bytes do not hash to what the Hub says: start the file again."""


class Incomplete(Exception):
    """The connection ended before the file did: resume it."""


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


def used_by_others(dest: Path, user: str | None) -> set[str]:
    out = set()
    for marker in (dest / USERS).glob("*/*"):
        if marker.parent.name != user:
            out.add(marker.name.replace("--", "/", 1))
    return out


def prune(dest: Path, keep: set[str], log: Callable[[str], None], user: str | None = None) -> int:
    """Remove snapshots not in `keep` ("org/name@sha") and not used by another namespace (as
    recorded on the volume), then blobs no snapshot links to and abandoned partial files. A
    blob whose lock another Job holds is left alone. `user`'s own records of snapshots not
    kept go first. Returns the bytes freed."""
    if user:
        for marker in (dest / USERS / user).glob("*"):
            if marker.name.replace("--", "/", 1) not in keep:
                marker.unlink(missing_ok=True)
    keep = set(keep) | used_by_others(dest, user)
    freed = 0
    for repo_dir in sorted(dest.glob("models--*")):
        repo = repo_dir.name.removeprefix("models--").replace("--", "/", 1)
        for snap in sorted((repo_dir / "snapshots").glob("*")):
            if f"{repo}@{snap.name}" not in keep:
                shutil.rmtree(snap, ignore_errors=True)
                log(f"pruned snapshot {repo}@{snap.name[:7]}")
        linked = {os.path.realpath(p) for p in (repo_dir / "snapshots").rglob("*") if p.is_symlink()}
        locks = repo_dir / ".locks"
        for blob in sorted((repo_dir / "blobs").glob("*")):
            if str(blob.resolve()) in linked:
                continue
            key = blob.name.removesuffix(".incomplete")
            locks.mkdir(parents=True, exist_ok=True)
            with open(locks / key, "a+") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # being downloaded (or linked) right now
                if str(blob.resolve()) not in {os.path.realpath(p) for p in (repo_dir / "snapshots").rglob("*")
                                               if p.is_symlink()}:
                    freed += blob.stat().st_size
                    blob.unlink(missing_ok=True)
        if not any((repo_dir / "snapshots").glob("*")) and not any((repo_dir / "blobs").glob("*")):
            shutil.rmtree(repo_dir, ignore_errors=True)
    if freed:
        log(f"pruned {freed} bytes no snapshot uses")
    return freed


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


def run(repo: str, revision: str, endpoint: str | None, dest: str, files: list[str],
        log: Callable[[str], None], parallel: int = 4, retry_delay: float = 1.0,
        keep: list[str] | None = None, user: str | None = None) -> Progress:
    wanted = [parse_file(f) for f in files]
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    fetcher = Fetcher(repo, revision, endpoint, Path(dest), os.environ.get("HF_TOKEN") or None, log, parallel,
                      retry_delay=retry_delay)
    with volume_lock(Path(dest), exclusive=False, log=log):
        progress = fetcher.run(wanted)
        log(f"all {len(wanted)} files of {repo}@{revision} are in place ({progress.total} bytes)")
        if user:
            record_use(Path(dest), user, f"{repo}@{revision}")
        if keep is not None:  # this volume's own: what is not served or about to be goes
            prune(Path(dest), set(keep) | {f"{repo}@{revision}"}, log, user)
    return progress


def collect(dest: str, keep: list[str], log: Callable[[str], None], user: str | None = None) -> int:
    """Remove every snapshot not in `keep` and the blobs only they used, alone on the volume.
    Returns the bytes freed; prints one JSON line saying so (the operator reads it)."""
    for k in keep:
        if not re.fullmatch(r"[^@\s]+/[^@\s]+@[0-9a-f]{40}", k):
            raise FetchError(f"--keep {k!r} is not ORG/NAME@COMMIT_SHA")
    root = Path(dest)
    if not root.is_dir():
        raise FetchError(f"--dest {dest} is not a folder (is the volume mounted?)")
    with volume_lock(root, exclusive=True, log=log):
        freed = prune(root, set(keep), log, user)
    print(json.dumps({"event": "collected", "freed": freed}), flush=True)
    return freed
