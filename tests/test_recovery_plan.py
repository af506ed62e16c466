"""tcp: what the leader's recovery does, worked out from its members' replies to
the freeze without a loop or a peer (`ctdb.engines.recovery_plan`)."""

from __future__ import annotations

from typing import Any

import pytest

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.recovery_plan import plan

MEMBERS = [0, 1, 2]
GENERATION = 77


def reply(
    *,
    epoch: int = 3,
    served: int = 3,
    thawed: int = 3,
    incarnation: int = 1,
    view: tuple[int, ...] = (0, 1, 2),
    leases: tuple[tuple[int, float], ...] = (),
    dbs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "incarnation": incarnation,
        "served": served,
        "thawed": thawed,
        "generation": 9,
        "view": list(view),
        "leases": [list(lease) for lease in leases],
        "dbs": dbs or {},
    }


def volatile(base: tuple[int, int] | None) -> dict[str, Any]:
    return {"kind": "volatile", "seqnum": 0, "history": b"", "base": base}


def persistent(seqnum: int, history: bytes) -> dict[str, Any]:
    return {"kind": "persistent", "seqnum": seqnum, "history": history, "base": None}


def test_a_member_that_does_not_see_every_other_yet_makes_the_recovery_retry() -> None:
    frozen = {0: reply(), 1: reply(view=(0, 1)), 2: reply()}
    with pytest.raises(CtdbError) as failed:
        plan(MEMBERS, GENERATION, 0, frozen)
    assert failed.value.code == ErrorCode.RETRY
    assert "node 1 does not see nodes [2]" in failed.value.message


def test_the_new_generation_is_stamped_above_every_members_epoch() -> None:
    frozen = {
        0: reply(epoch=4, served=4, thawed=4, incarnation=2),
        1: reply(epoch=6, served=5, thawed=6, incarnation=1),
        2: reply(epoch=2, served=2, thawed=1, incarnation=7),
    }
    todo = plan(MEMBERS, GENERATION, 1, frozen)
    assert todo.epoch == 7
    assert todo.thawed == {0: 4, 1: 6, 2: 1}
    assert todo.vnnmap == {
        "generation": GENERATION,
        "vnnmap": MEMBERS,
        "leader": 1,
        "epoch": 7,
        "served": 5,
        "incarnations": [[0, 2], [1, 1], [2, 7]],
    }


def test_every_member_attaches_every_database_and_counts_as_empty_there() -> None:
    frozen = {
        0: reply(dbs={"v": volatile((3, 9)), "p": persistent(5, b"h5")}),
        1: reply(dbs={"p": persistent(4, b"h4")}),
        2: reply(dbs={"v": volatile(None)}),
    }
    todo = plan(MEMBERS, GENERATION, 0, frozen)
    assert todo.attaches == [(1, "v", "volatile"), (2, "p", "persistent")]
    p, v = todo.databases  # by name
    assert (p.name, p.kind, v.name, v.kind) == ("p", "persistent", "v", "volatile")
    assert p.marks == {0: (5, b"h5"), 1: (4, b"h4"), 2: (0, b"")}
    assert v.bases == {0: (3, 9), 1: None, 2: None}  # None: all its keys count


def test_the_thaw_waits_only_for_leases_of_nodes_left_out() -> None:
    members = [0, 1]
    frozen = {
        0: reply(view=(0, 1, 2), leases=((1, 2.0), (2, 1.5))),
        1: reply(view=(0, 1, 2), leases=((0, 2.0), (2, 2.5))),
    }
    todo = plan(members, GENERATION, 0, frozen)
    assert todo.left_out == {2: 2.5}  # the longest any member confirmed
