"""A streaming backend for benchmarks: answers every POST with server-sent events, the first
at once, then one every `--every` seconds until `--hold` seconds have passed, then
`data: [DONE]`. Written on raw asyncio protocols so that one process holds tens of
thousands of open streams on little CPU and memory (what is measured is the router)."""

from __future__ import annotations

import argparse
import asyncio
import resource

import uvloop

EVENT = b'data: {"choices":[{"index":0,"delta":{"content":"token"}}]}\n\n'
HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
        b"transfer-encoding: chunked\r\n\r\n")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Streams:
    def __init__(self, every: float, hold: float):
        self.every, self.hold = every, hold
        self.open: dict[asyncio.Transport, float] = {}

    async def tick(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:  # on a fixed schedule: writing to many streams must not stretch the period
            due += self.every
            await asyncio.sleep(max(0.0, due - loop.time()))
            now = loop.time()
            for t, since in list(self.open.items()):
                if t.is_closing():
                    self.open.pop(t, None)
                elif now - since >= self.hold:
                    self.open.pop(t, None)
                    t.write(chunk(EVENT) + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
                else:
                    t.write(chunk(EVENT))


class Conn(asyncio.Protocol):
    def __init__(self, streams: Streams):
        self.streams, self.buf, self.t = streams, b"", None

    def connection_made(self, t):
        self.t = t

    def data_received(self, data: bytes) -> None:
        self.buf += data
        head, sep, body = self.buf.partition(b"\r\n\r\n")
        if not sep:
            return
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        if len(body) < length:
            return
        self.buf = body[length:]
        if head.startswith(b"GET /health"):
            self.t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}")
            return
        self.t.write(HEAD + chunk(EVENT))
        self.streams.open[self.t] = asyncio.get_running_loop().time()

    def connection_lost(self, exc) -> None:
        self.streams.open.pop(self.t, None)


async def serve(host: str, port: int, every: float, hold: float) -> None:
    streams = Streams(every, hold)
    server = await asyncio.get_running_loop().create_server(lambda: Conn(streams), host, port, backlog=4096)
    async with server:
        await streams.tick()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--every", type=float, default=2.0)
    ap.add_argument("--hold", type=float, default=20.0)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(serve(args.host, args.port, args.every, args.hold))


if __name__ == "__main__":
    main()
