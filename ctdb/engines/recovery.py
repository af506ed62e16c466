"""The leader's recovery: a flow of controls (`recovery_flow`), carried out here.

After any membership change the leader rebuilds a consistent cluster, as
CTDB's recovery master does: freeze every active node, make every node
attach every database, merge and push each database, install the new
vnnmap and generation, and thaw (the whole course, and why, is in
`recovery_flow`). `recover` runs that flow on the event loop: it sends the
controls, merges off the loop and waits for the leases of nodes left out.
Any failure aborts the attempt; the caller retries with a fresh generation,
so a half-done recovery never serves requests.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from ctdb.common.errors import CtdbError
from ctdb.engines import flows
from ctdb.engines.controls import Control, Controls
from ctdb.engines.merge import from_wire, merge_volatile, to_wire
from ctdb.engines.recovery_flow import (
    NOW,
    Drain,
    Effect,
    LeasesRunOut,
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
    if isinstance(effect, Control):
        return await _control(node, effect.pnn, effect.op, effect.args)
    if isinstance(effect, Controls):
        return list(
            await asyncio.gather(*(_control(node, c.pnn, c.op, c.args) for c in effect.calls))
        )
    if isinstance(effect, Merge):
        # Off the event loop: a large merge must not stop the keepalives.
        copies = effect.copies
        return await node.offload(lambda: _merged(copies))
    if isinstance(effect, Drain):
        return await node.transport.drain()
    if isinstance(effect, LeasesRunOut):
        return await _leases_run_out(node, effect.left, effect.generation, effect.known_at)
    assert effect is NOW
    return node.now()


async def _control(node: Host, pnn: int, op: str, args: dict[str, Any]) -> Any:
    timeout = node.tunable("RecoverTimeout") * (BULK_STEPS if op in ("pull", "push") else 1)
    try:
        return await node.control(pnn, op, args, timeout=timeout)
    except CtdbError as exc:
        raise NodeFailed(pnn, op, exc) from exc


def _merged(pulled: dict[int, list[Any]]) -> list[Any]:
    """The merge of pulled copies, wire in and wire out (run off the event loop)."""
    return to_wire(merge_volatile({p: from_wire(r) for p, r in pulled.items()}).items())


async def _leases_run_out(
    node: Host, left: dict[int, float], generation: int, known_at: float
) -> None:
    """Wait until no node we leave out may still serve on a member's confirmation.

    A node left out of this recovery may not know it yet: a member that
    still heard from it (a partition that is not transitive) confirmed its
    lease of the old generation moments ago (`ctdb.server.lease`). Thawing
    the new generation before that lease runs out would let both serve the
    same records. `left`: those nodes and how long their leases may last,
    counted from when the members reported (`known_at`), which is after
    they computed it, so it errs long.

    A node we can still reach (stopped, banned) need not be waited for: once
    it has frozen for our generation it serves nothing until a recovery
    thaws it, so we freeze it and stop waiting as soon as it says so.
    """
    loop = asyncio.get_running_loop()

    async def fence(pnn: int, until: float) -> None:
        try:
            await node.control(
                pnn, "freeze", {"generation": generation}, timeout=max(until - loop.time(), 0.0)
            )
            return
        except (CtdbError, TimeoutError):
            pass
        await asyncio.sleep(until - loop.time())

    log.info(
        "recovery: nodes %s left out may still serve for up to %.3fs: freezing them or waiting",
        sorted(left),
        max(left.values()),
    )
    await asyncio.gather(*(fence(pnn, known_at + seconds) for pnn, seconds in left.items()))
