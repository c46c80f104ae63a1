"""The router's timing wheel: deadlines that fire, deadlines that are cleared, one timer."""

from __future__ import annotations

import asyncio
import time

import pytest

from modelship.router.wheel import Wheel


def test_a_deadline_that_passes_cancels_the_block_as_a_timeout_and_the_task_goes_on():
    async def go() -> float:
        wheel, task = Wheel(tick=0.01), asyncio.current_task()
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            with wheel.timeout(0.05, task):
                await asyncio.sleep(5)
        took = time.monotonic() - started
        await asyncio.sleep(0.02)  # the task is not left cancelled
        assert task.cancelling() == 0
        return took

    took = asyncio.run(go())
    assert 0.05 <= took < 0.5, took


def test_a_block_that_ends_in_time_is_not_cancelled_later():
    async def go() -> None:
        wheel, task = Wheel(tick=0.01), asyncio.current_task()
        for _ in range(100):
            with wheel.timeout(0.03, task):
                await asyncio.sleep(0)
        await asyncio.sleep(0.1)  # past every deadline armed above: none fires
        assert task.cancelling() == 0

    asyncio.run(go())


def test_many_deadlines_share_slots_and_fire_in_order():
    async def go() -> list[int]:
        wheel, fired = Wheel(tick=0.01), []
        for i, delay in enumerate([0.06, 0.02, 0.04, 0.02]):
            wheel.call_after(delay, i, lambda i=i: fired.append(i))
        slot = wheel.call_after(0.03, "cleared", lambda: fired.append(-1))
        wheel.cancel(slot, "cleared")
        assert len(wheel._slots) <= 4  # one dict per slot, not one timer per deadline
        await asyncio.sleep(0.15)
        return fired

    fired = asyncio.run(go())
    assert sorted(fired[:2]) == [1, 3] and fired[2:] == [2, 0], fired


def test_a_failing_callback_does_not_stop_the_others():
    async def go() -> list[str]:
        wheel, fired = Wheel(tick=0.01), []
        wheel.call_after(0.01, "bad", lambda: 1 / 0)
        wheel.call_after(0.01, "good", lambda: fired.append("good"))
        await asyncio.sleep(0.05)
        return fired

    assert asyncio.run(go()) == ["good"]


def test_a_cancellation_from_elsewhere_in_the_same_moment_stays_a_cancellation():
    async def go() -> str:
        wheel, armed = Wheel(tick=0.01), []

        async def request() -> str:
            task = asyncio.current_task()
            try:
                with wheel.timeout(0.02, task) as deadline:
                    armed.append(deadline.slot)
                    await asyncio.sleep(5)
            except TimeoutError:
                return "timeout"
            return "done"

        task = asyncio.create_task(request())
        await asyncio.sleep(0)
        # The same slot as the deadline: aimed at the middle of that slot, not 0.02 s from now
        # (the two "now"s may straddle a slot boundary); aimed again if the clock moved on.
        while (got := wheel.call_after((armed[0] - 0.5) * wheel.tick - time.monotonic(), "client left",
                                       task.cancel)) != armed[0]:
            wheel.cancel(got, "client left")
        try:
            return await task
        except asyncio.CancelledError:
            return "cancelled"

    assert asyncio.run(go()) == "cancelled"


def test_one_wheel_serves_one_loop_after_another():
    """A router object may outlive a loop (tests call it under several asyncio.run)."""
    wheel = Wheel(tick=0.01)

    async def first() -> None:
        wheel.call_after(0.2, "pending", lambda: None)  # its timer dies with this loop
        await asyncio.sleep(0.05)

    async def second() -> list[str]:
        fired: list[str] = []
        wheel.call_after(0.3, "later", lambda: fired.append("later"))  # after the dead timer's slot
        await asyncio.sleep(0.45)
        return fired

    asyncio.run(first())
    assert asyncio.run(second()) == ["later"]
