"""The waiters of an engine's answers (the driver's side of `Answers`).

A waiter registers under its key before what answers it can happen
(`expect`: its own `Wait`), waits for the answer until a deadline (`until`)
and, however that ends, `forget`s it. A `Wait` holds the answer once given
(`done`), so the part that answers needs no event loop, nor does a test
that reads the answer (`Wait.outcome`); `until` makes a future only when the
answer is not there yet, the deadline fails that future directly, and the
waiting task wakes in the loop turn after the answer.

A flow (`ctdb.engines.flows`) waits by yielding an `Answer`, which its
driver carries out with `until`, or a `Heard` for a bounded look that
fails nothing, carried out with `settled`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines import flows


class Wait:
    """One waiter's answer: given or not yet (`done`), and who awaits it."""

    __slots__ = ("done", "error", "future", "result")

    def __init__(self) -> None:
        self.done = False
        self.result: Any = None
        self.error: CtdbError | None = None
        #: set while `until` awaits the answer
        self.future: asyncio.Future[None] | None = None

    def settle(self, result: Any, error: CtdbError | None) -> None:
        """The answer (the first one counts)."""
        if self.done:
            return
        self.done, self.result, self.error = True, result, error
        if self.future is not None and not self.future.done():
            self.future.set_result(None)

    def outcome(self) -> Any:
        """The answer given: its result, or its error raised."""
        assert self.done
        if self.error is not None:
            raise self.error
        return self.result


@dataclass(slots=True)
class Answer:
    """A flow's effect: `wait`'s answer, or TIMEOUT (`what`) at `deadline`."""

    wait: Wait
    deadline: float
    what: str


@dataclass(slots=True)
class Heard:
    """A flow's effect: whether `wait` has its answer after at most `seconds`;
    running out fails nothing (`Waiting.settled`)."""

    wait: Wait
    seconds: float


class Waiting:
    def __init__(self) -> None:
        self._waits: dict[Hashable, Wait] = {}

    def expect(self, key: Hashable) -> Wait:
        """The answer to `key`, which only its caller waits for."""
        wait = self._waits[key] = Wait()
        return wait

    def forget(self, key: Hashable, wait: Wait) -> None:
        """`wait` no longer waits for `key` (a newer waiter of the key stays)."""
        if self._waits.get(key) is wait:
            del self._waits[key]

    @staticmethod
    async def until(wait: Wait, deadline: float, what: str) -> Any:
        """`wait`'s answer, or TIMEOUT (`what`) at `deadline` (loop time).

        Only for a wait nobody else awaits (`expect`'s)."""
        if not wait.done:  # else answered already (a lock granted as its request was applied)
            loop = asyncio.get_running_loop()
            wait.future = loop.create_future()
            timer = loop.call_at(deadline, _expire, wait, what)
            try:
                await wait.future
            finally:
                timer.cancel()
                wait.future = None
        return wait.outcome()

    @staticmethod
    async def settled(wait: Wait, timeout: float) -> bool:
        """Whether `wait` has its answer, after waiting at most `timeout`
        seconds for it. Unlike `until`, running out fails nothing.

        (A timer that wakes the waiter, not `asyncio.wait`, which costs a
        tenth of a migration's CPU in its tasks and callbacks.)"""
        if not wait.done:
            loop = asyncio.get_running_loop()
            future = wait.future = loop.create_future()
            timer = loop.call_later(timeout, _wake, future)
            try:
                await future
            finally:
                timer.cancel()
                wait.future = None
        return wait.done

    def registered(
        self,
        register: Callable[[Hashable], None],
        unregister: Callable[[Hashable], None],
        deadline: float,
        what: str,
    ) -> flows.Flow[Answer, Any]:
        """Wait, under a key of its own, for an answer from a part that
        `register(key)` tells to give it and `unregister(key)` to forget it
        (however the wait ends); TIMEOUT (`what`) at `deadline`."""
        key = object()
        wait = self.expect(key)
        try:
            register(key)
            return (yield Answer(wait, deadline, what))
        finally:
            self.forget(key, wait)
            unregister(key)

    def answer(self, key: Hashable, result: Any) -> None:
        wait = self._waits.pop(key, None)
        if wait is not None:
            wait.settle(result, None)

    def fail(self, key: Hashable, error: CtdbError) -> None:
        wait = self._waits.pop(key, None)
        if wait is not None:
            wait.settle(None, error)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _expire(wait: Wait, what: str) -> None:
    wait.settle(None, CtdbError(ErrorCode.TIMEOUT, what))
