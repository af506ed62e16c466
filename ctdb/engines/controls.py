"""The controls a tcp flow sends to other nodes and waits for (`ctdb.engines.flows`).

One control (`Control`: the outcome is its reply) or several at once
(`Controls`: their replies, in order). Each flow's driver sends them with
`Host.control`; what a failure means is the flow's to say (a recovery
fails with the node that failed, a vacuum round defers).
"""

from __future__ import annotations

import asyncio
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


async def send(node: Host, effect: Control | Controls) -> Any:
    """Carry out `effect` with the node's controls: the reply, or the replies in order."""
    if isinstance(effect, Control):
        return await node.control(effect.pnn, effect.op, effect.args, timeout=effect.timeout)
    replies = asyncio.gather(
        *(node.control(c.pnn, c.op, c.args, timeout=c.timeout) for c in effect.calls),
        return_exceptions=effect.failures,
    )
    return list(await replies)
