"""A slow link on loopback: a TCP proxy that passes what a server sends at a set rate.

Tests put it in front of a server whose answers come too fast to watch: the end-to-end
test of `modelship demo` puts it in front of the Hub mirror, so that the download lasts long
enough for the operator to report progress on any machine. Each connection gets the rate;
what the client sends goes through as it comes.
"""

from __future__ import annotations

import asyncio
import threading

PIECE = 64 * 1024


class SlowLink:
    def __init__(self, target_host: str, target_port: int, rate: float) -> None:
        self.target_host, self.target_port = target_host, target_port
        self.rate = rate  # bytes per second from the server to the client, per connection
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, rate: float | None) -> None:
        try:
            while data := await src.read(PIECE):
                dst.write(data)
                await dst.drain()
                if rate:
                    await asyncio.sleep(len(data) / rate)
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()  # one side is done: so is the other

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer, None), self._pipe(up_reader, writer, self.rate))

    async def _serve(self, host: str, ready: threading.Event) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._connection, host, 0)
        self.url = f"http://{host}:{server.sockets[0].getsockname()[1]}"
        ready.set()
        await self._stop.wait()
        server.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in others:  # the connections still open
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def start(self, host: str = "127.0.0.1") -> "SlowLink":
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(host, ready),),
                                        name="slow-link", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the slow link did not start")
        return self

    def stop(self) -> None:
        if self._loop and self._thread and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
            if not self._thread.is_alive():
                self._loop.close()
