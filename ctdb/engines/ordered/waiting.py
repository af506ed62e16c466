"""The waiters of the ordered engine's answers, on the event loop (the driver's side of `Answers`).

A waiter registers a future under its key before what answers it can
happen (`expect`), then waits for it until a deadline (`until`). The
future is the waiter's alone, so the deadline fails it directly: one
timer, and the waiting task wakes in the loop turn after the answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Any

from ctdb.common.errors import CtdbError, ErrorCode


class Waiting:
    def __init__(self) -> None:
        self._futures: dict[Hashable, asyncio.Future[Any]] = {}

    def expect(self, key: Hashable, fut: asyncio.Future[Any] | None = None) -> asyncio.Future[Any]:
        """A future (`fut`, or a new one) for the answer to `key`."""
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
        self._futures[key] = fut
        return fut

    def forget(self, key: Hashable) -> None:
        """Nobody waits for `key` any more."""
        self._futures.pop(key, None)

    async def until(
        self, key: Hashable, fut: asyncio.Future[Any], deadline: float, what: str
    ) -> Any:
        """`fut`'s answer, or TIMEOUT (`what`) at `deadline` (loop time).

        Only for a future nobody else waits for: cancelling the waiting task
        cancels it, and the deadline fails it (a shared one waits with
        `barriers.until`)."""
        timer = asyncio.get_running_loop().call_at(deadline, _expire, fut, what)
        try:
            return await fut
        finally:
            timer.cancel()
            if self._futures.get(key) is fut:
                del self._futures[key]

    def answer(self, key: Hashable, result: Any) -> None:
        fut = self._futures.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(result)

    def fail(self, key: Hashable, error: CtdbError) -> None:
        fut = self._futures.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_exception(error)


def _expire(fut: asyncio.Future[Any], what: str) -> None:
    if not fut.done():
        fut.set_exception(CtdbError(ErrorCode.TIMEOUT, what))
