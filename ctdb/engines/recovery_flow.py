"""What the leader's recovery does, step by step, as a flow (tcp).

After any membership change the leader rebuilds a consistent cluster, as
CTDB's recovery master does: freeze every active node (recovery mode
RECOVERY, new generation pending), make every node attach every database,
merge each volatile database (newest RSN per key, from every member: RSNs
carry the epoch), take each persistent database from the node with the
highest sequence number among the nodes of the latest epoch (a rejoining
node's copy may be stale), push the result where it is missing, install
the new vnnmap and generation (the epoch stored durably; every member then
removes the entry-list entries of nodes that left or restarted, see
`ctdb.engines.dmaster_calls`), wait for the leases of nodes left out, and
thaw. What to do is worked out from the members' replies to the freeze
(`recovery_plan`).

A recovery moves only what differs (the plans are in `ctdb.engines.merge`): a
persistent database goes only to members whose copy may differ from the
source's, and a volatile one is merged from the keys changed since the
previous recovery plus the full copies of members that missed it. A
forced recover, or the loss of a node, therefore costs time in proportion
to what changed, not to what exists.

The flow decides and yields what it waits for (`ctdb.engines.flows`):
a control, controls sent at once to several members, a merge, a drain of
the links, the time, a pause (until the leases of nodes left out end).
`ctdb.engines.recovery` carries them out; the tests answer them by hand
(`tests/test_recovery_flow.py`). A control that fails raises `NodeFailed`
at the flow's `yield` and ends it: nothing after it is sent, and no member
thaws.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ctdb.common.errors import CtdbError
from ctdb.engines import recovery_plan
from ctdb.engines.controls import Control, Controls
from ctdb.engines.effects import Pause
from ctdb.engines.flows import Flow
from ctdb.engines.merge import (
    Mark,
    newest_epoch_members,
    persistent_source,
    persistent_targets,
    volatile_plan,
)
from ctdb.storage.placement import db_id

log = logging.getLogger("ctdb.engines.recovery")


class NodeFailed(CtdbError):
    """A recovery step failed on node `pnn` (the leader bans a node that keeps failing)."""

    def __init__(self, pnn: int, op: str, error: CtdbError) -> None:
        super().__init__(error.code, f"{op} on node {pnn}: {error.message}")
        self.pnn = pnn


@dataclass(slots=True)
class Merge:
    """Merge pulled copies of a volatile database (member -> wire records):
    the merged wire records."""

    copies: dict[int, list[Any]]


@dataclass(slots=True)
class Drain:
    """Return once the links have sent what is queued: a whole database goes
    to each target of a push, queued only then (a stuck peer is dropped, not
    waited for)."""


@dataclass(slots=True)
class Now:
    """The current time."""


NOW = Now()


Effect = Control | Controls | Merge | Drain | Now | Pause


def recovery(members: list[int], generation: int, leader: int) -> Flow[Effect, int]:
    """One recovery of `members` under `generation`: the records it moved."""
    replies = yield Controls.on_all(members, "freeze", {"generation": generation})
    known_at = yield NOW
    todo = recovery_plan.plan(members, generation, leader, dict(zip(members, replies, strict=True)))
    # Every node attaches every database any node has.
    for p, name, kind in todo.attaches:
        yield Control(p, "attach", {"name": name, "kind": kind})
    moves = Moves(members, generation, leader, (todo.epoch, generation))
    moved = 0
    for db in todo.databases:
        if db.kind == "volatile":
            moved += yield from moves.volatile(db_id(db.name), db.bases)
        else:
            moved += yield from moves.persistent(db_id(db.name), todo.thawed, db.marks)
    yield Controls.on_all(members, "set_vnnmap", todo.vnnmap)
    if todo.left_out:
        yield from leases_run_out(todo.left_out, generation, known_at)
    yield Controls.on_all(members, "thaw", {"generation": generation})
    return moved


def leases_run_out(left: dict[int, float], generation: int, known_at: float) -> Flow[Effect, None]:
    """Return once no node in `left` may still serve on a member's confirmation.

    A node left out of this recovery may not know it yet: a member that
    still heard from it (a partition that is not transitive) confirmed its
    lease of the old generation moments ago (`ctdb.server.lease`). Thawing
    the new generation before that lease runs out would let both serve the
    same records. `left`: those nodes and how long their leases may last,
    counted from when the members reported (`known_at`), which is after
    they computed it, so it errs long.

    A node we can still reach (stopped, banned) need not be waited for: once
    it has frozen for our generation it serves nothing until a recovery
    thaws it, so we freeze it, and wait only for the leases of the nodes
    that did not say so before theirs ran out.
    """
    log.info(
        "recovery: nodes %s left out may still serve for up to %.3fs: freezing them or waiting",
        sorted(left),
        max(left.values()),
    )
    now = yield NOW
    fences = [
        Control(p, "freeze", {"generation": generation}, timeout=max(known_at + s - now, 0.0))
        for p, s in left.items()
    ]
    replies = yield Controls(fences, failures=True)
    unfenced = [
        known_at + left[c.pnn]
        for c, reply in zip(fences, replies, strict=True)
        if isinstance(reply, BaseException)
    ]
    if unfenced:
        now = yield NOW
        if max(unfenced) > now:
            yield Pause(max(unfenced) - now)


class Moves:
    """Pulls, merges and pushes of one recovery; each flow returns the records moved."""

    def __init__(
        self, members: list[int], generation: int, leader: int, base: tuple[int, int]
    ) -> None:
        self.members = members
        self.generation = generation
        self.leader = leader
        self.base = list(base)

    def _pull(self, pnn: int, dbid: int, **what: Any) -> Control:
        return Control(pnn, "pull", {"db_id": dbid, "generation": self.generation, **what})

    def _push(
        self, targets: list[int], dbid: int, records: list[Any], *, replace_all: bool
    ) -> Flow[Effect, None]:
        args = {
            "db_id": dbid,
            "generation": self.generation,
            "records": records,
            "replace_all": replace_all,
            "base": self.base,
        }
        yield Drain()
        yield Controls.on_all(targets, "push", args)

    def persistent(
        self, dbid: int, thawed: dict[int, int], marks: dict[int, Mark]
    ) -> Flow[Effect, int]:
        # Only the nodes that served the latest epoch count: a rejoining node
        # may hold a commit nobody acknowledged, with a sequence number as
        # high as the commits it missed (see merge.persistent_source).
        current = newest_epoch_members(thawed)
        source = persistent_source({p: marks[p][0] for p in current})
        targets = persistent_targets(marks, source)
        if not targets:
            return 0
        records = yield self._pull(source, dbid)
        yield from self._push(targets, dbid, records, replace_all=True)
        return len(records) * len(targets)

    def volatile(self, dbid: int, bases: dict[int, tuple[int, int] | None]) -> Flow[Effect, int]:
        plan = volatile_plan(bases, self.leader)
        if plan.provider is None:
            pulled = yield Controls([self._pull(p, dbid) for p in plan.others])
            records = yield Merge(dict(zip(plan.others, pulled, strict=True)))
            yield from self._push(self.members, dbid, records, replace_all=True)
            return sum(len(r) for r in pulled) + len(records) * len(self.members)
        args = {"db_id": dbid, "generation": self.generation}
        replies = yield Controls(
            [Control(p, "changed", args) for p in plan.holders]
            + [self._pull(p, dbid) for p in plan.others]
        )
        reported, full = replies[: len(plan.holders)], replies[len(plan.holders) :]
        # A key some holder changed (wrote, or removed: a vacuum may have
        # reached only some nodes) may differ between holders: every holder
        # sends its copy. A key only the others have is unchanged on every
        # holder, and the provider's copy stands for all of theirs.
        changed = sorted({bytes(k) for keys in reported for k in keys})
        extra = sorted({rec[0] for copy in full for rec in copy} - set(changed))
        wanted = {p: changed + extra if p == plan.provider else changed for p in plan.holders}
        wanted = {p: keys for p, keys in wanted.items() if keys}
        pulled = yield Controls([self._pull(p, dbid, keys=k) for p, k in wanted.items()])
        copies = dict(zip(plan.others, full, strict=True))
        copies.update(zip(wanted, pulled, strict=True))
        diff = yield Merge(copies)
        moved = sum(len(copy) for copy in copies.values())
        yield from self._push(plan.holders, dbid, diff, replace_all=False)
        moved += len(diff) * len(plan.holders)
        if plan.others:
            whole = yield self._pull(plan.provider, dbid)
            yield from self._push(plan.others, dbid, whole, replace_all=True)
            moved += len(whole) * (1 + len(plan.others))
        return moved
