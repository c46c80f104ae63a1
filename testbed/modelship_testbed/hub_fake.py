"""A fake Hugging Face Hub that speaks the Hub's HTTP API to the real `huggingface_hub` client.

What it reproduces (the parts the resolver and the downloader use):
- `GET /api/models/{repo}[/revision/{rev}]`: model info with `sha`, `gated`, `private` and
  `siblings`; with `?blobs=true` each sibling has `size` and, for LFS files, `lfs.sha256`
  (a repo can be told to leave sizes out, as the olah mirror does).
- `HEAD|GET /{repo}/resolve/{rev}/{path}`: `X-Repo-Commit` and `ETag`; LFS files answer a
  302 to `/cdn/<sha256>` with `X-Linked-Etag` and `X-Linked-Size`, as the Hub does; `Range`.
- `GET /api/models`: the search `huggingface_hub.list_models` sends (`search`, `author`,
  `filter` (tags; `gguf`/`safetensors` are derived from the files, as the Hub does), `gated`,
  `sort` (descending by the key; `direction=1` ascending), `limit`, `full`/`expand`); siblings
  carry sizes with `full` or `expand=siblings` only while `search_sizes` is on (the real Hub
  gives none). `searchable = False` answers 404 there, as a mirror such as olah does.
- Errors with the Hub's `X-Error-Code` headers: unknown repo (401 RepoNotFound), unknown
  revision (404 RevisionNotFound), missing file (404 EntryNotFound), gated repo without a
  token (401 GatedRepo) or with a token that lacks access (403 GatedRepo), private repo.
- Faults for tests: cut a response after N bytes (once), flip a byte of a file's content, stall
  a response after N bytes (once), send bytes past a file's end, answer the API with an HTML page.
Counters record the bytes served per file, so tests can tell how often a file was downloaded.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

LFS_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".onnx")


@dataclass
class FakeRepo:
    id: str
    commits: dict[str, dict[str, bytes]]  # sha -> {path: content}
    refs: dict[str, str]  # branch or tag -> sha
    gated: bool = False
    private: bool = False
    tokens: set[str] = field(default_factory=set)  # tokens with access (gated or private)
    sizes_in_listing: bool = True  # False: like olah, siblings carry no sizes
    extra_info: dict = field(default_factory=dict)
    downloads: int = 0
    likes: int = 0
    created: str = "2025-01-01T00:00:00.000Z"
    modified: str = "2026-01-01T00:00:00.000Z"
    tags: list[str] = field(default_factory=list)

    def resolve(self, rev: str) -> str | None:
        if rev in self.commits:
            return rev
        return self.refs.get(rev)


_DIGESTS: dict[tuple[int, str], tuple[bytes, str]] = {}


def _digest(data: bytes, kind: str) -> str:
    """A file's hash, computed once per file (not per request: benchmarks fetch 512 MB files
    from this server, on the same two cores as the client)."""
    hit = _DIGESTS.get((id(data), kind))
    if hit is None or hit[0] is not data:
        h = hashlib.sha1(b"blob %d\0" % len(data)) if kind == "git" else hashlib.sha256()
        h.update(data)
        hit = _DIGESTS[(id(data), kind)] = (data, h.hexdigest())
    return hit[1]


def git_blob_sha1(data: bytes) -> str:
    return _digest(data, "git")


def sha256(data: bytes) -> str:
    return _digest(data, "sha256")


def is_lfs(path: str, data: bytes) -> bool:
    return path.endswith(LFS_SUFFIXES) or len(data) > 10 * 1024 * 1024


class FakeHub:
    def __init__(self, cdn_host: str | None = None) -> None:
        self.cdn_host = cdn_host  # another loopback address for the CDN, as the Hub's is another host
        self.authorized: list[tuple[str, str, bool]] = []  # (host, path, had an Authorization header)
        self.repos: dict[str, FakeRepo] = {}
        self.blobs: dict[str, bytes] = {}  # sha256 -> content (the "CDN")
        self.served: dict[str, int] = {}  # path -> bytes sent in GET bodies
        self.cut_after: dict[str, int] = {}  # path -> cut the next GET after this many bytes
        self.corrupt: set[str] = set()  # paths whose content is served with a flipped byte
        self.stall_after: dict[str, tuple[int, float]] = {}  # path -> (bytes, seconds): the next GET stops sending
        self.trailing: dict[str, bytes] = {}  # path -> bytes served past the file's end (a longer file)
        self.garbage: set[str] = set()  # repos whose API answers an HTML page with 200, as a broken proxy
        self.requests: list[tuple[str, str]] = []
        self.ranges: list[tuple[str, int]] = []  # (path, first byte asked for) of each GET of a file's bytes
        self.chunk_delay = 0.0  # seconds between 64 KiB chunks: a slow link, to watch progress
        self.searchable = True  # False: no /api/models search (404), as a mirror such as olah
        self.search_sizes = True  # siblings of a search carry sizes (with full or expand=siblings)
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # --- content ---------------------------------------------------------------------------

    def add_repo(self, repo: FakeRepo) -> FakeRepo:
        self.repos[repo.id] = repo
        for files in repo.commits.values():
            for path, data in files.items():
                if is_lfs(path, data):
                    self.blobs[sha256(data)] = data
        return repo

    # --- HTTP ------------------------------------------------------------------------------

    def _auth(self, request: web.Request, repo: FakeRepo, files: bool) -> web.Response | None:
        token = (request.headers.get("Authorization") or "").removeprefix("Bearer ").strip() or None
        if repo.private and token not in repo.tokens:
            return self._error(401, "RepoNotFound", "Repository not found")
        if repo.gated and files:
            if token is None:
                return self._error(401, "GatedRepo", "Access to model is restricted. You must have access to it "
                                                     "and be authenticated to access it.")
            if token not in repo.tokens:
                return self._error(403, "GatedRepo", "Access to model is restricted and you are not in the "
                                                     "authorized list.")
        return None

    @staticmethod
    def _error(status: int, code: str, message: str) -> web.Response:
        return web.json_response({"error": message}, status=status,
                                 headers={"X-Error-Code": code, "X-Error-Message": message})

    def _repo(self, request: web.Request) -> FakeRepo | None:
        return self.repos.get(f"{request.match_info['org']}/{request.match_info['name']}")

    async def model_info(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        self.requests.append(("info", request.path_qs))
        if repo is None:
            return self._error(401, "RepoNotFound", "Repository not found")
        if repo.id in self.garbage:
            return web.Response(text="<html><body>502 Bad Gateway</body></html>", content_type="text/html")
        if (denied := self._auth(request, repo, files=False)) is not None:
            return denied
        rev = request.match_info.get("rev", "main")
        sha = repo.resolve(rev)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        blobs = request.query.get("blobs") in ("true", "True", "1")
        siblings = []
        for path, data in sorted(repo.commits[sha].items()):
            s: dict = {"rfilename": path}
            if blobs and repo.sizes_in_listing:
                s["size"] = len(data)
                s["blobId"] = git_blob_sha1(data)
                if is_lfs(path, data):
                    s["lfs"] = {"size": len(data), "sha256": sha256(data), "pointerSize": 134}
            siblings.append(s)
        return web.json_response({"_id": repo.id, "id": repo.id, "modelId": repo.id, "sha": sha,
                                  "private": repo.private, "gated": "manual" if repo.gated else False,
                                  "disabled": False, "downloads": repo.downloads, "likes": repo.likes,
                                  "tags": self._tags(repo, sha), "lastModified": repo.modified,
                                  "createdAt": repo.created, "siblings": siblings,
                                  **repo.extra_info})

    @staticmethod
    def _tags(repo: FakeRepo, sha: str) -> list[str]:
        files = repo.commits[sha]
        derived = [t for t, ext in (("gguf", ".gguf"), ("safetensors", ".safetensors"))
                   if any(p.endswith(ext) for p in files)]
        return sorted(set(repo.tags) | set(derived))

    def _search_item(self, repo: FakeRepo, sizes: bool) -> dict:
        sha = repo.resolve("main") or next(iter(repo.commits))
        siblings = [{"rfilename": p, **({"size": len(d)} if sizes else {})}
                    for p, d in sorted(repo.commits[sha].items())]
        return {"_id": repo.id, "id": repo.id, "modelId": repo.id, "sha": sha, "private": repo.private,
                "gated": "manual" if repo.gated else False, "downloads": repo.downloads, "likes": repo.likes,
                "lastModified": repo.modified, "createdAt": repo.created, "tags": self._tags(repo, sha),
                "siblings": siblings}

    async def search(self, request: web.Request) -> web.Response:
        """`GET /api/models`, as the Hub answers `list_models`."""
        self.requests.append(("search", request.path_qs))
        if not self.searchable:
            return web.Response(status=404, text="Not Found")
        q = request.query
        words = [w.lower() for w in q.getall("search", [])]
        wanted_tags = set(q.getall("filter", []))
        expand = q.getall("expand", []) + q.getall("expand[]", [])
        sizes = self.search_sizes and (q.get("full") in ("True", "true", "1") or "siblings" in expand)
        found = [r for r in self.repos.values() if not r.private
                 and all(w in r.id.lower() for w in words)
                 and (not q.get("author") or r.id.split("/")[0] == q["author"])
                 and wanted_tags <= set(self._tags(r, r.resolve("main") or next(iter(r.commits))))
                 and (q.get("gated") is None or r.gated == (q["gated"] in ("True", "true")))]
        key = {"downloads": lambda r: r.downloads, "likes": lambda r: r.likes,
               "lastModified": lambda r: r.modified, "createdAt": lambda r: r.created}.get(q.get("sort", ""))
        if key is not None:
            found.sort(key=key, reverse=q.get("direction", "-1") == "-1")
        if q.get("limit"):
            found = found[: int(q["limit"])]
        return web.json_response([self._search_item(r, sizes) for r in found])

    async def resolve_file(self, request: web.Request) -> web.StreamResponse:
        repo = self._repo(request)
        self.requests.append((request.method, request.path))
        if repo is None:
            return self._error(401, "RepoNotFound", "Repository not found")
        if (denied := self._auth(request, repo, files=True)) is not None:
            return denied
        sha = repo.resolve(request.match_info["rev"])
        if sha is None:
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        path = request.match_info["path"]
        data = repo.commits[sha].get(path)
        if data is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist")
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if is_lfs(path, data):
            digest = sha256(data)
            cdn = self.url.replace("127.0.0.1", self.cdn_host) if self.cdn_host else self.url
            headers.update({"X-Linked-Etag": f'"{digest}"', "X-Linked-Size": str(len(data)),
                            "ETag": f'"{git_blob_sha1(data)}"', "Location": f"{cdn}/cdn/{digest}?path={path}",
                            "Content-Length": "0"})
            return web.Response(status=302, headers=headers)
        headers["ETag"] = f'"{git_blob_sha1(data)}"'
        return await self._send(request, path, data, headers)

    async def cdn(self, request: web.Request) -> web.StreamResponse:
        data = self.blobs.get(request.match_info["sha256"])
        self.requests.append((request.method, request.path))
        if data is None:
            return web.Response(status=404)
        return await self._send(request, request.query.get("path", ""), data, {"Accept-Ranges": "bytes"})

    async def _send(self, request: web.Request, path: str, data: bytes, headers: dict) -> web.StreamResponse:
        self.authorized.append((request.host.split(":")[0], request.path, "Authorization" in request.headers))
        if path in self.corrupt and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        data = data + self.trailing.get(path, b"")
        start, status = 0, 200
        rng = request.headers.get("Range")
        if rng and rng.startswith("bytes="):
            first = rng[6:].split("-", 1)[0]
            start = int(first) if first else 0
            if start >= len(data) and data:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        if request.method == "GET":
            self.ranges.append((path, start))
        body = memoryview(data)[start:]  # no copy of the file per request
        headers["Content-Length"] = str(len(body))
        resp = web.StreamResponse(status=status, headers=headers)
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        cut = self.cut_after.pop(path, None)
        stall = self.stall_after.pop(path, None)
        # 64 KiB pieces while a delay simulates a slow link; otherwise 1 MiB, so that the
        # server spends little CPU per byte (benchmarks share two cores with it).
        sent, chunk = 0, 64 * 1024 if self.chunk_delay or cut is not None or stall else 1 << 20
        # Bytes are counted as each piece goes out, before any delay: a client that has the
        # whole file must find it counted (it may finish before this coroutine resumes).
        self.served.setdefault(path, 0)
        while sent < len(body):
            piece = body[sent:sent + chunk]
            if cut is not None and sent + len(piece) > cut:
                piece = piece[: max(cut - sent, 0)]
                self.served[path] += len(piece)
                await resp.write(piece)
                request.transport.close()  # the connection drops mid-file
                return resp
            self.served[path] += len(piece)
            await resp.write(piece)
            sent += len(piece)
            if stall is not None and sent >= stall[0]:
                await asyncio.sleep(stall[1])  # the connection stays open, silent
                stall = None
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        await resp.write_eof()
        return resp

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/models", self.search)
        app.router.add_get("/api/models/{org}/{name}", self.model_info)
        app.router.add_get("/api/models/{org}/{name}/revision/{rev}", self.model_info)
        app.router.add_route("*", "/{org}/{name}/resolve/{rev}/{path:.+}", self.resolve_file)
        app.router.add_route("*", "/cdn/{sha256}", self.cdn)
        return app

    # --- lifecycle (a thread of its own, for tests) ----------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> "FakeHub":
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            self._runner = web.AppRunner(self.app(), access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, host, port)
            self._loop.run_until_complete(site.start())
            bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = f"http://{host}:{bound}"
            if self.cdn_host:
                self._loop.run_until_complete(web.TCPSite(self._runner, self.cdn_host, bound).start())
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=serve, name="fake-hub", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fake Hub did not start")
        return self

    def stop(self) -> None:
        if self._loop and self._thread:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


def main(argv: list[str] | None = None) -> None:
    """Serve one repo of local files: `python -m modelship_testbed.hub_fake --repo org/name FILE...`."""
    p = argparse.ArgumentParser(prog="python -m modelship_testbed.hub_fake")
    p.add_argument("--repo", required=True)
    p.add_argument("--sha", default="0" * 40)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("files", nargs="+")
    args = p.parse_args(argv)
    hub = FakeHub()
    hub.add_repo(FakeRepo(args.repo, {args.sha: {Path(f).name: Path(f).read_bytes() for f in args.files}},
                          {"main": args.sha}))
    hub.start(port=args.port)
    print(hub.url, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
