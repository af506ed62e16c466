"""What a recovery does, worked out from the members' answers to its freeze (tcp).

`recovery.recover` freezes every member, hands their replies to `plan`, and
carries out what comes back: the attaches, each database's pull, merge and
push (`recovery.Step`, by the rules of `merge`), the new vnnmap and
generation, the wait for leases of nodes left out, and the thaw. Nothing
here does I/O, so what a recovery decides is tested from made-up replies
(`tests/test_recovery_plan.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.merge import Mark

#: What a member that has just attached a database reports of it: empty.
EMPTY = {"seqnum": 0, "history": b"", "base": None}


@dataclass(frozen=True)
class DatabasePlan:
    name: str
    kind: str
    #: volatile: each member's base (the recovery its changes count from; None: all)
    bases: dict[int, tuple[int, int] | None]
    #: persistent: each member's (sequence number, history)
    marks: dict[int, Mark]


@dataclass(frozen=True)
class RecoveryPlan:
    #: the epoch the recovery stamps (above every member's)
    epoch: int
    #: each member's count of thaws it took part in (merge.persistent_source)
    thawed: dict[int, int]
    #: (member, database name, kind): databases a member lacks, to attach first
    attaches: list[tuple[int, str, str]]
    #: every database any member has, by name
    databases: list[DatabasePlan]
    #: what every member installs before it thaws (`set_vnnmap`)
    vnnmap: dict[str, Any]
    #: nodes left out that a member confirmed a lease to, and for how long it may
    #: still run: the thaw waits for them (`recovery_flow.leases_run_out`)
    left_out: dict[int, float]


def plan(
    members: list[int], generation: int, leader: int, frozen: dict[int, dict[str, Any]]
) -> RecoveryPlan:
    """The recovery of `members` (`frozen`: each one's reply to the freeze).

    RETRY if a member does not see every other yet: migration assumes every
    member can reach every other, and views are each node's own opinion,
    which differ while connections come up.
    """
    for p, reply in frozen.items():
        unseen = set(members) - set(reply["view"])
        if unseen:
            raise CtdbError(ErrorCode.RETRY, f"node {p} does not see nodes {sorted(unseen)} yet")
    epoch = max(int(r["epoch"]) for r in frozen.values()) + 1
    wanted: dict[str, str] = {}
    for reply in frozen.values():
        for name, info in reply["dbs"].items():
            wanted.setdefault(name, info["kind"])
    attaches = [
        (p, name, kind)
        for p, reply in frozen.items()
        for name, kind in wanted.items()
        if name not in reply["dbs"]
    ]
    databases = []
    for name, kind in sorted(wanted.items()):
        infos = {p: r["dbs"].get(name, EMPTY) for p, r in frozen.items()}
        if kind == "volatile":
            bases = {p: _base(i["base"]) for p, i in infos.items()}
            databases.append(DatabasePlan(name, kind, bases, {}))
        else:
            marks = {p: (int(i["seqnum"]), bytes(i["history"])) for p, i in infos.items()}
            databases.append(DatabasePlan(name, kind, {}, marks))
    vnnmap = {
        "generation": generation,
        "vnnmap": members,
        "leader": leader,
        "epoch": epoch,
        "served": max(int(r["served"]) for r in frozen.values()),
        "incarnations": [[p, int(r["incarnation"])] for p, r in frozen.items()],
    }
    left_out: dict[int, float] = {}
    for reply in frozen.values():
        for pnn, seconds in reply["leases"]:
            if int(pnn) not in frozen:
                left_out[int(pnn)] = max(left_out.get(int(pnn), 0.0), float(seconds))
    thawed = {p: int(r["thawed"]) for p, r in frozen.items()}
    return RecoveryPlan(epoch, thawed, attaches, databases, vnnmap, left_out)


def _base(value: Any) -> tuple[int, int] | None:
    return None if value is None else (int(value[0]), int(value[1]))
