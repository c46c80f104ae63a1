"""The local node agent's own slice of the kubelet API, plain HTTP on 127.0.0.1
(`ports.kubelet_local`): `/containerLogs/{namespace}/{pod}/{container}` (follow, previous,
tailLines, limitBytes; not sinceSeconds or timestamps: the logs are plain files) and
`/healthz`, which the API server reaches through `kubelet-streaming` (the Go front on the
kubelet port, with TLS and client certificates; it serves `/portForward` itself and proxies
the rest here), and `/testbed/pods/{namespace}/{pod}`: the uid and address of a pod this
node runs, which `kubelet-streaming` asks before it dials a pod."""

from __future__ import annotations

import asyncio
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from ..config import TestbedConfig

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

    async def pod_info(req: web.Request) -> web.Response:
        ns, name = req.match_info["ns"], req.match_info["pod"]
        worker = agent.find_worker(ns, name)
        if worker is None:
            raise web.HTTPNotFound(text=f'pod "{name}" in namespace "{ns}" is not on this node')
        return web.json_response({"uid": worker.uid, "ip": worker.ip})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/testbed/pods/{ns}/{pod}", pod_info)
    app.router.add_get("/containerLogs/{ns}/{pod}/{container}", container_logs)
    return app


async def serve(agent: "Agent", cfg: TestbedConfig) -> web.AppRunner:
    runner = web.AppRunner(make_app(agent), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", cfg.ports.kubelet_local).start()
    return runner
