"""A seeded, single-threaded event loop with a virtual clock, for the memory network.

Everything random (latencies, which in-flight messages a crash loses) comes
from its one `random.Random(seed)`, and ties are broken by insertion order,
so a run is a pure function of the seed and can be replayed exactly; the
optional trace lets a test prove that. The network runs on it through
`transport.memory_links.Scheduler`. (The cluster simulator itself runs
real nodes on an asyncio loop with a virtual clock instead:
`tools/sim/loop.py`.)
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import Any


class SimHandle:
    """What `SimScheduler.call_later` returns; `cancel()` makes it a no-op."""

    __slots__ = ("when", "callback", "args", "cancelled")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class SimScheduler:
    """A virtual-time event loop whose whole behaviour is fixed by `seed`.

    Events run in (time, insertion sequence) order, never concurrently; the
    clock jumps from one event to the next, so simulated seconds cost nothing.
    `trace` is a list of strings when `trace=True`: the network appends one
    line per observable event, so two runs can be compared line by line.
    """

    def __init__(self, seed: int = 0, *, trace: bool = False) -> None:
        self.seed = seed
        self.random = random.Random(seed)
        self.trace: list[str] | None = [] if trace else None
        self._now = 0.0
        self._seq = 0
        self._heap: list[tuple[float, int, SimHandle]] = []

    def time(self) -> float:
        return self._now

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> SimHandle:
        handle = SimHandle(self._now + max(0.0, delay), callback, args)
        self._seq += 1
        heapq.heappush(self._heap, (handle.when, self._seq, handle))
        return handle

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> SimHandle:
        return self.call_later(0.0, callback, *args)

    def record(self, event: str) -> None:
        """Append `event` (stamped with the virtual time) to the trace, if tracing."""
        if self.trace is not None:
            self.trace.append(f"{self._now:.6f} {event}")

    def pending(self) -> int:
        return sum(1 for _, _, h in self._heap if not h.cancelled)

    def step(self) -> bool:
        """Run the next event; False when there is none."""
        while self._heap:
            when, _, handle = heapq.heappop(self._heap)
            if handle.cancelled:
                continue
            self._now = max(self._now, when)
            handle.callback(*handle.args)
            return True
        return False

    def run_until_idle(self, max_time: float | None = None, max_events: int = 10_000_000) -> int:
        """Run events until none is left (or the next is after virtual `max_time`).

        Returns the number of events run; `max_events` guards against a
        livelock (e.g. a periodic timer) turning a test into a hang.
        """
        count = 0
        while self._heap:
            when, _, handle = self._heap[0]
            if handle.cancelled:
                heapq.heappop(self._heap)
                continue
            if max_time is not None and when > max_time:
                self._now = max(self._now, max_time)
                break
            if count >= max_events:
                raise RuntimeError(f"SimScheduler: more than {max_events} events; livelock?")
            self.step()
            count += 1
        return count

    def run_for(self, seconds: float) -> int:
        """Advance the virtual clock by `seconds`, running every event due meanwhile."""
        end = self._now + seconds
        count = self.run_until_idle(max_time=end)
        self._now = end
        return count
