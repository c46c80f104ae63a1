"""Running the router: the ASGI app, served by uvicorn (uvloop and httptools)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
import time
from pathlib import Path

import orjson

from .accesslog import AccessLog, Backlog, BacklogStream
from .app import Router
from .callers import read_keys
from .registry import Registry, load_static
from .scrape import scrape_forever
from .quota import Limit
from .settings import ConfigError, Limits, RouterSettings, load
from .upstream import AiohttpUpstream, Unreachable, Upstream

log = logging.getLogger("modelship.router")


def api_keys_from(path: str | None) -> dict[str, str]:
    """key -> caller name, from the keys file (a mounted Secret's): a YAML mapping of names to
    keys, or one key per line (blank lines and # comments ignored). See callers.py."""
    return read_keys(path) if path else {}


def configure(router: Router, settings: RouterSettings) -> None:
    """The settings' callers and limits, applied to a running router (at start, and when the
    settings file changes)."""
    router.set_callers({n: c.models for n, c in settings.callers.items()}, settings.default_caller.models)
    router.set_limits({n: _limit(c) for n, c in settings.callers.items()}, _limit(settings.default_caller),
                      {n: _limit(m) for n, m in settings.model_limits.items()})


def _limit(s) -> Limit:
    return Limit(s.requests_per_minute, s.tokens_per_minute, s.concurrent_requests)


async def follow_forever(router: Router, keys: str | None, config: str | None, seen: dict,
                         interval: float = 10.0) -> None:
    """Follow the API keys file and the settings file: a Secret or ConfigMap mounted as a
    volume is updated in place when it changes (a rotated key, a new limit apply within a
    minute or so, with no restart). A file that cannot be read, or is not valid, leaves what
    was in use, with a warning. Of the settings file, the callers and the limits apply so; the
    other settings need a restart. `seen`: each file's stamp when what is in use was read."""
    while True:
        await asyncio.sleep(interval)
        for path in list(seen):
            stamp = _stamp(path)
            if stamp == seen[path]:
                continue
            seen[path] = stamp
            try:
                if path == keys:
                    found = api_keys_from(path)
                    router.set_api_keys(found)
                    log.info("API keys reloaded from %s (%d keys)", path, len(found))
                else:
                    configure(router, load(config=path))
                    log.info("callers and limits reloaded from %s", path)
            except (OSError, ValueError, ConfigError) as e:
                log.warning("%s not reloaded, what was in use stays: %s", path, e)


async def share_limits_forever(router: Router, peers, interval: float) -> None:
    """Every `interval`, read each peer's counters (`GET /modelship/quota`) into this replica's
    limits, so that a limit holds over all the router's replicas (quota.py says the error).
    `peers()` gives the peers' base URLs now (a static list, or the router Service's ready
    endpoints); this replica among them is known by its boot id and passed over."""
    known: set[str] = set()
    while True:
        await asyncio.sleep(interval)
        try:
            urls = sorted(set(await peers()))
        except Exception as e:  # noqa: BLE001 - the next round tries again
            log.warning("the router's peers could not be listed: %s", e)
            continue
        for gone in known - set(urls):
            router.quotas.forget(gone)
        known = set(urls)

        async def read(url: str) -> None:
            try:
                status, body = await router.client.get(f"{url}/modelship/quota", max(0.2, 0.8 * interval))
                report = orjson.loads(body) if status == 200 else None
            except (Unreachable, orjson.JSONDecodeError):
                report = None
            if isinstance(report, dict):
                router.quotas.merge(url, report, time.monotonic())  # (its own report, by its boot id: ignored)
            else:  # its in-flight count no longer holds; what it let through counts from its next report
                router.quotas.quiet(url)

        for url, result in zip(urls, await asyncio.gather(*(read(u) for u in urls), return_exceptions=True)):
            if isinstance(result, Exception):
                log.warning("the limits' counters of %s could not be read: %s", url, result)


def _stamp(path: str) -> tuple | None:
    try:
        st = Path(path).stat()  # follows the Secret volume's symlinks to the current file
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def upstream_client(limits: Limits, max_connections: int = 10_000) -> Upstream:
    """The one pooled client every request goes through."""
    return AiohttpUpstream(limits.connect_timeout, max_connections)


def build(static: str | None, limits: Limits, api_keys: list[str] | dict[str, str],
          namespaces: list[str] | None = None, scrape_interval: float = 1.0, allowed: list[str] | None = None,
          seed: int | None = None, api_keys_file: str | None = None, keys_interval: float = 10.0,
          settings: RouterSettings | None = None) -> Router:
    """The router, with endpoints from a static file or (without one) from the cluster;
    `api_keys_file` and the settings file, when given, are followed for changes."""
    registry = load_static(static, seed=seed) if static else Registry()
    router = Router(registry, upstream_client(limits), limits, api_keys)
    config = settings.config if settings is not None else None
    if settings is not None:
        configure(router, settings)
        if settings.access_log:
            router.access = AccessLog(on_drop=router.metrics.log_dropped.inc)

            def write_log(loop: asyncio.AbstractEventLoop) -> None:
                router.background.append(loop.create_task(router.access.run()))

            router.on_startup.append(write_log)
    if api_keys_file or config:
        seen = {path: _stamp(path) for path in (api_keys_file, config) if path}

        def follow(loop: asyncio.AbstractEventLoop) -> None:
            router.background.append(loop.create_task(follow_forever(router, api_keys_file, config, seen,
                                                                     keys_interval)))

        router.on_startup.append(follow)
    if scrape_interval > 0:
        def scrape(loop: asyncio.AbstractEventLoop) -> None:
            router.background.append(loop.create_task(scrape_forever(registry, router.client, scrape_interval)))

        router.on_startup.append(scrape)
    kube = None
    if not static or (settings is not None and settings.peers_service):
        # Imported here for start-up time: the kubernetes library takes about a second to
        # import, and a router with a static list (the tests build many) never uses it.
        from ..login import api_client

        kube = api_client()  # logged in now, so that a missing kubeconfig stops the start
    networks = [ipaddress.ip_network(n, strict=False) for n in allowed] if allowed else None
    if not static:
        from .discovery import Watcher


        def start(loop: asyncio.AbstractEventLoop) -> None:
            Watcher(registry, list(namespaces or []), loop, kube, networks).start()

        router.on_startup.append(start)
    if settings is not None and (settings.peers or settings.peers_service):
        peers = _static_peers(settings.peers) if settings.peers else _service_peers(kube, settings.peers_service, networks)

        def share(loop: asyncio.AbstractEventLoop) -> None:
            router.background.append(loop.create_task(share_limits_forever(router, peers, settings.peer_interval)))

        router.on_startup.append(share)
    return router


def _static_peers(urls: list[str]):
    found = [u.rstrip("/") for u in urls]

    async def peers() -> list[str]:
        return found

    return peers


def _service_peers(kube, service: str, networks):
    """The ready endpoints of the router's own Service (`namespace/name`), listed at most every
    10 s (a replica that comes or goes is seen within that)."""
    from kubernetes import client

    from ..endpointslices import SERVICE_NAME, slice_endpoints

    namespace, _, name = service.partition("/")
    cache: dict = {"at": -1e9, "urls": []}

    def listed() -> list[str]:
        answer = client.DiscoveryV1Api(kube).list_namespaced_endpoint_slice(
            namespace, label_selector=f"{SERVICE_NAME}={name}", _preload_content=False, _request_timeout=10)
        return sorted({url for item in orjson.loads(answer.data)["items"]
                       for url, ready in slice_endpoints(item, networks)[1].items() if ready})

    async def peers() -> list[str]:
        if time.monotonic() - cache["at"] >= 10:
            cache["urls"] = await asyncio.to_thread(listed)
            cache["at"] = time.monotonic()
        return cache["urls"]

    return peers


def from_settings(settings: RouterSettings) -> Router:
    """The router its settings describe (the settings are its limits too)."""
    return build(settings.static, settings, api_keys_from(settings.api_keys_file), settings.namespaces,
                 settings.scrape_interval, settings.allow_cidrs, api_keys_file=settings.api_keys_file,
                 settings=settings)


def raise_open_files() -> int:
    """Every open stream holds two sockets (client and engine): take the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def serve(router: Router, host: str, port: int, drain_seconds: int, log_level: str = "warning",
          header_timeout: float = 10.0) -> None:
    # Imported here for start-up time: only serving needs them (build() and the tests do not).
    import uvicorn
    import uvloop

    raise_open_files()
    from .connection import protocol

    backlog = log_to_backlog(router)
    # log_config=None: uvicorn's loggers keep no handler of their own and go to the root's.
    config = uvicorn.Config(router, host=host, port=port, loop="uvloop", http=protocol(header_timeout), lifespan="on",
                            access_log=False, log_level=log_level, log_config=None, timeout_graceful_shutdown=drain_seconds,
                            backlog=4096, timeout_keep_alive=75, proxy_headers=False,
                            server_header=False)
    # The loop is ours to make: uvicorn's `loop=` only applies when uvicorn makes the loop.
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(uvicorn.Server(config).serve())
    finally:  # (uvicorn exits the process when it cannot bind: the line that says why is written)
        if router.access is not None:
            router.access.flush()  # (what the last half second gathered)
        backlog.close()  # (2 s at most to write what waits: a blocked stderr does not hold the exit)


def log_to_backlog(router: Router) -> Backlog:
    """The router's log lines go to stderr the way its access log does, by a thread of their
    own (accesslog.Backlog): a stderr that blocks stops no request. Returns that Backlog."""
    if router.access is not None and router.access.backlog is not None:
        backlog = router.access.backlog
    else:
        backlog = Backlog(on_drop=router.metrics.log_dropped.inc)
    handler = logging.StreamHandler(BacklogStream(backlog))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("modelship").setLevel(logging.INFO)  # (a reloaded keys file is said)
    return backlog
