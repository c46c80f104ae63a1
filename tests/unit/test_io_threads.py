"""The operator's reconciles make their blocking API calls in threads (`asyncio.to_thread`,
the loop's default executor). That executor has min(32, CPUs + 4) threads by default, 6 on
the two-core test bed: 16 reconciles at once then waited for a thread, not for the API
server. `run.use_io_threads` sizes it for the reconciles."""

from __future__ import annotations

import asyncio
import threading

import pytest

from modelship.reconcile.controller import WORKERS
from modelship.reconcile.run import IO_THREADS, use_io_threads

pytestmark = pytest.mark.timeout(20)

def test_there_is_a_thread_for_every_reconcile_and_more():
    assert IO_THREADS >= 2 * WORKERS


def test_as_many_blocking_calls_as_io_threads_run_at_once():
    """IO_THREADS calls that each wait for all the others: they all end only if they all run at
    once (with fewer threads the barrier breaks), whatever else loads the machine."""
    barrier = threading.Barrier(IO_THREADS, timeout=10)

    async def scenario() -> None:
        pool = use_io_threads(asyncio.get_running_loop())
        try:
            await asyncio.gather(*(asyncio.to_thread(barrier.wait) for _ in range(IO_THREADS)))
        finally:
            pool.shutdown(wait=False)

    asyncio.run(scenario())
    assert not barrier.broken


def test_the_default_executor_would_not_have_run_them_at_once():
    """(What the test above would catch: the loop's default executor, min(32, CPUs + 4) threads.)"""
    import os

    if min(32, (os.cpu_count() or 1) + 4) >= IO_THREADS:
        pytest.skip("this machine's default executor is as large")
    barrier = threading.Barrier(IO_THREADS, timeout=0.5)

    async def scenario() -> None:
        await asyncio.gather(*(asyncio.to_thread(barrier.wait) for _ in range(IO_THREADS)),
                             return_exceptions=True)

    asyncio.run(scenario())
    assert barrier.broken
