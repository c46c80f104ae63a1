"""`kubelet-streaming` (the local node's kubelet port) on its own, in front of a fake agent:
TLS with client certificates, the port-forward guards (a pod address outside 127.0.0.0/8 is
refused when the session opens and again at every dial), and proxying that streams.

No cluster is needed, but the Go binary is (built on first use, about a minute), hence the
`integration` mark."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time

import aiohttp
import pytest
from aiohttp import web

from modelship_testbed import binaries, pki

pytestmark = [pytest.mark.integration]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_agent(lookups: list[str]) -> web.Application:
    """Pods: `near` on 127.0.0.1, `far` on 10.1.2.3, `moved` on 127.0.0.1 at the first lookup
    and 10.1.2.3 after; anything else is not on this node."""
    async def pod(req: web.Request) -> web.Response:
        name = req.match_info["pod"]
        lookups.append(name)
        ip = {"near": "127.0.0.1", "far": "10.1.2.3"}.get(name)
        if name == "moved":
            ip = "127.0.0.1" if lookups.count("moved") == 1 else "10.1.2.3"
        if ip is None:
            raise web.HTTPNotFound(text="not here")
        return web.json_response({"uid": f"uid-{name}", "ip": ip})

    async def logs(req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(req)
        for i in range(3):
            await resp.write(f"{time.monotonic():.3f} line {i}\n".encode())
            await asyncio.sleep(0.5)
        return resp

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/testbed/pods/{ns}/{pod}", pod)
    app.router.add_get("/containerLogs/{ns}/{pod}/{c}", logs)
    return app


async def scenario(tmp_path) -> None:
    p = pki.ensure(tmp_path / "pki", "127.96.0.1")
    client_ctx = ssl.create_default_context(cafile=str(p.ca))
    client_ctx.load_cert_chain(str(p.cert("apiserver-kubelet-client")), str(p.key("apiserver-kubelet-client")))

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(b"echo:" + data)
            await writer.drain()
        writer.close()

    echo_server = await asyncio.start_server(echo, "127.0.0.1", 0)
    echo_port = echo_server.sockets[0].getsockname()[1]
    port = echo_port.to_bytes(2, "little")  # each channel opens with its port, little-endian
    lookups: list[str] = []
    runner = web.AppRunner(fake_agent(lookups))
    await runner.setup()
    agent_port, kubelet_port = free_port(), free_port()
    await web.TCPSite(runner, "127.0.0.1", agent_port).start()
    proc = await asyncio.create_subprocess_exec(
        str(binaries.path("kubelet-streaming")), f"--listen=127.0.0.1:{kubelet_port}",
        f"--tls-cert-file={p.cert('kubelet')}", f"--tls-private-key-file={p.key('kubelet')}",
        f"--client-ca-file={p.ca}", f"--backend=http://127.0.0.1:{agent_port}", "--node-name=n1")
    base = f"https://127.0.0.1:{kubelet_port}"
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(100):
                try:
                    async with s.get(f"{base}/healthz", ssl=client_ctx) as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            else:
                pytest.fail("kubelet-streaming did not answer")

            # Without a client certificate signed by the CA: no TLS session at all.
            with pytest.raises(aiohttp.ClientError):
                async with s.get(f"{base}/healthz", ssl=ssl.create_default_context(cafile=str(p.ca))):
                    pass

            # A forwarded connection, over the WebSocket protocol.
            async with s.ws_connect(f"{base}/portForward/ns/near?port={echo_port}", protocols=("v4.channel.k8s.io",),
                                    ssl=client_ctx) as ws:
                assert sorted([await ws.receive_bytes(timeout=5), await ws.receive_bytes(timeout=5)]) == [
                    b"\x00" + port, b"\x01" + port]
                await ws.send_bytes(b"\x00ping")
                assert await ws.receive_bytes(timeout=5) == b"\x00echo:ping"

            # Not on this node; another uid; an address off loopback.
            async with s.post(f"{base}/portForward/ns/gone", ssl=client_ctx) as r:
                assert r.status == 404
                assert 'no pod "gone" in namespace "ns" runs on node n1' in await r.text()
            async with s.post(f"{base}/portForward/ns/near/other-uid", ssl=client_ctx) as r:
                assert r.status == 404
            async with s.post(f"{base}/portForward/ns/far", ssl=client_ctx) as r:
                assert r.status == 403
                assert 'refusing to forward to pod address "10.1.2.3": outside 127.0.0.0/8' in await r.text()

            # The address is checked again at the dial: a pod now off loopback is not dialled.
            async with s.ws_connect(f"{base}/portForward/ns/moved?port={echo_port}", protocols=("v4.channel.k8s.io",),
                                    ssl=client_ctx) as ws:
                got = b""
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY and msg.data[:1] == b"\x01":
                        got += msg.data[1:]
                assert b'refusing to forward to pod address "10.1.2.3"' in got, got
            assert lookups.count("moved") == 2

            # Everything else is proxied, streamed as it comes (kubectl logs -f).
            async with s.get(f"{base}/containerLogs/ns/near/c?follow=true", ssl=client_ctx) as r:
                arrivals = []
                async for line in r.content:
                    arrivals.append((time.monotonic(), float(line.split()[0])))
            assert len(arrivals) == 3
            assert arrivals[0][0] < arrivals[-1][1], "the first line arrived only after the last was written"
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            code = await asyncio.wait_for(proc.wait(), 5)
        except asyncio.TimeoutError:
            proc.kill()
            code = await proc.wait()
        echo_server.close()
        await runner.cleanup()
    assert code == 0  # a clean stop on SIGTERM


def test_kubelet_streaming_forwards_guards_and_proxies(tmp_path):
    asyncio.run(scenario(tmp_path))
