"""The router's HTTP connections: uvicorn's httptools protocol, with a deadline for each
request's head.

uvicorn bounds the time between requests on a kept-alive connection, and the router bounds
a body's arrival (`--body-timeout`), but nothing bounds a head: a client that connects and
sends nothing, or sends a header line every few seconds (slowloris), would hold a connection
and its memory for ever. Here a connection must begin a request within `--header-timeout` of
opening, and each request's head must be whole within as long of its first byte (so a first
request has at most twice that); otherwise it gets 408 (or, having sent nothing at all, is
simply closed, as nginx does) and is closed. While an earlier answer on the connection is
still going out (a pipelined request behind it), the deadline waits for it."""

from __future__ import annotations

import asyncio

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def too_slow_answer(timeout: float) -> bytes:
    body = orjson.dumps({"error": {"message": f"the request's head did not arrive within {timeout:g} s "
                                              "(--header-timeout)", "type": "invalid_request_error",
                                   "param": None, "code": "request_timeout"}})
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def protocol(header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with the head's deadline (uvicorn takes a class)."""
    answer = too_slow_answer(header_timeout)

    class HeadDeadline(HttpToolsProtocol):
        head_timer: asyncio.TimerHandle | None = None
        head_begun = False

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.head_begun = True
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            self.head_begun = False
            super().on_headers_complete()

        def _arm(self) -> None:
            self._disarm()
            self.head_timer = self.loop.call_later(header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def _too_slow(self) -> None:
            self.head_timer = None
            if self.cycle is not None and not self.cycle.response_complete:
                self._arm()  # an answer is going out: a 408 now would cut into it
                return
            if not self.transport.is_closing():
                if self.head_begun:
                    self.transport.write(answer)
                self.transport.close()

    return HeadDeadline
