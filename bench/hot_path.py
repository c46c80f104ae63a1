"""Benchmark: the router's hot-path libraries, chosen by measurement. A minimal proxy (read
the body, POST it upstream, relay the answer; none of the router's own work) is built with
each HTTP server and upstream client, and measured like bench/router_overhead.py: pinned to
core 0, in front of an nginx answering a fixed chat completion on core 1, with wrk (one
connection for latency, `--connections` for throughput), rounds alternating, medians.

    .venv/bin/python bench/hot_path.py [--rounds 3] [--seconds 4]
    .venv/bin/python bench/hot_path.py --serve SERVER CLIENT PORT BACKEND   # one proxy (used by the above)

Servers: uvicorn (httptools, uvloop), granian (Rust; ASGI, and its own RSGI), aiohttp's.
Clients: aiohttp, httpx, pyreqwest and rnet (Rust), aiosonic. granian, pyreqwest, rnet and
aiosonic are not dependencies: their rows are skipped with a line when they are not
installed (`pip install granian pyreqwest rnet aiosonic`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import subprocess
import sys
from pathlib import Path

from loopback import HOST, Nginx, free_port, pinned, wait, wrk
from router_overhead import ANSWER, LOAD_CORE, PROXY_CORE, REQUEST

COMBOS = [("uvicorn", "aiohttp"), ("uvicorn", "pyreqwest"), ("uvicorn", "rnet"), ("uvicorn", "aiosonic"), ("granian", "aiohttp"), ("granian-rsgi", "aiohttp"), ("granian-rsgi", "pyreqwest"), ("aiohttp", "aiohttp"), ("uvicorn", "httpx")]


def make_post(client: str, backend: str):
    """`post(path, body) -> (status, content_type, chunks)` with one pooled client."""
    state = {}

    async def with_aiohttp(path: str, body: bytes):
        import aiohttp

        if "s" not in state:
            state["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000), auto_decompress=False)
        r = await state["s"].post(backend + path, data=body, headers={"content-type": "application/json"})
        chunks = [c async for c in r.content.iter_any()]
        r.release()
        return r.status, r.headers.get("content-type", "application/json"), chunks

    async def with_httpx(path: str, body: bytes):
        import httpx

        if "s" not in state:
            state["s"] = httpx.AsyncClient(limits=httpx.Limits(max_connections=1000))
        request = state["s"].build_request("POST", backend + path, content=body,
                                           headers={"content-type": "application/json"})
        r = await state["s"].send(request, stream=True)
        chunks = [c async for c in r.aiter_raw()]
        await r.aclose()
        return r.status_code, r.headers.get("content-type", "application/json"), chunks

    async def with_pyreqwest(path: str, body: bytes):
        from pyreqwest.client import ClientBuilder

        if "s" not in state:
            state["s"] = ClientBuilder().max_connections(1000).http1_only().build()
        request = state["s"].post(backend + path).header("content-type", "application/json").body_bytes(body)
        # no read-ahead (as in the router): by default pyreqwest reads up to 64 KiB of the body
        # before handing over the answer, which would hold back a stream's events
        async with request.streamed_read_buffer_limit(1).build_streamed() as r:
            reader = r.body_reader
            chunks = []
            while (c := await reader.read_chunk()) is not None:
                chunks.append(bytes(c))
            return r.status, r.get_header("content-type") or "application/json", chunks

    async def with_rnet(path: str, body: bytes):
        import rnet

        if "s" not in state:
            state["s"] = rnet.Client(allow_redirects=False)
        r = await state["s"].post(backend + path, body=body, headers={"content-type": "application/json"})
        async with r.stream() as stream:
            chunks = [c async for c in stream]
        ctype = r.headers.get("content-type")
        return r.status, ctype.decode() if ctype else "application/json", chunks

    async def with_aiosonic(path: str, body: bytes):
        import aiosonic

        if "s" not in state:
            state["s"] = aiosonic.HTTPClient()
        r = await state["s"].post(backend + path, data=body, headers={"content-type": "application/json"})
        chunks = [await r.content()]
        return r.status_code, r.headers.get("content-type", "application/json"), chunks

    return {"aiohttp": with_aiohttp, "httpx": with_httpx, "pyreqwest": with_pyreqwest, "rnet": with_rnet,
            "aiosonic": with_aiosonic}[client]


def asgi_app(post):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status, ctype, chunks = await post(scope["path"], body)
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype.encode())]})
        for c in chunks:
            await send({"type": "http.response.body", "body": c, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


def serve(server: str, client: str, port: int, backend: str) -> None:
    post = make_post(client, backend)
    if server == "uvicorn":
        import uvicorn
        import uvloop

        config = uvicorn.Config(asgi_app(post), host=HOST, port=port, http="httptools", access_log=False,
                                log_level="warning")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(uvicorn.Server(config).serve())
    elif server in ("granian", "granian-rsgi"):
        from granian.constants import Interfaces, Loops
        from granian.server import Server

        # granian imports its app in a worker process of its own: from a factory, told by env
        os.environ["HOT_PATH_CLIENT"], os.environ["HOT_PATH_BACKEND"] = client, backend
        rsgi = server == "granian-rsgi"
        Server(f"{Path(__file__).stem}:{'rsgi_app' if rsgi else 'granian_app'}", address=HOST, port=port,
               interface=Interfaces.RSGI if rsgi else Interfaces.ASGI, workers=1, loop=Loops.uvloop,
               log_enabled=False, factory=True, working_dir=Path(__file__).parent).serve()
    else:
        import uvloop
        from aiohttp import web

        async def handle(request):
            status, ctype, chunks = await post(request.path, await request.read())
            response = web.StreamResponse(status=status, headers={"content-type": ctype})
            await response.prepare(request)
            for c in chunks:
                await response.write(c)
            await response.write_eof()
            return response

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        uvloop.install()
        web.run_app(app, host=HOST, port=port, access_log=None, print=None)


def granian_app():
    return asgi_app(make_post(os.environ["HOT_PATH_CLIENT"], os.environ["HOT_PATH_BACKEND"]))


def rsgi_app():
    """granian's own interface (RSGI): the body in one await, the answer in one call."""
    post = make_post(os.environ["HOT_PATH_CLIENT"], os.environ["HOT_PATH_BACKEND"])

    async def app(scope, protocol):
        status, ctype, chunks = await post(scope.path, await protocol())
        if len(chunks) == 1:
            protocol.response_bytes(status, [("content-type", ctype)], chunks[0])
            return
        transport = protocol.response_stream(status, [("content-type", ctype)])
        for c in chunks:
            await transport.send_bytes(c)

    return app


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        server, client, port, backend = sys.argv[2:6]
        serve(server, client, int(port), backend)
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    combos = [c for c in COMBOS if all(importlib.util.find_spec(m.split("-")[0]) for m in c)]
    missing = sorted({m.split("-")[0] for c in COMBOS for m in c if not importlib.util.find_spec(m.split("-")[0])})
    if missing:
        print(f"not installed, their rows skipped: {', '.join(missing)} (pip install {' '.join(missing)})",
              file=sys.stderr)
    backend = Nginx(LOAD_CORE, free_port(), body=ANSWER)
    procs: dict[tuple[str, str], tuple[subprocess.Popen, str]] = {}
    results: dict[tuple[str, str], list[tuple[float, float]]] = {c: [] for c in combos}
    try:
        wait(f"{backend.url}/health")
        for server, client in combos:
            port = free_port()
            proc = subprocess.Popen(pinned([sys.executable, __file__, "--serve", server, client, str(port),
                                            backend.url], PROXY_CORE), cwd=Path(__file__).parent,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs[(server, client)] = proc, f"http://{HOST}:{port}"
            wait(f"http://{HOST}:{port}/health")
        for r in range(args.rounds):
            for combo in (combos if r % 2 == 0 else list(reversed(combos))):
                url = procs[combo][1] + "/v1/chat/completions"
                one = wrk(url, REQUEST, 1, args.seconds, LOAD_CORE)
                many = wrk(url, REQUEST, args.connections, args.seconds, LOAD_CORE)
                results[combo].append((one["p50"], many["rps"]))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait(10)
        backend.stop()
    print(f"\nminimal proxy pinned to one core; medians of {args.rounds} rounds of {args.seconds:g} s")
    print(f"{'server + upstream client':<28} {'req/s':>8} {'p50, 1 connection':>18}")
    for (server, client), rs in results.items():
        print(f"{server + ' + ' + client:<28} {statistics.median(x[1] for x in rs):8.0f} "
              f"{statistics.median(x[0] for x in rs) * 1e6:15.0f} us")


if __name__ == "__main__":
    main()
