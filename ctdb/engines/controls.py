"""The controls a tcp flow sends to other nodes and waits for (`ctdb.engines.flows`).

One control (`Control`: the outcome is its reply) or several at once
(`Controls`: their replies, in order). Each flow's driver sends them with
`Host.control`; what a failure means is the flow's to say (a recovery
fails with the node that failed, a vacuum round defers).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ctdb.engines.host import Host


@dataclass(slots=True)
class Control:
    """Send one control; the outcome is its reply (TIMEOUT after `timeout`
    seconds, None: the driver's bound for the op)."""

    pnn: int
    op: str
    args: dict[str, Any]
    timeout: float | None = None


@dataclass(slots=True)
class Controls:
    """Send these controls at once; the outcome is their replies, in order.

    With `failures`, a control that fails has its exception in its reply's
    place (a two-phase commit hears every member out); else the first
    failure fails the effect."""

    calls: list[Control]
    failures: bool = False

    @staticmethod
    def on_all(
        members: list[int], op: str, args: dict[str, Any], *, failures: bool = False
    ) -> Controls:
        return Controls([Control(p, op, args) for p in members], failures)


async def send(
    node: Host,
    effect: Control | Controls,
    one: Callable[[Control], Awaitable[Any]] | None = None,
) -> Any:
    """Carry out `effect`: the reply, or the replies in order. Each control
    goes through `one` (default: the node's `control`, with its timeout);
    the recovery's driver passes its own, which bounds and labels failures."""
    if one is None:
        one = functools.partial(_control, node)
    if isinstance(effect, Control):
        return await one(effect)
    replies = asyncio.gather(*(one(c) for c in effect.calls), return_exceptions=effect.failures)
    return list(await replies)


def _control(node: Host, control: Control) -> Awaitable[Any]:
    return node.control(control.pnn, control.op, control.args, timeout=control.timeout)
