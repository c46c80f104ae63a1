"""The operator process: health endpoints, leader election, then Kopf.

With leader election on, a replica starts Kopf only once it holds the Lease: a standby
watches nothing and writes nothing, so two replicas never reconcile at once. A leader that
loses the Lease ends its process at once, without waiting for Kopf to wind down (as
client-go's callers do; a reconcile cut short is taken up again by the next leader, see the
kill-mid-reconcile test): its pod restarts and stands by. One that is told to stop stops
Kopf, then releases the Lease for a standby to take over at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor

import kopf
from aiohttp import web

from ..login import api_client
from ..settings import Settings
from .leader import Election
from .metrics import ControllerMetrics

log = logging.getLogger("modelship")

# The reconcile loop's API calls run in threads (`asyncio.to_thread`: the loop's default
# executor), whose default size is min(32, CPUs + 4): 6 on two cores, so that 16 reconciles at
# once made at most 6 requests at once and the rest queued for a thread, not for the API server.
# Enough for every reconcile at once, the resync and the router poller beside them.
IO_THREADS = 32


def use_io_threads(loop: asyncio.AbstractEventLoop, threads: int = IO_THREADS) -> ThreadPoolExecutor:
    """The loop's default executor, sized for the reconciles rather than for the CPUs."""
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kube-io")
    loop.set_default_executor(pool)
    return pool


def identity() -> str:
    """This replica's name in the Lease: its pod's name (unique among the live ones) and a
    random suffix, so that a restarted process is never mistaken for its predecessor."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def election(settings: Settings) -> Election | None:
    le = settings.leader_election
    if not le.enabled:
        return None
    from kubernetes import client

    return Election(client.CoordinationV1Api(api_client()), le.namespace or os.environ["POD_NAMESPACE"],
                    le.lease_name, identity(), le.lease_seconds, le.renew_deadline_seconds, le.retry_seconds)


class Health:
    """`/healthz`: the process works (standing by, or Kopf running). `/readyz`: the same; a
    standby is ready too, or a rollout would wait for it forever."""

    def __init__(self) -> None:
        self.state = "starting"
        self.kopf: asyncio.Task | None = None

    def alive(self) -> bool:
        return self.kopf is None or not self.kopf.done()

    async def handle(self, _: web.Request) -> web.Response:
        return web.json_response({"state": self.state}, status=200 if self.alive() else 500)

    async def serve(self, host: str, port: int) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/healthz", self.handle)
        app.router.add_get("/readyz", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        return runner


async def main(settings: Settings, metrics: ControllerMetrics) -> int:
    """Run until told to stop (0) or until Kopf fails (1); a lost Lease ends the process (1)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    use_io_threads(loop)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    health = Health()
    runner = await health.serve(settings.bind_host, settings.health_port) if settings.health_port else None
    lease = election(settings)
    try:
        if lease:
            health.state = "standby"
            metrics.leading(False)
            if not await lease.acquire(stop):
                return 0
        health.state = "leading"
        metrics.leading(True)
        return await _work(settings, metrics, lease, stop, health)
    finally:
        metrics.leading(False)
        if lease:
            await lease.release()
        if runner:
            await runner.cleanup()


async def _work(settings: Settings, metrics: ControllerMetrics, lease: Election | None, stop: asyncio.Event,
                health: Health) -> int:
    kopf_stop = asyncio.Event()
    health.kopf = asyncio.create_task(kopf.operator(
        standalone=True, namespaces=settings.namespaces or (), clusterwide=not settings.namespaces,
        memo=kopf.Memo(settings=settings, metrics=metrics), stop_flag=kopf_stop))
    waits = {health.kopf, asyncio.create_task(stop.wait())}
    kept = asyncio.create_task(lease.keep()) if lease else None
    if kept:
        waits.add(kept)
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    if kept and kept.done() and not kept.cancelled():
        log.critical("stopping at once: %s; another replica may lead now", kept.exception() or kept.result())
        logging.shutdown()
        os._exit(1)  # not one more write: the renew deadline is shorter than the lease
    kopf_stop.set()
    for task in waits - {health.kopf}:
        task.cancel()
    try:
        await health.kopf
    except Exception as e:
        log.error("the operator stopped: %s", e)
        return 1
    return 0
