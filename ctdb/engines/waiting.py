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

Nearly every request waits once, with a deadline seconds away, and is
answered within milliseconds. A loop timer for each (armed, then
cancelled) cost a node serving eight storing clients some 6 % of its CPU
(7 µs a store, uvloop's timer handles), so one `Waiting`'s deadlines share
one timer (`Deadlines`).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines import flows


class Deadlines:
    """The deadlines of one node's waits, on one loop timer.

    A heap of (deadline, waits); the timer is armed for the earliest, and
    when it fires it fails (or wakes) what is due and is armed again, at
    most every `GRAIN` seconds: a wait may end up to `GRAIN` late, never
    early. An entry whose wait ended is not removed (that would cost a
    search); it is skipped when due, and the heap drops all such entries
    once they are half of it, so it stays about as long as the number of
    waits in progress.

    Per node, not per loop: the simulator runs many nodes on one loop and
    stops a node's callbacks as SIGSTOP stops a process, and a timer runs
    in the context of the node that armed it.
    """

    #: the shortest time between two firings of the timer (seconds)
    GRAIN = 0.02
    #: the heap is not compacted below this size
    COMPACT_FROM = 64

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Wait, asyncio.Future[None], str | None]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._armed = 0.0
        self._compact_at = self.COMPACT_FROM

    def add(
        self, deadline: float, wait: Wait, future: asyncio.Future[None], what: str | None
    ) -> None:
        """At `deadline`, if `wait` is still awaited through `future`: fail it
        with TIMEOUT (`what`), or, with `what` None, only wake its waiter."""
        heap = self._heap
        heapq.heappush(heap, (deadline, next(self._order), wait, future, what))
        if len(heap) >= self._compact_at:
            heap[:] = [entry for entry in heap if not entry[3].done()]
            heapq.heapify(heap)
            self._compact_at = max(self.COMPACT_FROM, 2 * len(heap))
        if self._timer is None or deadline + self.GRAIN < self._armed:
            self._arm(deadline)

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = at
        self._timer = asyncio.get_running_loop().call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer = None
        heap = self._heap
        now = asyncio.get_running_loop().time()
        while heap and heap[0][0] <= now:
            _, _, wait, future, what = heapq.heappop(heap)
            if future.done():
                continue  # its wait ended (answered, or its waiter cancelled)
            if what is None:
                future.set_result(None)
            else:
                wait.settle(None, CtdbError(ErrorCode.TIMEOUT, what))
        if heap:
            self._arm(max(heap[0][0], now + self.GRAIN))


class Wait:
    """One waiter's answer: given or not yet (`done`), and who awaits it."""

    __slots__ = ("deadlines", "done", "error", "future", "result")

    def __init__(self, deadlines: Deadlines) -> None:
        #: where its deadline goes while it is awaited (its node's)
        self.deadlines = deadlines
        self.done = False
        self.result: Any = None
        self.error: CtdbError | None = None
        #: set while `until` or `settled` awaits the answer
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
        self.deadlines = Deadlines()

    def expect(self, key: Hashable) -> Wait:
        """The answer to `key`, which only its caller waits for."""
        wait = self._waits[key] = Wait(self.deadlines)
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
            future = wait.future = asyncio.get_running_loop().create_future()
            wait.deadlines.add(deadline, wait, future, what)
            try:
                await future
            finally:
                wait.future = None
        return wait.outcome()

    @staticmethod
    async def settled(wait: Wait, timeout: float) -> bool:
        """Whether `wait` has its answer, after waiting at most `timeout`
        seconds for it. Unlike `until`, running out fails nothing.

        (Its deadline wakes the waiter, not `asyncio.wait`, which costs a
        tenth of a migration's CPU in its tasks and callbacks.)"""
        if not wait.done:
            loop = asyncio.get_running_loop()
            future = wait.future = loop.create_future()
            wait.deadlines.add(loop.time() + timeout, wait, future, None)
            try:
                await future
            finally:
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
