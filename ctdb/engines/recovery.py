"""The leader's recovery: a flow of controls (`recovery_flow`), carried out here.

After any membership change the leader rebuilds a consistent cluster, as
CTDB's recovery master does: freeze every active node, make every node
attach every database, merge and push each database, install the new
vnnmap and generation, and thaw (the whole course, and why, is in
`recovery_flow`). `recover` runs that flow on the event loop: it sends the
controls, merges off the loop and pauses as the flow says.
Any failure aborts the attempt; the caller retries with a fresh generation,
so a half-done recovery never serves requests.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from ctdb.common.errors import CtdbError
from ctdb.engines import controls, flows
from ctdb.engines.controls import Control, Controls
from ctdb.engines.effects import Pause
from ctdb.engines.merge import from_wire, merge_volatile, to_wire
from ctdb.engines.recovery_flow import (
    NOW,
    Drain,
    Effect,
    Merge,
    NodeFailed,
    recovery,
)

if TYPE_CHECKING:
    from ctdb.engines.host import Host

log = logging.getLogger("ctdb.engines.recovery")

#: Pulls and pushes move whole databases: they may take this many
#: RecoverTimeouts (a retry would only move everything again).
BULK_STEPS = 4


async def recover(node: Host, members: list[int], rng: random.Random) -> None:
    """Run one recovery over `members` (this node included)."""
    started = time.monotonic()
    generation = rng.randrange(2, 2**31)
    log.info("recovery: generation %d over nodes %s", generation, members)
    moved = await flows.drive(
        recovery(members, generation, node.pnn), lambda effect: _carry_out(node, effect)
    )
    log.info(
        "recovery: generation %d done in %.3fs (%d records moved)",
        generation,
        time.monotonic() - started,
        moved,
    )


async def _carry_out(node: Host, effect: Effect) -> Any:
    if isinstance(effect, Control | Controls):
        return await controls.send(node, effect, functools.partial(_control, node))
    if isinstance(effect, Merge):
        # Off the event loop: a large merge must not stop the keepalives.
        copies = effect.copies
        return await node.offload(lambda: _merged(copies))
    if isinstance(effect, Drain):
        return await node.transport.drain()
    if isinstance(effect, Pause):
        return await asyncio.sleep(effect.seconds)
    assert effect is NOW
    return node.now()


async def _control(node: Host, control: Control) -> Any:
    """`control` with its timeout, else RecoverTimeout (several for bulk steps)."""
    pnn, op = control.pnn, control.op
    timeout = control.timeout
    if timeout is None:
        timeout = node.tunable("RecoverTimeout") * (BULK_STEPS if op in ("pull", "push") else 1)
    try:
        return await node.control(pnn, op, control.args, timeout=timeout)
    except CtdbError as exc:
        raise NodeFailed(pnn, op, exc) from exc


def _merged(pulled: dict[int, list[Any]]) -> list[Any]:
    """The merge of pulled copies, wire in and wire out (run off the event loop)."""
    return to_wire(merge_volatile({p: from_wire(r) for p, r in pulled.items()}).items())
