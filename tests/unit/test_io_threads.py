"""The operator's reconciles make their blocking API calls in threads (`asyncio.to_thread`,
the loop's default executor). That executor has min(32, CPUs + 4) threads by default, 6 on
the two-core test bed: 16 reconciles at once then waited for a thread, not for the API
server. `run.use_io_threads` sizes it for the reconciles."""

from __future__ import annotations

import asyncio
import time

import pytest

from modelship.reconcile.controller import WORKERS
from modelship.reconcile.run import IO_THREADS, use_io_threads

pytestmark = pytest.mark.timeout(20)

CALL = 0.3  # seconds one blocking call takes


async def blocking_calls(n: int) -> float:
    """n calls of CALL seconds at once, as n reconciles make them; how long they all took."""
    start = time.monotonic()
    await asyncio.gather(*(asyncio.to_thread(time.sleep, CALL) for _ in range(n)))
    return time.monotonic() - start


def test_there_is_a_thread_for_every_reconcile_and_more():
    assert IO_THREADS >= 2 * WORKERS


def test_as_many_blocking_calls_as_io_threads_run_at_once():
    async def scenario() -> float:
        pool = use_io_threads(asyncio.get_running_loop())
        try:
            await blocking_calls(IO_THREADS)  # the threads are started
            return await blocking_calls(IO_THREADS)
        finally:
            pool.shutdown(wait=False)

    # One round of CALL, not two or more (the default executor's 6 threads on two cores: six rounds).
    assert asyncio.run(scenario()) < 1.8 * CALL
