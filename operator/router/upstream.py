"""The router's one pooled upstream client, behind a small interface.

`Upstream.open()` sends a request and returns once the answer's status line and headers are
in; the body is then read chunk by chunk, as it arrives. Two failures matter to the router,
and are told apart here so it never has to know the client library: `Unreachable` (refused,
timed out connecting, or dropped before answering: safe to send elsewhere) and `BrokeOff`
(the answer stopped half way).

Two implementations, chosen by measurement (`bench/hot_path.py` and benchmarks 1, 2 and 4;
the README has the figures), with `modelship router --upstream-client`:

- `aiohttp` (the default): everything on the event loop. The least memory per open stream
  (about 26 KiB a stream in the router, against 74) and no thread of its own, so on a busy
  node it takes no CPU from the engines: token throughput stays at that of direct access.
- `pyreqwest` (Rust's reqwest and hyper on a thread of their own): about a quarter more
  small requests per second per core and half the added time to first byte, for more memory
  per stream and a thread that competes with the engines on a shared node.

httpx is not one of them: its pool checks every pooled connection for expiry
(`getpeername` per connection) on every request, which made the router several times slower.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Protocol

import aiohttp
import yarl
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import PyreqwestError


class Unreachable(Exception):
    """The endpoint did not take the request: nothing reached it, or nothing came back."""


class BrokeOff(Exception):
    """The answer stopped before its end."""


class Answer(Protocol):
    status: int
    content_type: str
    length: int | None  # Content-Length, when the answer has one

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def read(self) -> bytes: ...

    async def close(self) -> None: ...


class Upstream(Protocol):
    async def open(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> Answer: ...

    async def get(self, url: str, timeout: float) -> tuple[int, bytes]: ...

    async def aclose(self) -> None: ...


class _AiohttpAnswer:
    __slots__ = ("_response", "status", "content_type", "length")

    def __init__(self, response: aiohttp.ClientResponse):
        self._response = response
        self.status = response.status
        self.content_type = response.headers.get("content-type", "application/json")
        self.length = response.content_length

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as e:
            raise BrokeOff(type(e).__name__) from None

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._response.content
        try:
            async for chunk in content.iter_any():
                yield chunk
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as e:
            raise BrokeOff(type(e).__name__) from None

    async def close(self) -> None:
        # A fully read answer gives its connection back to the pool; anything else closes it,
        # which is how an engine learns that its client went away.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


@functools.lru_cache(maxsize=4096)
def _url(url: str) -> yarl.URL:
    """Parsed once: an endpoint's few paths recur on every request."""
    return yarl.URL(url)


class AiohttpUpstream:
    """aiohttp's pool: at most `max_connections` open, kept alive between requests."""

    # Idle connections are closed after `keepalive` seconds. Short on purpose: llama-server's
    # HTTP server gives each open connection a thread of a few (--threads-http), so idle
    # ones kept by the router would keep its metrics scrapes and probes waiting.
    def __init__(self, connect_timeout: float, max_connections: int = 10_000, keepalive: float = 2.0):
        self._connect_timeout, self._max, self._keepalive = connect_timeout, max_connections, keepalive
        self._session: aiohttp.ClientSession | None = None

    def _open_session(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running loop (aiohttp binds a session to its loop).
        connector = aiohttp.TCPConnector(limit=self._max, limit_per_host=0, keepalive_timeout=self._keepalive,
                                         use_dns_cache=True, ttl_dns_cache=10)
        timeout = aiohttp.ClientTimeout(total=None, connect=self._connect_timeout,
                                        sock_connect=self._connect_timeout, sock_read=None)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                              trust_env=False, skip_auto_headers=("User-Agent",),
                                              cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def open(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> _AiohttpAnswer:
        session = self._session or self._open_session()
        try:
            response = await session.request(method, _url(url), data=body, headers=headers, allow_redirects=False)
        except (aiohttp.ClientConnectionError, aiohttp.ClientResponseError) as e:  # timeouts connecting included
            raise Unreachable(type(e).__name__) from None
        return _AiohttpAnswer(response)

    async def get(self, url: str, timeout: float) -> tuple[int, bytes]:
        """A small GET read whole (the engines' metrics); raises Unreachable."""
        session = self._session or self._open_session()
        try:
            async with asyncio.timeout(timeout):
                async with session.get(url, allow_redirects=False) as r:
                    return r.status, await r.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise Unreachable(type(e).__name__) from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class _PyreqwestAnswer:
    __slots__ = ("_request", "_reader", "status", "content_type", "length")

    def __init__(self, request, response):
        self._request, self._reader = request, response.body_reader
        self.status = response.status
        self.content_type = response.get_header("content-type") or "application/json"
        length = response.get_header("content-length")
        self.length = int(length) if length and length.isdigit() else None

    async def read(self) -> bytes:
        try:
            return bytes(await self._reader.bytes())
        except PyreqwestError as e:
            raise BrokeOff(_what(e)) from None

    async def chunks(self) -> AsyncIterator[bytes]:
        read = self._reader.read_chunk
        try:
            while (chunk := await read()) is not None:
                yield bytes(chunk)
        except PyreqwestError as e:
            raise BrokeOff(_what(e)) from None

    async def close(self) -> None:
        # A fully read answer gives its connection back to the pool; anything else closes it,
        # which is how an engine learns that its client went away.
        await self._request.__aexit__(None, None, None)


def _what(e: PyreqwestError) -> str:
    return type(e).__name__


class PyreqwestUpstream:
    """One pyreqwest client: at most `max_connections` requests open, connections kept alive
    between requests (idle ones closed after `keepalive` seconds, as in AiohttpUpstream)."""

    def __init__(self, connect_timeout: float, max_connections: int = 10_000, keepalive: float = 2.0):
        self._connect_timeout, self._max, self._keepalive = connect_timeout, max_connections, keepalive
        self._client: Client | None = None

    def _open_client(self) -> Client:
        # Made on first use, inside the running loop.
        self._client = (ClientBuilder().max_connections(self._max).http1_only().follow_redirects(False)
                        .connect_timeout(timedelta(seconds=self._connect_timeout))
                        .pool_idle_timeout(timedelta(seconds=self._keepalive)).no_proxy()
                        .gzip(False).brotli(False).zstd(False).deflate(False).tcp_nodelay(True).build())
        return self._client

    async def open(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> _PyreqwestAnswer:
        client = self._client or self._open_client()
        builder = client.request(method, url).headers(headers)
        if body is not None:
            builder = builder.body_bytes(body)
        # A read-ahead limit of one byte: pyreqwest otherwise reads up to 64 KiB of the body
        # before it hands over the answer, which holds back every event of a short stream.
        request = builder.streamed_read_buffer_limit(1).build_streamed()
        try:
            response = await request.__aenter__()
        except PyreqwestError as e:
            # Refused, reset, closed before the answer's head, or a connect timeout (which is a
            # TimeoutError too, and must not read as the router's first-byte timeout).
            raise Unreachable(_what(e)) from None
        return _PyreqwestAnswer(request, response)

    async def get(self, url: str, timeout: float) -> tuple[int, bytes]:
        """A small GET read whole (the engines' metrics); raises Unreachable."""
        client = self._client or self._open_client()
        try:
            async with asyncio.timeout(timeout):
                response = await client.get(url).build().send()
                return response.status, bytes(await response.bytes())
        except (PyreqwestError, TimeoutError) as e:
            raise Unreachable(_what(e)) from None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()


CLIENTS = {"aiohttp": AiohttpUpstream, "pyreqwest": PyreqwestUpstream}
