"""Clocks for the engines' parts in tests (`ctdb.engines.host.Clock`).

`LoopClock` is the running event loop's, as the daemon's node gives them;
`ManualClock` is moved by the test itself, so that what a part does when
its timers fire is checked without an event loop and without waiting.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any


class LoopClock:
    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Any:
        return asyncio.get_running_loop().call_later(delay, callback, *args)

    def call_soon(self, callback: Callable[..., object], *args: Any) -> Any:
        return asyncio.get_running_loop().call_soon(callback, *args)


class _Timer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """Time stands still until `advance`, which runs what fell due, in order."""

    def __init__(self) -> None:
        self.time = 0.0
        self._seq = itertools.count()
        self._due: list[tuple[float, int, _Timer, Callable[..., object], tuple[Any, ...]]] = []

    def now(self) -> float:
        return self.time

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> _Timer:
        timer = _Timer()
        heapq.heappush(self._due, (self.time + delay, next(self._seq), timer, callback, args))
        return timer

    def call_soon(self, callback: Callable[..., object], *args: Any) -> _Timer:
        return self.call_later(0.0, callback, *args)

    def pending(self) -> int:
        return sum(1 for *_, timer, _, _ in self._due if not timer.cancelled)

    def advance(self, seconds: float) -> None:
        end = self.time + seconds
        while self._due and self._due[0][0] <= end:
            when, _, timer, callback, args = heapq.heappop(self._due)
            self.time = max(self.time, when)
            if not timer.cancelled:
                callback(*args)
        self.time = end
