"""An asyncio event loop with a virtual clock that can stop a single node.

Waiting costs nothing: when nothing is ready the selector jumps the clock to
the next timer. A simulated node's code runs in a `contextvars` context
whose `NODE` is its pnn (its tasks, its timers, and every delivery the
memory transport makes to it), so `stop(pnn)` can park that node's
callbacks exactly as SIGSTOP parks a process, and `cont(pnn)` runs them,
late, in their original order (or with the traffic queued for the node
spread among the rest: `VirtualTimeLoop.cont_node`). Everything else (other
nodes, the network,
the simulator itself) keeps running meanwhile. Given a seeded generator,
the loop also interleaves the ready callbacks of different nodes in an
order drawn from it (`_Interleaved`), as a scheduler interleaves processes.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import random
import selectors
from collections import deque
from collections.abc import Callable
from typing import Any

#: The pnn whose code is running (None: the simulator or the network).
NODE: contextvars.ContextVar[int | None] = contextvars.ContextVar("sim_node", default=None)

#: The virtual clock's step, as time.monotonic's on Linux.
CLOCK_RESOLUTION = 1e-9
#: A schedule lasts seconds of virtual time; far beyond that it is livelocked.
MAX_VIRTUAL_TIME = 900.0
MAX_LOOP_TURNS = 3_000_000
#: Loop turns in a row without the clock moving: callbacks that keep
#: scheduling each other at once, a busy loop a real daemon would spin in.
MAX_TURNS_AT_ONE_TIME = 100_000


class SimulationStuck(RuntimeError):
    """The simulated cluster stopped making progress (a livelock or deadlock)."""


class _VirtualSelector(selectors.BaseSelector):
    """A selector with no real file descriptors: waiting = advancing the clock."""

    def __init__(self, clock: list[float]) -> None:
        self._clock = clock
        self._turns = 0
        self._still = 0  # turns in a row at the same virtual time
        #: Off while a stuck simulation is being torn down.
        self.armed = True
        self._map: dict[Any, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._map[key.fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._map.pop(fileobj if isinstance(fileobj, int) else fileobj.fileno())

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise SimulationStuck("nothing scheduled and nothing ready")
        self._clock[0] += max(timeout, 0.0)
        self._turns += 1
        self._still = self._still + 1 if timeout <= 0 else 0
        if not self.armed:
            return []
        if self._still > MAX_TURNS_AT_ONE_TIME:
            raise SimulationStuck(
                f"livelock: {self._still} loop turns without virtual time passing "
                f"(at {self._clock[0]:.4f}s)"
            )
        if self._clock[0] > MAX_VIRTUAL_TIME or self._turns > MAX_LOOP_TURNS:
            raise SimulationStuck(
                f"no end after {self._clock[0]:.0f} virtual seconds and {self._turns} loop turns"
            )
        return []

    def get_map(self) -> Any:
        return self._map

    def close(self) -> None:
        self._map.clear()


class _Gated:
    """A handle that, when its node is stopped, parks itself instead of running.

    Its context tells whose code it is (`NODE`); checking that when the
    handle runs (not when it is made) also holds back timers and deliveries
    that were already due when the node stopped.
    """

    __slots__ = ()
    _context: contextvars.Context
    _loop: VirtualTimeLoop

    def _run(self) -> None:
        pnn = self._context.get(NODE)
        if pnn is not None:
            parked = self._loop._stopped.get(pnn)
            if parked is not None:
                parked.append(self)  # type: ignore[arg-type]
                return
        super()._run()  # type: ignore[misc]


class _Handle(_Gated, asyncio.Handle):
    __slots__ = ()


class _TimerHandle(_Gated, asyncio.TimerHandle):
    __slots__ = ()


class _Interleaved(deque[asyncio.Handle]):
    """The loop's ready queue, taken in a seeded order across nodes.

    Nodes are separate processes: which of two ready nodes runs first is
    the operating system's choice, and a bug that needs one order must not
    hide behind insertion order. So each `popleft` (the only way asyncio
    takes a callback to run) picks a node at random among those with a
    ready callback, and runs that node's oldest one. Within a node the
    order stays first-in first-out, which asyncio promises and the daemon's
    code relies on; the simulator and the network (no node) count as one
    more party.
    """

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.rng = rng

    def popleft(self) -> asyncio.Handle:
        first: dict[int | None, int] = {}  # party -> index of its oldest handle
        for i, handle in enumerate(self):
            party = handle._context.get(NODE)  # type: ignore[attr-defined]
            if party not in first:
                first[party] = i
        if len(first) < 2:
            return super().popleft()
        index = first[self.rng.choice(list(first))]
        handle = self[index]
        del self[index]
        return handle


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose `time()` is virtual and whose nodes can be stopped.

    With `interleave`, ready callbacks of different nodes run in an order
    drawn from it (`_Interleaved`) rather than in the order they were made.
    """

    def __init__(self, interleave: random.Random | None = None) -> None:
        self._vclock = [0.0]
        self.virtual_selector = _VirtualSelector(self._vclock)
        super().__init__(self.virtual_selector)
        self._stopped: dict[int, list[asyncio.Handle]] = {}
        if interleave is not None:
            self._ready = _Interleaved(interleave)

    def time(self) -> float:
        return self._vclock[0]

    # asyncio's own scheduling, minus debug checks, with gated handles.

    def _call_soon(  # type: ignore[override]
        self, callback: Callable[..., Any], args: tuple[Any, ...], context: Any
    ) -> asyncio.Handle:
        # Gated only while some node is stopped: the check costs a call.
        handle = (_Handle if self._stopped else asyncio.Handle)(callback, args, self, context)
        self._ready.append(handle)  # type: ignore[attr-defined]
        return handle

    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[..., Any],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        now = self._vclock[0]
        if now < when < now + CLOCK_RESOLUTION:
            # A real clock moves on between two turns; this one moves only to
            # timers, and one closer than a float step of the clock would fire
            # with no time passing: a wait for "the rest of a deadline" then
            # repeats for ever (simulator seed tcp 6177).
            when = now + CLOCK_RESOLUTION
        kind = _TimerHandle if self._stopped else asyncio.TimerHandle
        timer = kind(when, callback, args, self, context)
        heapq.heappush(self._scheduled, timer)  # type: ignore[attr-defined]
        timer._scheduled = True  # type: ignore[attr-defined]
        return timer

    def stop_node(self, pnn: int) -> None:
        """SIGSTOP: from now on nothing of node `pnn` runs."""
        if not self._stopped:
            # What is already pending must be checked as well when it runs.
            for handle in self._ready:  # type: ignore[attr-defined]
                if type(handle) is asyncio.Handle:
                    handle.__class__ = _Handle
            for timer in self._scheduled:  # type: ignore[attr-defined]
                if type(timer) is asyncio.TimerHandle:
                    timer.__class__ = _TimerHandle
        self._stopped.setdefault(pnn, [])

    def cont_node(self, pnn: int, backlog: Callable[[asyncio.Handle], bool] | None = None) -> None:
        """SIGCONT: what came due meanwhile runs now, in its original order;
        but when ready callbacks are interleaved, what `backlog` picks out
        (the traffic queued for the node while it was stopped) is spread at
        random among the rest, each part keeping its own order.

        A resumed process handles its sockets in the order the kernel reports
        them and takes a bounded batch of its corosync backlog per loop turn,
        so a request that arrived last can be answered before a view change
        queued first: `tools.chaos` found a resumed vs member answering a
        read from its copy before reaching its own expel (FOUND.md).
        """
        parked = self._stopped.pop(pnn, [])
        ready = self._ready  # type: ignore[attr-defined]
        if backlog is None or not isinstance(ready, _Interleaved):
            ready.extend(parked)
            return
        queued = deque(h for h in parked if backlog(h))
        rest = deque(h for h in parked if not backlog(h))
        while queued and rest:
            ready.append((queued if ready.rng.random() < 0.5 else rest).popleft())
        ready.extend(queued or rest)

    def is_stopped(self, pnn: int) -> bool:
        return pnn in self._stopped
