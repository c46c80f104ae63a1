"""Running the router: the ASGI app, served by uvicorn (uvloop and httptools)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
from pathlib import Path

from .app import Router
from .registry import Registry, load_static
from .scrape import scrape_forever
from .settings import Limits, RouterSettings
from .upstream import AiohttpUpstream, Upstream

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


async def reload_keys_forever(router: Router, path: str, seen: tuple | None, interval: float = 10.0) -> None:
    """Follow the API keys file: a Secret mounted as a volume is updated in place when the
    Secret changes (a rotated key works within a minute or so, with no restart). A file that
    cannot be read, or holds no key, leaves the keys as they were, with a warning. `seen`:
    the file's stamp when the keys in use were read."""
    while True:
        await asyncio.sleep(interval)
        stamp = _stamp(path)
        if stamp == seen:
            continue
        seen = stamp
        try:
            keys = api_keys_from(path)
        except (OSError, ValueError) as e:
            log.warning("API keys not reloaded, the old ones stay: %s", e)
            continue
        router.set_api_keys(keys)
        log.info("API keys reloaded from %s (%d keys)", path, len(keys))


def _stamp(path: str) -> tuple | None:
    try:
        st = Path(path).stat()  # follows the Secret volume's symlinks to the current file
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def upstream_client(limits: Limits, max_connections: int = 10_000) -> Upstream:
    """The one pooled client every request goes through."""
    return AiohttpUpstream(limits.connect_timeout, max_connections)


def build(static: str | None, limits: Limits, api_keys: list[str], namespaces: list[str] | None = None,
          scrape_interval: float = 1.0, allowed: list[str] | None = None, seed: int | None = None,
          api_keys_file: str | None = None, keys_interval: float = 10.0) -> Router:
    """The router, with endpoints from a static file or (without one) from the cluster;
    `api_keys_file`, when given, is followed for changes."""
    registry = load_static(static, seed=seed) if static else Registry()
    router = Router(registry, upstream_client(limits), limits, api_keys)
    if api_keys_file:
        stamp = _stamp(api_keys_file)

        def follow_keys(loop: asyncio.AbstractEventLoop) -> None:
            router.background.append(loop.create_task(reload_keys_forever(router, api_keys_file, stamp,
                                                                          keys_interval)))

        router.on_startup.append(follow_keys)
    if scrape_interval > 0:
        def scrape(loop: asyncio.AbstractEventLoop) -> None:
            router.background.append(loop.create_task(scrape_forever(registry, router.client, scrape_interval)))

        router.on_startup.append(scrape)
    if not static:
        # Imported here for start-up time: the kubernetes library takes about a second to
        # import, and a router with a static list (the tests build many) never uses it.
        from ..login import api_client
        from .discovery import Watcher

        kube = api_client()  # logged in now, so that a missing kubeconfig stops the start
        networks = [ipaddress.ip_network(n, strict=False) for n in allowed] if allowed else None

        def start(loop: asyncio.AbstractEventLoop) -> None:
            Watcher(registry, list(namespaces or []), loop, kube, networks).start()

        router.on_startup.append(start)
    return router


def from_settings(settings: RouterSettings) -> Router:
    """The router its settings describe (the settings are its limits too)."""
    return build(settings.static, settings, api_keys_from(settings.api_keys_file), settings.namespaces,
                 settings.scrape_interval, settings.allow_cidrs, api_keys_file=settings.api_keys_file)


def raise_open_files() -> int:
    """Every open stream holds two sockets (client and engine): take the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def serve(router: Router, host: str, port: int, drain_seconds: int, log_level: str = "warning") -> None:
    # Imported here for start-up time: only serving needs them (build() and the tests do not).
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
