"""The work queue's guarantees: collapsing, one reconcile per key at a time, requeues and backoff.

Plain test functions drive an event loop with `asyncio.run`; every test is bounded by
`asyncio.wait_for` (and pytest-timeout as a last resort).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Callable

import pytest

from modelship.reconcile.workqueue import WorkQueue

pytestmark = pytest.mark.timeout(10)

LIMIT = 2.0  # seconds any one scenario may take


def drive(scenario) -> None:
    asyncio.run(asyncio.wait_for(scenario(), LIMIT))


async def until(check, timeout: float = 1.0) -> None:
    """Wait until `check()` is true (polling the loop), or fail."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.001)


async def settle(q: WorkQueue, extra: float = 0.05) -> None:
    """Wait until the queue is idle and then a little longer, so that stray calls would show."""
    await until(lambda: len(q) == 0)
    await asyncio.sleep(extra)


def test_keys_added_while_queued_collapse():
    calls: Counter = Counter()

    async def handler(key):
        calls[key] += 1

    async def scenario():
        q = WorkQueue(handler, workers=2)
        for _ in range(5):
            q.add("a")
            q.add("b")
        assert len(q) == 2
        await settle(q)
        assert calls == {"a": 1, "b": 1}
        await q.close()

    drive(scenario)


def test_same_key_is_never_handled_concurrently():
    running: Counter = Counter()
    most: Counter = Counter()
    calls: Counter = Counter()

    async def handler(key):
        calls[key] += 1
        running[key] += 1
        most[key] = max(most[key], running[key])
        await asyncio.sleep(0.01)
        running[key] -= 1

    async def scenario():
        q = WorkQueue(handler, workers=8)
        for _ in range(20):
            for k in ("a", "b", "c"):
                q.add(k)
            await asyncio.sleep(0.002)
        await settle(q)
        await q.close()

    drive(scenario)
    assert most == {"a": 1, "b": 1, "c": 1}
    assert all(n >= 2 for n in calls.values()), calls  # adds during a run did run again


def test_different_keys_run_in_parallel_up_to_workers():
    running = 0
    most = 0

    async def handler(key):
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.02)
        running -= 1

    async def scenario():
        q = WorkQueue(handler, workers=3)
        for k in range(6):
            q.add(k)
        await settle(q)
        await q.close()

    drive(scenario)
    assert most == 3


def test_key_added_while_running_runs_once_more_afterwards():
    calls = 0
    first_started = None
    release = None

    async def handler(key):
        nonlocal calls
        calls += 1
        if calls == 1:
            first_started.set()
            await release.wait()

    async def scenario():
        nonlocal first_started, release
        first_started, release = asyncio.Event(), asyncio.Event()
        q = WorkQueue(handler)
        q.add("k")
        await first_started.wait()
        for _ in range(3):
            q.add("k")
        assert calls == 1  # not started while the first runs
        release.set()
        await settle(q)
        await q.close()

    drive(scenario)
    assert calls == 2


class RecordingQueue(WorkQueue):
    """Records the delays the queue asks for, so backoff is checked without timing races."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.delays: list[float] = []

    def _later(self, timers, key, after):
        self.delays.append(after)
        super()._later(timers, key, after)


def test_failure_is_retried_with_backoff_and_the_count_resets_after_success():
    times: list[float] = []
    outcomes = iter(["fail", "fail", "ok", "fail", "ok"])
    failures_seen: list[int] = []
    q: RecordingQueue

    async def handler(key):
        times.append(asyncio.get_running_loop().time())
        failures_seen.append(q.failures.get(key, 0))
        if next(outcomes) == "fail":
            raise RuntimeError("boom")

    async def scenario():
        nonlocal q
        q = RecordingQueue(handler, base_backoff=0.01, max_backoff=1.0)
        q.add("k")
        await until(lambda: len(times) == 3)  # fail, retry (fail), retry (ok)
        await settle(q)
        assert len(times) == 3
        assert "k" not in q.failures and not q.timers and not q.requeues  # success resets; nothing scheduled
        q.add("k")  # fails once more: the backoff starts again from the base
        await until(lambda: len(times) == 5)
        await settle(q)
        await q.close()

    drive(scenario)
    assert failures_seen == [0, 1, 2, 0, 1]
    assert q.delays == pytest.approx([0.01, 0.02, 0.01])
    assert times[1] - times[0] >= 0.0099 and times[2] - times[1] >= 0.0199  # the timers did wait


def test_backoff_is_capped():
    async def handler(key):
        raise RuntimeError("boom")

    q = None

    async def scenario():
        nonlocal q
        q = RecordingQueue(handler, base_backoff=0.01, max_backoff=0.015)
        q.add("k")
        await until(lambda: len(q.delays) == 4)
        await q.close()

    drive(scenario)
    assert q.delays == pytest.approx([0.01, 0.015, 0.015, 0.015])  # 0.02, 0.04, 0.08 capped


def test_returned_delay_requeues():
    times: list[float] = []

    async def handler(key):
        times.append(asyncio.get_running_loop().time())
        return 0.02 if len(times) == 1 else None

    async def scenario():
        q = WorkQueue(handler)
        q.add("k")
        await until(lambda: len(times) == 2)
        await settle(q)
        await q.close()

    drive(scenario)
    assert len(times) == 2
    assert times[1] - times[0] >= 0.019


def stamping() -> tuple[list[float], Callable]:
    """A handler that notes when each reconcile ran (the loop's clock), and its notes."""
    calls: list[float] = []

    async def handler(key):
        calls.append(asyncio.get_running_loop().time())

    return calls, handler


def test_earlier_delayed_add_wins():
    calls, handler = stamping()

    async def scenario():
        q = WorkQueue(handler)
        start = asyncio.get_running_loop().time()
        q.add("k", after=0.5)
        q.add("k", after=0.01)
        q.add("k", after=0.3)  # later than the pending timer: ignored
        await until(lambda: len(calls) == 1)
        assert calls[0] - start < 0.25
        assert not q.timers
        await asyncio.sleep(0.05)
        await q.close()

    drive(scenario)
    assert len(calls) == 1


def test_close_cancels_pending_timers_and_ignores_adds():
    calls: Counter = Counter()

    async def handler(key):
        calls[key] += 1

    async def scenario():
        q = WorkQueue(handler)
        q.add("later", after=0.02)
        timer = q.timers["later"]
        await q.close()
        assert timer.cancelled()
        assert not q.timers
        q.add("after-close")
        q.add("after-close-delayed", after=0.01)
        await asyncio.sleep(0.06)
        assert len(q) == 0

    drive(scenario)
    assert calls == {}


def test_close_cancels_running_handlers():
    cancelled = False
    started = None

    async def handler(key):
        nonlocal cancelled
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled = True
            raise

    async def scenario():
        nonlocal started
        started = asyncio.Event()
        q = WorkQueue(handler)
        q.add("k")
        await started.wait()
        await q.close()
        assert not q.tasks and len(q) == 0

    drive(scenario)
    assert cancelled


def test_forget_drops_timer_and_failures():
    calls = 0

    async def handler(key):
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    async def scenario():
        q = WorkQueue(handler, base_backoff=0.02)
        q.add("k")
        await until(lambda: calls == 1 and "k" in q.requeues)
        q.forget("k")
        assert "k" not in q.failures and "k" not in q.requeues
        await asyncio.sleep(0.06)
        await q.close()

    drive(scenario)
    assert calls == 1


def test_news_of_children_in_a_burst_is_one_reconcile_and_a_queued_one_takes_it_all():
    async def scenario():
        runs: list[float] = []

        async def handler(key):
            runs.append(asyncio.get_running_loop().time())

        q = WorkQueue(handler, workers=2)
        start = asyncio.get_running_loop().time()
        for _ in range(5):  # a burst of five child events
            q.add_soon("k", 0.2)
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.4)
        assert len(runs) == 1 and 0.19 <= runs[0] - start <= 0.35
        q.add("k")  # queued at once (its own change) ...
        q.add_soon("k", 0.2)  # ... so news meanwhile needs no reconcile of its own
        await asyncio.sleep(0.4)
        assert len(runs) == 2
        await q.close()

    asyncio.run(scenario())


def test_a_reconcile_supersedes_the_requeue_and_the_news_asked_for_before_it():
    """A reconcile reads everything afresh: the look again that an earlier one asked for, and
    the news gathered for it, are not reconciled once more after it."""
    calls: list[float] = []

    async def handler(key):
        calls.append(asyncio.get_running_loop().time())
        return 0.3 if len(calls) == 1 else None  # the first asks to look again in 0.3 s

    async def scenario():
        q = WorkQueue(handler)
        q.add("k")
        await until(lambda: len(calls) == 1 and "k" in q.requeues)
        q.add_soon("k", 0.05)  # a child's news...
        await until(lambda: len(calls) == 2)  # ...reconciled: it supersedes the 0.3 s look
        assert not q.requeues and not q.news
        q.add_soon("k", 0.2)  # news again, then the key's own change before it is due
        q.add("k")
        await until(lambda: len(calls) == 3)
        await asyncio.sleep(0.4)  # neither the first look nor the news comes
        assert len(calls) == 3
        await q.close()

    drive(scenario)


def test_news_that_comes_during_a_reconcile_is_reconciled_after_it():
    started, release, calls = asyncio.Event(), asyncio.Event(), []

    async def handler(key):
        calls.append(key)
        if len(calls) == 1:
            started.set()
            await release.wait()

    async def scenario():
        q = WorkQueue(handler)
        q.add("k")
        await started.wait()
        q.add_soon("k", 0.01)  # the reconcile may have read before it came
        release.set()
        await until(lambda: len(calls) == 2)
        await settle(q)
        await q.close()

    drive(scenario)
    assert calls == ["k", "k"]


def test_what_others_ask_for_later_is_not_superseded():
    """A Service's apply tried again later (`BackgroundApplies`) is not the reconcile's to drop."""
    calls, handler = stamping()

    async def scenario():
        q = WorkQueue(handler)
        start = asyncio.get_running_loop().time()
        q.add("k", after=0.1)
        q.add_soon("k", 0.01)  # a child's news, due sooner, does not replace it
        await until(lambda: len(calls) == 2)
        assert calls[0] - start < 0.09 and calls[1] - start >= 0.099
        q.add("k", after=0.05)
        q.add("k")  # nor does a reconcile in between
        await until(lambda: len(calls) == 4)
        await q.close()

    drive(scenario)
