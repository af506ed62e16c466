"""The waiters of an engine's answers, on the event loop (the driver's side of `Answers`).

A waiter registers a future under its key before what answers it can
happen (`expect`), waits for it until a deadline (`until`) and, however
that ends, `forget`s it. The future is the waiter's alone, so the deadline
fails it directly: one timer, and the waiting task wakes in the loop turn
after the answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any

from ctdb.common.errors import CtdbError, ErrorCode


class Waiting:
    def __init__(self) -> None:
        self._futures: dict[Hashable, asyncio.Future[Any]] = {}

    def expect(self, key: Hashable) -> asyncio.Future[Any]:
        """A future for the answer to `key`, which only its caller waits for."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futures[key] = fut
        return fut

    def forget(self, key: Hashable, fut: asyncio.Future[Any]) -> None:
        """`fut` no longer waits for `key` (a newer waiter of the key stays)."""
        if self._futures.get(key) is fut:
            del self._futures[key]

    @staticmethod
    async def until(fut: asyncio.Future[Any], deadline: float, what: str) -> Any:
        """`fut`'s answer, or TIMEOUT (`what`) at `deadline` (loop time).

        Only for a future nobody else waits for (`expect`'s): cancelling the
        waiting task cancels it, and the deadline fails it."""
        if fut.done():  # answered already (a lock granted as its request was applied)
            return fut.result()
        timer = fut.get_loop().call_at(deadline, _expire, fut, what)
        try:
            return await fut
        finally:
            timer.cancel()

    async def wait(
        self,
        register: Callable[[Hashable], None],
        unregister: Callable[[Hashable], None],
        deadline: float,
        what: str,
    ) -> Any:
        """Wait, under a key of its own, for an answer from a part that
        `register(key)` tells to give it and `unregister(key)` to forget it
        (however the wait ends); TIMEOUT (`what`) at `deadline`."""
        key = object()
        fut = self.expect(key)
        try:
            register(key)
            return await self.until(fut, deadline, what)
        finally:
            self.forget(key, fut)
            unregister(key)

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
