"""Running the router: the ASGI app, served by uvicorn (uvloop and httptools)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from .proxy import Limits, Router, upstream_client
from .registry import Registry, load_static

log = logging.getLogger("modelship.router")


def api_keys_from(path: str | None) -> list[str]:
    """One key per line (a mounted Secret's file); blank lines and # comments ignored."""
    if not path:
        return []
    keys = [line.strip() for line in Path(path).read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise ValueError(f"{path} holds no API key")
    return keys


def build(static: str | None, limits: Limits, api_keys: list[str], namespaces: list[str] | None = None,
          scrape_interval: float = 1.0, allowed: list[str] | None = None, seed: int | None = None) -> Router:
    """The router, with endpoints from a static file or (without one) from the cluster."""
    registry = load_static(static, seed=seed) if static else Registry()
    router = Router(registry, upstream_client(limits), limits, api_keys)
    if scrape_interval > 0:
        from .scrape import scrape_forever

        def scrape(loop: asyncio.AbstractEventLoop) -> None:
            router.background.append(loop.create_task(scrape_forever(registry, router.client, scrape_interval)))

        router.on_startup.append(scrape)
    if not static:
        from .discovery import Watcher

        _kube_login()

        import ipaddress

        networks = [ipaddress.ip_network(n, strict=False) for n in allowed] if allowed else None

        def start(loop: asyncio.AbstractEventLoop) -> None:
            Watcher(registry, list(namespaces or []), loop, networks).start()

        router.on_startup.append(start)
    return router


def _kube_login() -> None:
    import os

    from kubernetes import config

    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config()
    else:
        config.load_kube_config()


def raise_open_files() -> int:
    """Every open stream holds two sockets (client and engine): take the hard limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def serve(router: Router, host: str, port: int, drain_seconds: int, log_level: str = "warning") -> None:
    import uvicorn
    import uvloop

    raise_open_files()
    config = uvicorn.Config(router, host=host, port=port, loop="uvloop", http="httptools", lifespan="on",
                            access_log=False, log_level=log_level, timeout_graceful_shutdown=drain_seconds,
                            backlog=4096, timeout_keep_alive=75, proxy_headers=False,
                            server_header=False)
    # The loop is ours to make: uvicorn's `loop=` only applies when uvicorn makes the loop.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(uvicorn.Server(config).serve())
