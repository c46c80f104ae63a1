"""`modelship fetch`: what the download Job runs (standard library only: it is the Job's program).

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
- no name can leave DEST: names are checked as names first (`volume.unsafe_name`), and
  nothing is read or written through a link that leaves DEST (a pre-loaded volume's).

Progress goes to stdout as one JSON object per line (`{"event": "progress", "done": ...,
"total": ..., "rate": ..., "eta": ...}`), every two seconds and at the end; the operator
reads the last one from the pod's log. Messages for people go to stderr. The exit code is
non-zero with one line saying what failed, which Kubernetes keeps as the termination
message.
"""


from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import ssl
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import quote, urljoin, urlsplit

from .collect import prune
from .hashing import Sink, git_sha1_of, sha256_of
from .volume import (FetchError, blob_lock, full_is_said, inside, is_full, record_use, repo_dir, safe_target,
                     volume_full, volume_lock)

ATTEMPTS = 5


class RetryableHTTP(Exception):
    """An HTTP answer that is worth retrying (5xx, an unexpected status, a redirect loop)."""


class ChecksumError(Exception):
    """The bytes do not hash to what the Hub says: start the file again."""


class Incomplete(Exception):
    """The connection ended before the file did: resume it."""


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


@lru_cache(maxsize=1)
def tls_context() -> ssl.SSLContext:
    """The system's trusted CAs, and those of $MODELSHIP_HUB_CA_BUNDLE (PEM text: the operator's
    `hubCaBundle`, for a mirror with a private CA)."""
    ctx = ssl.create_default_context()
    extra = os.environ.get("MODELSHIP_HUB_CA_BUNDLE")
    if extra:
        try:
            ctx.load_verify_locations(cadata=extra)
        except ssl.SSLError as e:
            raise FetchError(f"MODELSHIP_HUB_CA_BUNDLE (the operator's hubCaBundle) is not PEM certificates: {e}")
    return ctx


class Fetcher:
    def __init__(self, repo: str, revision: str, endpoint: str, dest: Path, token: str | None,
                 log: Callable[[str], None], parallel: int = 4, timeout: float = 30.0, retry_delay: float = 1.0):
        if not re.fullmatch(r"[0-9a-f]{40}", revision):
            raise FetchError(f"--revision {revision!r} is not a commit sha (the operator pins one before "
                             f"downloading)")
        self.repo, self.revision, self.endpoint = repo, revision, endpoint.rstrip("/")
        self.dest, self.repo_dir = dest, repo_dir(dest, repo)
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
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(parts.netloc, timeout=self.timeout, context=tls_context())
            else:
                conn = http.client.HTTPConnection(parts.netloc, timeout=self.timeout)
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
        raise RetryableHTTP(f"too many redirects for {urlsplit(url)._replace(query='').geturl()}")

    def url(self, path: str) -> str:
        return f"{self.endpoint}/{self.repo}/resolve/{self.revision}/{quote(path)}"

    # --- one file ---------------------------------------------------------------------------

    def present(self, w: Wanted, target: Path) -> bool:
        """Whether the snapshot already holds this file, intact. A link out of the volume (a
        pre-loaded one) is refused: neither read nor written through."""
        inside(self.dest, target.parent, f"the folder of {w.path}")
        if target.is_symlink():
            inside(self.dest, target, w.path)
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
        if blob.is_symlink():
            raise FetchError(f"refusing blobs/{key} of {self.repo}: it is a link, not a file; remove it from "
                             f"the volume")
        # Other Jobs may want the same blob at the same time (ModelDeployments sharing a cache
        # volume): one downloads, the others wait and then find it there.
        with blob_lock(self.repo_dir, key):
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
        """Download (or finish downloading) one file into `blob`, retrying; return its sha256."""
        part = blob.with_name(blob.name + ".incomplete")
        part.parent.mkdir(parents=True, exist_ok=True)
        last: Exception | None = None
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return self._attempt(w, part, blob, progress)
            except ChecksumError as e:
                if attempt >= 2:
                    raise FetchError(f"{e} (twice): the source serves corrupt data") from None
                last = e
                self.log(f"retrying {w.path} from scratch: {e}")
            except OSError as e:
                if is_full(e):  # a retry would find it as full: say so at once
                    have = part.stat().st_size if part.exists() else 0
                    raise volume_full(self.repo_dir.parent, w.path, have, w.size) from None
                last = e
                self.log(f"retrying {w.path} (attempt {attempt}/{ATTEMPTS}) after {type(e).__name__}: {e}")
            except (Incomplete, RetryableHTTP, http.client.HTTPException) as e:  # resumed from what is there
                last = e
                self.log(f"retrying {w.path} (attempt {attempt}/{ATTEMPTS}) after {type(e).__name__}: {e}")
            time.sleep(min(self.retry_delay * 2 ** (attempt - 1), 10))
        raise FetchError(f"cannot download {w.path} of {self.repo}@{self.revision} from {self.endpoint}: "
                         f"{type(last).__name__}: {last}")

    def _attempt(self, w: Wanted, part: Path, blob: Path, progress: Progress) -> str:
        """One try: the file, checked whole, renamed into place as `blob`; its sha256. A try
        that fails takes back the bytes it added to the progress."""
        tally = _Tally(progress)
        try:
            digest = self._transfer(w, part, tally)
            _publish(part, blob)
            return digest
        except BaseException:
            tally.take_back()
            raise

    def _transfer(self, w: Wanted, part: Path, tally: "_Tally") -> str:
        """Resume `part` from what it holds, then check it whole; return its sha256."""
        have = part.stat().st_size if part.exists() else 0
        if have > w.size:
            part.unlink()
            have = 0
        tally.add(have)
        headers = {"Range": f"bytes={have}-"} if have else {}
        with self.open(self.url(w.path), headers) as r:
            if r.status in (401, 403):
                raise FetchError(f"{self.repo}: {w.path} answered {r.status}: the token from "
                                 f"model.tokenSecretRef is missing or has no access")
            if r.status == 404:
                raise FetchError(f"{self.repo}@{self.revision} has no file {w.path} (404)")
            complete = r.status == 416 and have == w.size
            if not complete and r.status not in (200, 206):
                raise RetryableHTTP(f"HTTP {r.status} for {w.path}")
            if r.status == 200 and have:  # the server ignored Range: start over
                tally.add(-have)
                have = 0
            with Sink(part, keep=have, git_size=w.size if w.git_sha1 and not w.sha256 else None) as sink:
                # Large reads straight from the socket into reused buffers (http.client:
                # a third faster than httpx's streaming here); hashed in a thread.
                written = have
                while not complete and (n := sink.fill(r)):
                    tally.add(n)
                    written += n
                    if written > w.size:  # more than the Hub lists: stop before it fills the volume
                        break
                digest = sink.finish()  # hashed, and on disk
                got = sink.git.hexdigest() if sink.git else None
        size = part.stat().st_size
        if size > w.size:  # more than the Hub listed: not this file
            part.unlink()
            raise ChecksumError(f"{w.path}: {size} bytes served, the Hub lists {w.size}")
        if size != w.size:
            raise Incomplete(f"{w.path}: {size} bytes so far, expected {w.size}")
        if w.sha256 and digest != w.sha256:
            part.unlink()
            raise ChecksumError(f"{w.path}: sha256 {digest} instead of {w.sha256}")
        if got is not None and got != w.git_sha1:
            part.unlink()
            raise ChecksumError(f"{w.path}: git blob sha1 {got} instead of {w.git_sha1}")
        return digest

    def link(self, target: Path, blob: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        inside(self.dest, target.parent, f"the folder of {target.name}")  # made through no link out
        rel = os.path.relpath(blob, target.parent)
        # A name of its own: another Job (or thread) may be linking the same file right now.
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.link")
        tmp.unlink(missing_ok=True)
        os.symlink(rel, tmp)
        os.replace(tmp, target)

    # --- all files --------------------------------------------------------------------------

    def fetch_all(self, wanted: list[Wanted], emit_every: float = 2.0, out=None) -> Progress:
        """Every file; progress lines go to `out` (default: stdout, the Job's log, which the operator reads)."""
        for w in wanted:
            safe_target(self.snapshot, w.path)  # refuse a bad name before anything is written
        for folder in (self.repo_dir, self.snapshot, self.blobs, self.repo_dir / ".locks"):
            inside(self.dest, folder, f"{folder.relative_to(self.dest)}")  # a pre-loaded volume's links
        progress = Progress(sum(w.size for w in wanted), len(wanted), out)
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


class _Tally:
    """The bytes one try adds to the progress, so that a try that fails can take them back."""

    def __init__(self, progress: Progress) -> None:
        self.progress, self.added = progress, 0

    def add(self, n: int) -> None:
        self.progress.add(n)
        self.added += n

    def take_back(self) -> None:
        self.progress.add(-self.added)
        self.added = 0


def _publish(part: Path, blob: Path) -> None:
    """Rename a verified file into place. It is on disk (Sink.finish) before it is visible:
    after a crash a blob's name must still mean its bytes."""
    os.replace(part, blob)
    dir_fd = os.open(blob.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def download(repo: str, revision: str, endpoint: str | None, dest: str, files: list[str],
             log: Callable[[str], None], parallel: int = 4, retry_delay: float = 1.0,
             keep: list[str] | None = None, user: str | None = None) -> Progress:
    """`modelship fetch`: every file, verified, under the volume's shared lock; then, on a
    volume of one ModelDeployment's own (`keep` given), what is neither kept nor this goes."""
    wanted = [parse_file(f) for f in files]
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    fetcher = Fetcher(repo, revision, endpoint, Path(dest), os.environ.get("HF_TOKEN") or None, log, parallel,
                      retry_delay=retry_delay)
    with full_is_said(Path(dest)), volume_lock(Path(dest), exclusive=False, log=log):
        progress = fetcher.fetch_all(wanted)
        log(f"all {len(wanted)} files of {repo}@{revision} are in place ({progress.total} bytes)")
        if user:
            record_use(Path(dest), user, f"{repo}@{revision}")
        if keep is not None:  # this volume's own: what is not served or about to be goes
            prune(Path(dest), set(keep) | {f"{repo}@{revision}"}, log, user)
    return progress
