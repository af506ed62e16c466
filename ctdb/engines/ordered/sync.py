"""State transfer: the round a view change starts, and the plan every member
computes alike from the offers (a pure function, tested without a stream).

At a view change that adds members (or while a member is out of sync) every
member offers what it holds; once every offer is delivered, each member
computes the same plan: which member is the source of each database, which
epoch the round hands out, and which members need which snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ctdb.engines.merge import Mark, freshest_copy
from ctdb.storage.database import DbKind

#: What a member offers that holds no copy of a database.
NO_COPY: Mark = (0, b"")


@dataclass
class SyncRound:
    """The state-transfer round started by a view change that added members."""

    view_id: int
    members: tuple[int, ...]
    offers: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: db name -> source pnn, once every offer is in
    plan: dict[str, int] | None = None
    #: the epoch every member adopts when the round completes
    epoch: int = 0
    #: members whose `numbered` we delivered: once all of them, every member
    #: numbered the epoch, and the epoch begins (see `rounds.Rounds.on_numbered`)
    numbered: set[int] = field(default_factory=set)
    #: members the plan gives snapshots (`rounds.Rounds.catching_up` once it is agreed)
    behind: set[int] = field(default_factory=set)
    awaiting: set[str] = field(default_factory=set)
    #: operations queued before the epoch began, which we apply after our
    #: snapshots, but which do not count in the epoch's position
    carried: int = 0

    @property
    def agreed(self) -> bool:
        """Every member numbered the plan's epoch: it has begun."""
        return self.plan is not None and self.numbered == set(self.members)


@dataclass
class Bump:
    """Members in sync went through one more quorate view: its epoch, until
    every member numbered it (see `rounds.Rounds.on_numbered`)."""

    view_id: int
    epoch: int
    numbered: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class Plan:
    #: db name -> the member whose copy everyone takes (sorted by name)
    sources: dict[str, int]
    #: above every epoch number any member saw handed out
    epoch: int
    #: member -> the databases it needs a snapshot of
    needs: dict[int, set[str]]
    #: db name -> member -> the (sequence number, history) it offered
    marks: dict[str, dict[int, Mark]]

    def receivers(self, name: str, members: tuple[int, ...]) -> list[int]:
        """The members that need a snapshot of `name`, in member order."""
        return [p for p in members if name in self.needs[p]]

    def offered(self, name: str, receivers: list[int]) -> list[Mark]:
        """What those receivers hold of `name` (to skip sending what they have)."""
        return [self.marks[name].get(p, NO_COPY) for p in receivers]


def make_plan(offers: dict[int, dict[str, Any]]) -> Plan:
    """The plan of a round, from every member's offer.

    Each database comes from the lowest member in sync that holds it, or,
    when nobody in sync holds it (the whole cluster restarted, quorum was
    lost), from the freshest copy (`merge.freshest_copy`: the highest epoch,
    then a copy whose files saw no failed write, then the longest part of
    the epoch's stream applied, then the highest sequence number; in a
    persistent or replicated database the sequence number right after the
    epoch). A member
    out of sync needs every database; one in sync, those it lacks.
    """
    synced = sorted(p for p, o in offers.items() if o["synced"])
    marks: dict[str, dict[int, Mark]] = {}
    volatile: set[str] = set()
    for p, o in offers.items():
        for name, kind, seqnum, history in o["dbs"]:
            marks.setdefault(name, {})[p] = (int(seqnum), bytes(history))
            if DbKind.parse(str(kind)) is DbKind.VOLATILE:
                volatile.add(name)
    epochs = {p: int(o["epoch"]) for p, o in offers.items()}
    sources: dict[str, int] = {}
    for name, holders in sorted(marks.items()):
        in_sync = [p for p in synced if p in holders]
        if in_sync:
            sources[name] = in_sync[0]
        else:
            fresh = {
                p: (epochs[p], not offers[p]["damaged"], int(offers[p]["position"]), mark[0])
                for p, mark in holders.items()
            }
            sources[name] = freshest_copy(fresh, replicated=name not in volatile)
    needs = {
        p: {
            name
            for name, src in sources.items()
            if src != p and (not o["synced"] or p not in marks[name])
        }
        for p, o in offers.items()
    }
    # Numbered above every epoch any member saw handed out, and remembered
    # as handed out even by members that will not finish the round: a
    # later round elsewhere must number above it.
    epoch = max(max(int(o["numbered"]), epochs[p]) for p, o in offers.items()) + 1
    return Plan(sources, epoch, needs, marks)
