"""The router's connections as uvicorn serves them (the `modelship router` process): a head
that trickles in, or a connection that sends nothing, is cut at `--header-timeout`; a request
whose head arrives in time is answered as usual on the same kind of connection."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest
import yaml
from modelship_testbed.procs import stop

from .test_router import HOST, free_port
from .test_router_fuzz import start_logged


@pytest.fixture(scope="module")
def router_url(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conn")
    (folder / "static.yaml").write_text(yaml.safe_dump({"models": [
        {"name": "tiny", "engine": "tgi", "endpoints": ["http://127.0.0.1:9"]}]}))
    port = free_port()
    url = f"http://{HOST}:{port}"
    proc = start_logged([str(Path(sys.executable).with_name("modelship")), "router", "--static",
                         str(folder / "static.yaml"), "--host", HOST, "--port", str(port), "--header-timeout", "1"],
                        f"{url}/health", "router", folder / "router.log")
    yield port
    stop(proc, 20)
    said = (folder / "router.log").read_text()
    assert "Traceback" not in said, said[-3000:]


def read_until_closed(s: socket.socket, limit: float) -> tuple[bytes, float]:
    began, got = time.monotonic(), b""
    s.settimeout(limit)
    while True:
        chunk = s.recv(4096)
        if not chunk:
            return got, time.monotonic() - began
        got += chunk


def test_a_head_sent_a_line_at_a_time_is_408_at_the_header_timeout(router_url):
    with socket.create_connection((HOST, router_url)) as s:
        began = time.monotonic()
        s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n")
        for i in range(3):  # a header line every 0.4 s, never the blank line that ends the head
            time.sleep(0.4)
            try:
                s.sendall(b"x-slow-%d: y\r\n" % i)
            except OSError:
                break
        got, _ = read_until_closed(s, 5)
        took = time.monotonic() - began
    assert got.startswith(b"HTTP/1.1 408 ") and b'"code":"request_timeout"' in got, got
    assert b"--header-timeout" in got and 0.9 <= took < 5, took  # (bounded: 1 s, and a loaded machine)


def test_a_connection_that_sends_nothing_is_closed(router_url):
    with socket.create_connection((HOST, router_url)) as s:
        got, took = read_until_closed(s, 5)
    assert got == b"" and 0.9 <= took < 5, (got, took)


def test_a_head_in_time_is_answered_and_the_connection_kept(router_url):
    with socket.create_connection((HOST, router_url)) as s:
        for _ in range(2):  # two requests on one connection, 1.5 s apart: longer than the head's deadline
            s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            s.settimeout(5)
            got = s.recv(4096)
            while not got.endswith(b"}"):  # the head and the body may come apart
                more = s.recv(4096)
                assert more, got
                got += more
            assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b'{"status":"ok"}'), got
            time.sleep(1.5)
