"""The deadlines of a node's waits share one loop timer (`ctdb.engines.waiting.Deadlines`).

Run on the simulator's virtual clock, so "when" is exact: a wait fails at
its deadline, never before and at most `Deadlines.GRAIN` after; a wait that
ended is never failed later; the heap stays as long as the waits in
progress, however many came and went; and the timer fires about once per
grain, not once per wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.waiting import Deadlines, Waiting
from tools.sim.loop import VirtualTimeLoop

GRAIN = Deadlines.GRAIN


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(scenario())
    finally:
        loop.close()


async def timed_out_at(w: Waiting, key: object, deadline: float) -> float:
    """When the wait for `key` failed with TIMEOUT (loop time)."""
    with pytest.raises(CtdbError) as info:
        await w.until(w.expect(key), deadline, f"{key} timed out")
    assert info.value.code == ErrorCode.TIMEOUT and str(key) in info.value.message
    return asyncio.get_running_loop().time()


def test_each_wait_times_out_at_its_deadline_never_early_at_most_a_grain_late() -> None:
    async def scenario() -> list[tuple[float, float]]:
        loop = asyncio.get_running_loop()
        w = Waiting()
        start = loop.time()
        # Out of order, close together and far apart, one already past.
        offsets = [3.0, 0.5, 0.501, 0.505, 2.0, 0.0, 1.0, 0.75, 3.0001, -1.0]
        ended = await asyncio.gather(
            *(timed_out_at(w, i, start + off) for i, off in enumerate(offsets))
        )
        # (a deadline already past is due now: at the start)
        return [(max(start + off, start), at) for off, at in zip(offsets, ended, strict=True)]

    for due, at in run(scenario):
        assert due <= at <= due + GRAIN + 1e-6


def test_a_wait_that_got_its_answer_or_was_cancelled_is_never_failed_later() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        w = Waiting()
        answered = w.expect("a")
        loop.call_later(0.1, w.answer, "a", "done")
        assert await w.until(answered, loop.time() + 1.0, "a") == "done"
        cancelled = w.expect("c")
        task = asyncio.ensure_future(w.until(cancelled, loop.time() + 1.0, "c"))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(2.0)  # past both deadlines
        assert answered.outcome() == "done"
        assert not cancelled.done  # its deadline, due meanwhile, did not settle it

    run(scenario)


def test_a_bounded_look_wakes_at_its_end_and_fails_nothing() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        w = Waiting()
        wait = w.expect("k")
        start = loop.time()
        assert not await Waiting.settled(wait, 0.25)
        assert start + 0.25 <= loop.time() <= start + 0.25 + GRAIN
        assert not wait.done
        loop.call_later(0.1, w.answer, "k", "late")
        assert await Waiting.settled(wait, 5.0) and wait.outcome() == "late"
        assert loop.time() == pytest.approx(start + 0.35)

    run(scenario)


def test_the_heap_stays_as_long_as_the_waits_in_progress() -> None:
    """Waits answered long before their deadline are dropped in bulk."""

    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        w = Waiting()
        slow = w.expect("slow")  # one wait stays in progress all along
        pending = asyncio.ensure_future(w.until(slow, loop.time() + 60, "slow"))
        for i in range(5_000):
            wait = w.expect(i)
            loop.call_soon(w.answer, i, i)
            assert await w.until(wait, loop.time() + 10, "fast") == i
        in_heap = len(w.deadlines._heap)
        w.answer("slow", "at last")
        assert await pending == "at last"
        return in_heap

    assert run(scenario) <= Deadlines.COMPACT_FROM


def test_the_timer_fires_about_once_per_grain_not_once_per_wait() -> None:
    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        w = Waiting()
        fired = 0
        fire = w.deadlines._fire

        def counted() -> None:
            nonlocal fired
            fired += 1
            fire()

        w.deadlines._fire = counted  # type: ignore[method-assign]
        start = loop.time()
        # 200 deadlines spread over 0.2 s: ten grains.
        await asyncio.gather(
            *(timed_out_at(w, i, start + 1.0 + i * 0.001) for i in range(200)),
        )
        return fired

    assert run(scenario) <= 0.2 / GRAIN + 2
