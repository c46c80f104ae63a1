"""What the benchmarks share: loopback ports, waiting for a server, pinning to a core, the
Debian nginx as a backend or a proxy, wrk as the load generator, and vllm-router as the peer."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

HOST = "127.0.0.1"  # benchmarks talk to loopback only
CORES = os.cpu_count() or 1


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


def stop_all(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to each, then wait for each (SIGKILL after 10 s)."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def pinned(cmd: list[str], core: int) -> list[str]:
    """`cmd` run on one core (taskset), so that proxies are compared on equal CPU."""
    return ["taskset", "-c", str(core % CORES), *cmd]


def source_path(tree: Path, workdir: Path) -> str:
    """The folder to put on PYTHONPATH to run the `modelship` package of another checkout of
    this repository (`--baseline`): `operator/` holds the package `modelship/` since the tree
    was reshaped; before that `operator/` was the package itself, linked here under its name."""
    tree = tree.resolve()
    if (tree / "operator" / "modelship" / "__init__.py").exists():
        return str(tree / "operator")
    if (tree / "operator" / "__init__.py").exists():
        link = workdir / "baseline-src"
        link.mkdir(exist_ok=True)
        if not (link / "modelship").exists():
            (link / "modelship").symlink_to(tree / "operator")
        return str(link)
    raise SystemExit(f"--baseline {tree}: no modelship package under its operator/ folder")


def modelship_router(endpoints: list[str], strategy: str, workdir: Path, core: int | None = None,
                     engine: str = "llamacpp", scrape_interval: float = 0,
                     source: str | None = None, ready: bool = True) -> tuple[subprocess.Popen, str]:
    """`modelship router --static` in front of `endpoints` as one model "bench" (pinned to
    `core` when one is given; `source`: the code of another checkout, from `source_path()`).
    `strategy` may carry fields of the static entry: `prefix-cache@maxImbalance=2`;
    `ready=False`: returned at once, for the caller to wait for (several start faster together)."""
    port = free_port()
    config = workdir / f"static-{port}.yaml"  # one per router: several may run at once
    strategy, *fields = strategy.split("@")
    entry = {"name": "bench", "engine": engine, "endpoints": endpoints, "strategy": strategy}
    entry.update((k, yaml.safe_load(v)) for k, v in (f.split("=", 1) for f in fields))
    config.write_text(yaml.safe_dump({"models": [entry]}))
    cmd = [str(Path(sys.executable).with_name("modelship")), "router", "--static", str(config), "--host", HOST,
           "--port", str(port), "--scrape-interval", str(scrape_interval)]
    env = {**os.environ, "PYTHONPATH": source} if source else None
    proc = subprocess.Popen(pinned(cmd, core) if core is not None else cmd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://{HOST}:{port}"
    if ready:
        wait(f"{url}/health")
    return proc, url


def start_vllm_router(exe: str, endpoints: list[str], policy: str, *extra: str, core: int | None = None,
                      ready: bool = True) -> tuple[subprocess.Popen, str]:
    """The peer: vllm-router with `policy` in front of `endpoints`, retries off (as ours count
    only what they measure), metrics on a port of their own on loopback (`ready`: as above)."""
    port = free_port()
    cmd = [exe, "--host", HOST, "--port", str(port), "--worker-urls", *endpoints, "--policy", policy,
           "--log-level", "warning", "--prometheus-host", HOST, "--prometheus-port", str(free_port()),
           "--disable-retries", *extra]
    proc = subprocess.Popen(pinned(cmd, core) if core is not None else cmd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://{HOST}:{port}"
    if ready:
        wait(f"{url}/health")
    return proc, url


def pct(values: list[float], p: float) -> float:
    """The p-th quantile (0..1) of `values`, NaNs left out."""
    values = sorted(v for v in values if v == v)
    return values[min(len(values) - 1, int(p * len(values)))]


def need(tool: str, how: str) -> str:
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else None)
    if not path:
        raise SystemExit(f"{tool} is not installed: {how}")
    return path


def vllm_router() -> str | None:
    """The peer router's executable: on PATH, or in ~/.cache/modelship/bench-venv (see bench/README.md)."""
    found = shutil.which("vllm-router")
    cached = Path.home() / ".cache/modelship/bench-venv/bin/vllm-router"
    return found or (str(cached) if cached.exists() else None)


class Nginx:
    """A Debian nginx with one worker, in its own temporary prefix: as a backend answering
    a fixed body, or as a reverse proxy with keep-alive upstream connections."""

    def __init__(self, core: int, port: int, *, body: str | None = None, upstreams: list[str] | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="modelship-bench-nginx-"))
        self.url = f"http://{HOST}:{port}"
        temp = " ".join(f"{k}_temp_path {self.dir};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        if body is not None:
            location = f"location / {{ default_type application/json; return 200 '{body}'; }}"
            upstream = ""
        else:
            servers = " ".join(f"server {u.removeprefix('http://')};" for u in upstreams or [])
            upstream = f"upstream backends {{ {servers} keepalive 256; }}"
            location = ("location / { proxy_pass http://backends; proxy_http_version 1.1; "
                        "proxy_set_header Connection \"\"; proxy_buffering off; }")
        (self.dir / "nginx.conf").write_text(
            f"worker_processes 1; worker_rlimit_nofile 20000; daemon off; pid {self.dir}/nginx.pid;\n"
            f"error_log {self.dir}/error.log warn;\n"
            f"events {{ worker_connections 20000; }}\n"
            f"http {{ access_log off; {temp} {upstream}\n"
            f"  server {{ listen {HOST}:{port} backlog=4096; keepalive_requests 1000000; {location} }} }}\n")
        self.proc = subprocess.Popen(pinned([need("nginx", "apt-get install nginx"), "-c", str(self.dir / "nginx.conf"),
                                             "-p", str(self.dir)], core),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def wrk(url: str, body: str, connections: int, seconds: float, core: int) -> dict[str, float]:
    """POST `body` with wrk (one thread, pinned): latency percentiles (s) and requests/s."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                f"wrk.body = [[{body}]]\n")
    try:
        done = subprocess.run(pinned([need("wrk", "apt-get install wrk"), "-t1", f"-c{connections}",
                                      f"-d{max(1, round(seconds))}s", "--latency", "-s", f.name, url], core),
                              capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    out = done.stdout
    if done.returncode:
        raise SystemExit(f"wrk failed on {url}: {(done.stderr or out).strip().splitlines()[-1]}")
    found = {}
    for p in ("50", "99"):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        found[f"p{p}"] = float(m.group(1)) * _UNITS[m.group(2)]
    found["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: .*", out)
    if bad or (errors and any(int(n) for n in re.findall(r"\d+", errors.group(0)))):
        raise SystemExit(f"{url}: wrk saw failures: {bad.group(0) if bad else ''} {errors.group(0) if errors else ''}")
    return found
