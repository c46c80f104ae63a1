"""The router's one pooled upstream client, behind a small interface.

`Upstream.open()` sends a request and returns once the answer's status line and headers are
in; the body is then read chunk by chunk, as it arrives. Two failures matter to the router,
and are told apart here so it never has to know the client library: `Unreachable` (refused,
timed out connecting, or dropped before answering: safe to send elsewhere) and `BrokeOff`
(the answer stopped half way).

The implementation is aiohttp's, chosen by measurement (`bench/hot_path.py`, and benchmarks
1, 2 and 4 run against a pyreqwest build of the router; the figures are in
docs/decisions/upstream-client.md). pyreqwest (Rust's reqwest and hyper) served about a
quarter more small requests per core and added half the time to first byte, but it was not
kept: it holds about 74 KiB per open stream against 26, its own thread took CPU from
llama-server on a shared node (92-96% of direct tokens/s against 103%), and a request
cancelled before its answer began (a client that left during a long prefill, a first-byte
timeout) kept its connection open, so the engine went on working for nobody.

httpx was not chosen either: its pool checks every pooled connection for expiry
(`getpeername` per connection) on every request, which made the router several times slower.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import Protocol

import aiohttp
import yarl


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
