"""What the benchmarks share: loopback ports, and waiting for a server to answer."""

from __future__ import annotations

import socket
import time

import httpx

HOST = "127.0.0.1"  # benchmarks talk to loopback only


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait(url: str, timeout: float = 60) -> None:
    """Until GET `url` answers 200; exits with one line when it does not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not come up within {timeout:.0f} s")
