"""The leader's recovery driver.

After any membership change the leader rebuilds a consistent cluster, as
CTDB's recovery master does: freeze every active node (recovery mode
RECOVERY, new generation pending), make every node attach every database,
merge each volatile database (newest RSN per key, from every member: RSNs
carry the epoch), take each persistent database from the node with the
highest sequence number among the nodes of the latest epoch (a rejoining
node's copy may be stale), push the result where it is missing, install
the new vnnmap and generation (the epoch stored durably; every member then
removes the entry-list entries of nodes that left or restarted, see
`ctdb.engines.dmaster_calls`), and thaw. What to do is worked out from
the members' replies to the freeze, without I/O (`recovery_plan`). Any
failure aborts the attempt; the caller retries with a fresh generation, so
a half-done recovery never serves requests.

A recovery moves only what differs (the plans are in `ctdb.engines.merge`): a
persistent database goes only to members whose copy may differ from the
source's, and a volatile one is merged from the keys changed since the
previous recovery plus the full copies of members that missed it. A
forced recover, or the loss of a node, therefore costs time in proportion
to what changed, not to what exists.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from ctdb.common.errors import CtdbError
from ctdb.engines import recovery_plan
from ctdb.engines.merge import (
    Mark,
    from_wire,
    merge_volatile,
    newest_epoch_members,
    persistent_source,
    persistent_targets,
    to_wire,
    volatile_plan,
)

if TYPE_CHECKING:
    from ctdb.engines.host import Host

log = logging.getLogger("ctdb.engines.recovery")


class NodeFailed(CtdbError):
    """A recovery step failed on node `pnn` (the leader bans a node that keeps failing)."""

    def __init__(self, pnn: int, op: str, error: CtdbError) -> None:
        super().__init__(error.code, f"{op} on node {pnn}: {error.message}")
        self.pnn = pnn


#: Pulls and pushes move whole databases: they may take this many
#: RecoverTimeouts (a retry would only move everything again).
BULK_STEPS = 4


async def _control(node: Host, pnn: int, op: str, args: dict[str, Any]) -> Any:
    timeout = node.tunable("RecoverTimeout") * (BULK_STEPS if op in ("pull", "push") else 1)
    try:
        return await node.control(pnn, op, args, timeout=timeout)
    except CtdbError as exc:
        raise NodeFailed(pnn, op, exc) from exc


def _merged(pulled: dict[int, list[Any]]) -> list[Any]:
    """The merge of pulled copies, wire in and wire out (run off the event loop)."""
    return to_wire(merge_volatile({p: from_wire(r) for p, r in pulled.items()}).items())


async def _on_all(node: Host, members: list[int], op: str, args: dict[str, Any]) -> list[Any]:
    return list(await asyncio.gather(*(_control(node, p, op, args) for p in members)))


async def recover(node: Host, members: list[int], rng: random.Random) -> None:
    """Run one recovery over `members` (this node included)."""
    started = time.monotonic()
    generation = rng.randrange(2, 2**31)
    log.info("recovery: generation %d over nodes %s", generation, members)
    replies = await _on_all(node, members, "freeze", {"generation": generation})
    leases_known_at = node.now()
    todo = recovery_plan.plan(
        members, generation, node.pnn, dict(zip(members, replies, strict=True))
    )
    # Every node attaches every database any node has.
    for p, name, kind in todo.attaches:
        await _control(node, p, "attach", {"name": name, "kind": kind})
    step = Step(node, members, generation, (todo.epoch, generation))
    moved = 0
    for db in todo.databases:
        dbid = node.db_by_name(db.name).id
        if db.kind == "volatile":
            moved += await step.volatile(dbid, db.bases)
        else:
            moved += await step.persistent(dbid, todo.thawed, db.marks)
    await _on_all(node, members, "set_vnnmap", todo.vnnmap)
    await _leases_run_out(node, todo.left_out, generation, leases_known_at)
    await _on_all(node, members, "thaw", {"generation": generation})
    log.info(
        "recovery: generation %d done in %.3fs (%d records moved)",
        generation,
        time.monotonic() - started,
        moved,
    )


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
    if not left:
        return
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


class Step:
    """Pulls, merges and pushes of one recovery; each method returns the records moved."""

    def __init__(
        self, node: Host, members: list[int], generation: int, base: tuple[int, int]
    ) -> None:
        self.node = node
        self.members = members
        self.generation = generation
        self.base = list(base)

    async def _pull(self, pnn: int, dbid: int, **what: Any) -> list[Any]:
        args = {"db_id": dbid, "generation": self.generation, **what}
        result: list[Any] = await _control(self.node, pnn, "pull", args)
        return result

    async def _push(
        self, targets: list[int], dbid: int, records: list[Any], *, replace_all: bool
    ) -> None:
        args = {
            "db_id": dbid,
            "generation": self.generation,
            "records": records,
            "replace_all": replace_all,
            "base": self.base,
        }
        # A whole database goes to each target: queue it only once the links
        # have sent what is already queued (a stuck peer is dropped, not waited for).
        await self.node.transport.drain()
        await _on_all(self.node, targets, "push", args)

    async def persistent(self, dbid: int, thawed: dict[int, int], marks: dict[int, Mark]) -> int:
        # Only the nodes that served the latest epoch count: a rejoining node
        # may hold a commit nobody acknowledged, with a sequence number as
        # high as the commits it missed (see merge.persistent_source).
        current = newest_epoch_members(thawed)
        source = persistent_source({p: marks[p][0] for p in current})
        targets = persistent_targets(marks, source)
        if not targets:
            return 0
        records = await self._pull(source, dbid)
        await self._push(targets, dbid, records, replace_all=True)
        return len(records) * len(targets)

    async def volatile(self, dbid: int, bases: dict[int, tuple[int, int] | None]) -> int:
        plan = volatile_plan(bases, self.node.pnn)
        if plan.provider is None:
            pulled = await asyncio.gather(*(self._pull(p, dbid) for p in plan.others))
            copies = dict(zip(plan.others, pulled, strict=True))
            # Off the event loop: a large merge must not stop the keepalives.
            records = await self.node.offload(lambda: _merged(copies))
            await self._push(self.members, dbid, records, replace_all=True)
            return sum(len(r) for r in pulled) + len(records) * len(self.members)
        args = {"db_id": dbid, "generation": self.generation}
        reported, full = await asyncio.gather(
            asyncio.gather(*(_control(self.node, p, "changed", args) for p in plan.holders)),
            asyncio.gather(*(self._pull(p, dbid) for p in plan.others)),
        )
        # A key some holder changed (wrote, or removed: a vacuum may have
        # reached only some nodes) may differ between holders: every holder
        # sends its copy. A key only the others have is unchanged on every
        # holder, and the provider's copy stands for all of theirs.
        changed = sorted({bytes(k) for keys in reported for k in keys})
        extra = sorted({rec[0] for copy in full for rec in copy} - set(changed))
        wanted = {p: changed + extra if p == plan.provider else changed for p in plan.holders}
        wanted = {p: keys for p, keys in wanted.items() if keys}
        pulled = await asyncio.gather(*(self._pull(p, dbid, keys=k) for p, k in wanted.items()))
        copies = dict(zip(plan.others, full, strict=True))
        copies.update(zip(wanted, pulled, strict=True))
        diff = await self.node.offload(lambda: _merged(copies))
        moved = sum(len(copy) for copy in copies.values())
        await self._push(plan.holders, dbid, diff, replace_all=False)
        moved += len(diff) * len(plan.holders)
        if plan.others:
            whole = await self._pull(plan.provider, dbid)
            await self._push(plan.others, dbid, whole, replace_all=True)
            moved += len(whole) * (1 + len(plan.others))
        return moved
