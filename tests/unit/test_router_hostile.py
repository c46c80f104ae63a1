"""Hostile clients against the router: malformed and huge bodies, deep nesting, bytes that are
not UTF-8, a client that sends a byte at a time, clients that vanish mid-body and mid-stream.
Each gets a clear 4xx (or its connection closed) in bounded time, never a 500; afterwards no
task of the router's is left and memory has not grown.

The router is served in this process (uvicorn on the test's loop, raw sockets on loopback) in
front of a fake engine on the same loop, which records the streams whose client went away."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc

import orjson
import pytest

from .test_router import HOST, free_port
from .test_router_hold import serving

CHAT = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'


class Engine:
    """A TGI-like engine: `/v1/chat/completions` answers at once, or streams a chunk every
    50 ms for ~5 s when `stream` is set, and notes when its client left."""

    def __init__(self) -> None:
        self.gone = 0

    async def start(self):
        from aiohttp import web

        async def chat(request: web.Request) -> web.StreamResponse:
            body = await request.json()
            if not body.get("stream"):
                return web.json_response({"choices": [{"message": {"content": "ok"}}], "usage": {}})
            answer = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await answer.prepare(request)
            try:
                for _ in range(100):
                    await answer.write(b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n')
                    await asyncio.sleep(0.05)
            except (ConnectionResetError, asyncio.CancelledError):
                self.gone += 1
                raise
            return answer

        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        self.runner = web.AppRunner(app, handler_cancellation=True)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, HOST, port).start()
        return f"http://{HOST}:{port}"


def router(url: str, **limits):
    from modelship.router.app import Router
    from modelship.router.registry import Registry, Target
    from modelship.router.server import upstream_client
    from modelship.router.settings import Limits

    reg = Registry()
    target = Target("m", "tgi")
    target.set_endpoints({url: True})
    reg.put(target)
    settings = Limits(**limits)
    return Router(reg, upstream_client(settings), settings)


async def exchange(url: str, data: bytes, wait: float = 10.0) -> tuple[int, bytes, float]:
    """Send raw bytes; the status and the whole answer (until the router closes or its
    Content-Length is read), and the seconds it took."""
    host, port = url.removeprefix("http://").split(":")
    began = time.monotonic()
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), wait)
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), None)
        body = await asyncio.wait_for(reader.readexactly(length) if length is not None else reader.read(), wait)
        return int(head.split(b" ")[1]), body, time.monotonic() - began
    finally:
        writer.close()


def post(path: str, body: bytes, headers: bytes = b"") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n").encode() + headers + b"\r\n" + body


def message(body: bytes) -> str:
    return orjson.loads(body)["error"]["message"]


async def settle(before: set) -> set:
    """The tasks left besides `before` once the router had a moment to finish."""
    for _ in range(50):
        await asyncio.sleep(0.02)
        left = {t for t in asyncio.all_tasks() - before if not t.done()} - {asyncio.current_task()}
        if not left:
            return left
    return left


@pytest.fixture
def run():
    return lambda coro: asyncio.run(asyncio.wait_for(coro, 60))


def test_malformed_and_wrong_types_are_400(run):
    async def go():
        engine = Engine()
        url = await engine.start()
        async with serving(router(url)) as r:
            status, body, _ = await exchange(r, post("/v1/chat/completions", b'{"model": "m", "messages": ['))
            assert status == 400 and message(body).startswith("the request body is not valid JSON: ")
            status, body, _ = await exchange(r, post("/v1/chat/completions", b'[1, 2]'))
            assert (status, message(body)) == (400, "the request body must be a JSON object")
            status, body, _ = await exchange(r, post("/v1/chat/completions", b'{"messages": "hi"}'))
            assert (status, message(body)) == (400, "Invalid type for 'messages': expected an array, but got a "
                                                    "string instead.")
        await engine.runner.cleanup()
    run(go())


def test_a_huge_body_is_413_in_bounded_time(run):
    async def go():
        engine = Engine()
        url = await engine.start()
        async with serving(router(url, max_body_bytes=1 << 20)) as r:
            declared = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nContent-Length: 52428800\r\n\r\n"
                        + b"x" * 65536)
            status, body, took = await exchange(r, declared)  # (said in its head: refused before it is sent)
            assert (status, message(body)) == (413, "the request body is 52428800 bytes; the limit is 1048576")
            assert took < 2
            chunked = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n"
                       + b"".join(b"%x\r\n" % (1 << 16) + b"x" * (1 << 16) + b"\r\n" for _ in range(40)))
            status, body, took = await exchange(r, chunked)  # (no length said: counted as it comes)
            assert (status, message(body)) == (413, "the request body is over the limit of 1048576 bytes")
            assert took < 5
        await engine.runner.cleanup()
    run(go())


def test_deep_nesting_and_bytes_that_are_not_utf8_are_400(run):
    async def go():
        engine = Engine()
        url = await engine.start()
        async with serving(router(url)) as r:
            status, body, _ = await exchange(r, post("/v1/chat/completions", b"[" * 100_000))
            assert status == 400 and "not valid JSON" in message(body)
            nested = b'{"model":"m","messages":[{"role":"user","content":"hi","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}]}"
            status, body, _ = await exchange(r, post("/v1/chat/completions", nested))
            assert status == 400 and "not valid JSON" in message(body)  # (orjson stops at 1024 levels)
            status, body, _ = await exchange(r, post("/v1/chat/completions", b'{"messages": "\xff\xfe"}'))
            assert status == 400 and "not valid JSON" in message(body)
            for header in (b"x-request-id: \xff\xfe\r\n", b"authorization: Bearer \xff\xfe\r\n",
                           b"x-other: \x80\x81\r\n"):
                status, body, _ = await exchange(r, post("/v1/chat/completions", CHAT, header))
                assert status == 200, (header, body)
            status, body, _ = await exchange(r, b"GET /models/%ff%fe/info HTTP/1.1\r\nHost: r\r\n\r\n")
            assert status == 404, body
        await engine.runner.cleanup()
    run(go())


def test_a_slow_body_is_408_after_the_body_timeout(run):
    async def go():
        engine = Engine()
        url = await engine.start()
        async with serving(router(url, body_timeout=1.0)) as r:
            before = set(asyncio.all_tasks())
            host, port = r.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            began = time.monotonic()
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nContent-Length: 100\r\n\r\n")
            answer = b""
            for byte in CHAT:  # a byte every 0.2 s: the whole would take 11 s
                try:
                    writer.write(bytes([byte]))
                    await writer.drain()
                except ConnectionError:
                    break
                try:
                    answer += await asyncio.wait_for(reader.read(4096), 0.2)
                except asyncio.TimeoutError:
                    continue
                if answer.endswith(b"}") or not answer:
                    break
            took = time.monotonic() - began
            writer.close()
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert message(answer.split(b"\r\n\r\n", 1)[1]) == ("the request body did not arrive within 1 s "
                                                                 "(--body-timeout)")
            assert took < 2.5
            assert not await settle(before)
        await engine.runner.cleanup()
    run(go())


def test_clients_that_vanish_leave_nothing_behind(run):
    """Mid-body and mid-stream: the stream's engine sees its client go; no task stays, and a
    few hundred hostile requests leave memory where it was."""
    async def go():
        engine = Engine()
        url = await engine.start()
        async with serving(router(url, body_timeout=2.0)) as r:
            host, port = r.removeprefix("http://").split(":")
            await exchange(r, post("/v1/chat/completions", CHAT))  # (warm: the pool, the first imports)
            before = set(asyncio.all_tasks())
            tracemalloc.start()
            gc.collect()
            start_mem = tracemalloc.get_traced_memory()[0]
            for i in range(200):
                _, writer = await asyncio.open_connection(host, int(port))
                writer.write(post("/v1/chat/completions", CHAT + b" " * 1000)[:-900])  # (the body cut short)
                await writer.drain()
                writer.close()
                await exchange(r, post("/v1/chat/completions", b"[" * 5000 + b"\xff"))
            streams = []
            for _ in range(5):
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(post("/v1/chat/completions", CHAT[:-1] + b',"stream":true}'))
                await reader.readuntil(b"data:")  # streaming has begun
                streams.append(writer)
            for writer in streams:
                writer.close()
            for _ in range(100):
                if engine.gone == 5:
                    break
                await asyncio.sleep(0.05)
            assert engine.gone == 5  # each engine's stream was cut when its client left
            assert not await settle(before)
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - start_mem
            tracemalloc.stop()
            assert grown < 2 << 20, f"{grown} bytes more after 400 hostile requests"
        await engine.runner.cleanup()
    run(go())
