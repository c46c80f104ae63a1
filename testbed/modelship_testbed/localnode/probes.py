"""Readiness, liveness and startup probes, run for real: HTTP GET, TCP connect, exec.

Network probes only ever dial loopback: a probe whose `host` is anything else fails with a
message instead of sending a packet off this machine.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from typing import Awaitable, Callable

import httpx


@dataclass
class ProbeResult:
    ok: bool
    message: str = ""


def resolve_port(port: int | str, container: dict) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"named port {port!r} is not declared by container {container['name']}")


def _loopback_host(host: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise ValueError(f"probe host {host!r} is not a loopback address; the local node dials only 127.0.0.0/8")


class Prober:
    def __init__(self, pod_ip: str, container: dict, http: httpx.AsyncClient,
                 exec_fn: Callable[[list[str], float], Awaitable[tuple[int, str]]]):
        self.pod_ip = pod_ip
        self.container = container
        self.http = http
        self.exec_fn = exec_fn

    async def run(self, probe: dict) -> ProbeResult:
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            if "httpGet" in probe:
                return await self._http(probe["httpGet"], timeout)
            if "tcpSocket" in probe:
                return await self._tcp(probe["tcpSocket"], timeout)
            if "exec" in probe:
                code, out = await self.exec_fn(probe["exec"]["command"], timeout)
                return ProbeResult(code == 0, f"exec exited {code}: {out.strip()[:200]}" if code else "")
            return ProbeResult(False, f"unsupported probe handler {sorted(probe)}")
        except (ValueError, OSError) as e:
            return ProbeResult(False, str(e))

    async def _http(self, spec: dict, timeout: float) -> ProbeResult:
        host = _loopback_host(spec.get("host") or self.pod_ip)
        port = resolve_port(spec["port"], self.container)
        scheme = spec.get("scheme", "HTTP").lower()
        path = spec.get("path", "/")
        headers = {h["name"]: h["value"] for h in spec.get("httpHeaders") or []}
        headers.setdefault("User-Agent", "kube-probe/1.36")
        url = f"{scheme}://{host}:{port}{path if path.startswith('/') else '/' + path}"
        try:
            r = await self.http.get(url, headers=headers, timeout=timeout)
        except httpx.TimeoutException:
            return ProbeResult(False, f'Get "{url}": context deadline exceeded')
        except httpx.HTTPError as e:
            return ProbeResult(False, f'Get "{url}": {e.__class__.__name__}: {e}')
        if 200 <= r.status_code < 400:
            return ProbeResult(True)
        return ProbeResult(False, f"HTTP probe failed with statuscode: {r.status_code}")

    async def _tcp(self, spec: dict, timeout: float) -> ProbeResult:
        host = _loopback_host(spec.get("host") or self.pod_ip)
        port = resolve_port(spec["port"], self.container)
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, asyncio.TimeoutError) as e:
            return ProbeResult(False, f"dial tcp {host}:{port}: {e.__class__.__name__}")
        w.close()
        return ProbeResult(True)
