"""Flows: work of several waits, written as a generator that a driver runs.

A recovery freezes every member, pulls copies, merges them, pushes the
result and thaws; each step waits for replies. Written as a coroutine, its
decisions and its waits are one thing, and only a loop with live peers can
test it. Written as a generator, the flow only decides: it yields what it
needs next (an effect: a plain, comparable value), and is resumed with the
outcome, or has the effect's exception raised at its `yield`. `drive`
carries the effects out on the event loop; a test resumes the flow by hand
with made-up outcomes (`tests/test_recovery_flow.py`), so every decision is
checked without a loop, a socket or a peer, and a simulated cluster runs the
very same flow.

A request that repeats one look until it succeeds (the tcp engine's wait
for a record) is a flow of steps: a `_step` looks at the record once and
says what to wait for, and the flow yields that and looks again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

T = TypeVar("T")
E = TypeVar("E")

#: A flow that yields effects of type E and returns a T.
Flow = Generator[E, Any, T]


async def drive(flow: Flow[E, T], carry_out: Callable[[E], Awaitable[Any]]) -> T:
    """Run `flow` to its end, carrying out each effect it yields; its result.

    An effect that fails has its exception raised inside the flow, which may
    handle it. However the drive ends (cancelled too), the flow is closed,
    so its `finally` clauses run.
    """
    try:
        effect = next(flow)
    except StopIteration as done:
        result: T = done.value
        return result
    return await _rest(flow, effect, carry_out)


def started(flow: Flow[E, T], carry_out: Callable[[E], Awaitable[Any]]) -> T | Awaitable[T]:
    """Run `flow` until it first waits: its result if it never does, else a
    coroutine that drives the rest.

    A request's fast path (a record served here, no client in the way) so
    costs no coroutine and no task; callers tell the two apart with
    `ctdb.engines.base.pending`.
    """
    try:
        effect = next(flow)
    except StopIteration as done:
        result: T = done.value
        return result
    return _rest(flow, effect, carry_out)


async def _rest(flow: Flow[E, T], effect: E, carry_out: Callable[[E], Awaitable[Any]]) -> T:
    """`drive`, from the flow's first effect on."""
    try:
        while True:
            try:
                outcome = await carry_out(effect)
            except Exception as exc:
                effect = flow.throw(exc)
            else:
                effect = flow.send(outcome)
    except StopIteration as done:
        result: T = done.value
        return result
    finally:
        flow.close()
