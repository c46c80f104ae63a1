"""The slice of the kubelet's HTTPS API that the API server calls for `kubectl logs`:
`/containerLogs/{namespace}/{pod}/{container}` (follow, previous, tailLines, limitBytes;
not sinceSeconds or timestamps: the logs are plain files), and `/healthz`. Client
certificates signed by the test bed's CA are required, as the API server presents one
(--kubelet-client-certificate)."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from ..config import TestbedConfig
from ..pki import Pki

if TYPE_CHECKING:
    from .agent import Agent


def _log_file(agent: "Agent", ns: str, pod: str, container: str, previous: bool) -> tuple[Path | None, object]:
    worker = agent.find_worker(ns, pod)
    if worker is None:
        return None, None
    c = next((c for c in worker.init_containers + worker.containers if c.name == container), None)
    if c is None:
        return None, None
    n = c.restart_count - 1 if previous else c.restart_count
    return worker.dir / "logs" / container / f"{n}.log", c


def _tail(data: bytes, lines: int) -> bytes:
    if lines < 0:
        return data
    return b"".join(deque(data.splitlines(keepends=True), maxlen=lines))


def make_app(agent: "Agent") -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def container_logs(req: web.Request) -> web.StreamResponse:
        ns, pod, container = req.match_info["ns"], req.match_info["pod"], req.match_info["container"]
        q = req.query
        previous = q.get("previous") == "true"
        path, c = _log_file(agent, ns, pod, container, previous)
        if path is None:
            raise web.HTTPNotFound(text=f'container "{container}" in pod "{pod}" is not on this node')
        if not path.exists():
            which = "previous terminated" if previous else "current"
            raise web.HTTPBadRequest(text=f'no {which} log for container "{container}" in pod "{pod}"')
        data = path.read_bytes()
        if "tailLines" in q:
            data = _tail(data, int(q["tailLines"]))
        limit = int(q["limitBytes"]) if "limitBytes" in q else None
        if limit is not None:
            data = data[:limit]
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(req)
        await resp.write(data)
        if q.get("follow") == "true" and not previous:
            sent = path.stat().st_size
            restarts = c.restart_count
            while c.restart_count == restarts:  # a restart starts a new file: end, like kubectl's stream
                size = path.stat().st_size if path.exists() else sent
                if size > sent:
                    with open(path, "rb") as f:
                        f.seek(sent)
                        chunk = f.read(size - sent)
                    sent = size
                    await resp.write(chunk)
                elif c.proc is None:
                    break
                await asyncio.sleep(0.2)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/containerLogs/{ns}/{pod}/{container}", container_logs)
    return app


async def serve(agent: "Agent", cfg: TestbedConfig) -> web.AppRunner:
    pki = Pki(cfg.dir / "pki")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    ctx.load_cert_chain(str(pki.cert("kubelet")), str(pki.key("kubelet")))
    ctx.verify_mode = ssl.CERT_REQUIRED
    runner = web.AppRunner(make_app(agent), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", cfg.ports.kubelet, ssl_context=ctx).start()
    return runner
