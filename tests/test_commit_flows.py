"""tcp: a persistent commit as flows, resumed by hand (`ctdb.engines.transactions`).

A client's node sends its transaction to the leader (`committing`); the
leader prepares it on every member, then finishes it everywhere
(`coordinating`, whose decisions are `two_phase.TwoPhaseCommit`'s, tested
in `tests/test_two_phase_commit.py`). Here: what each asks of whom, in
which order, and what the client hears. (`tests/test_commit_settling.py`
runs the leader's driver against its own engine.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.controls import Control, Controls
from ctdb.engines.effects import Serving
from ctdb.engines.transactions import Announce, TransactionEngine
from ctdb.storage.database import Database, DbKind
from tests.flow_steps import Stepped

LEADER, MEMBERS, GENERATION = 0, [0, 1, 2], 4


class Node(SimpleNamespace):
    def __init__(self, pnn: int) -> None:
        super().__init__(
            pnn=pnn, leader=LEADER, vnnmap=list(MEMBERS), generation=GENERATION, serving=True
        )
        self.recoveries = 0

    def now(self) -> float:
        return 100.0

    def tunable(self, name: str) -> float:
        assert name == "CallTimeout"
        return 30.0

    def force_recovery(self) -> None:
        self.recoveries += 1


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database.open(tmp_path, "p", DbKind.PERSISTENT, LEADER)
    yield database
    database.local.close()


def engine_of(node: Node) -> TransactionEngine:
    return TransactionEngine(cast(Any, node))


def test_a_commit_goes_to_the_leader_once_this_node_serves(db: Database) -> None:
    node = Node(1)
    engine = engine_of(node)
    tx = engine.begin(db)
    assert tx.fetch(b"k") is None
    tx.writes[b"k"] = b"v"
    node.serving = False
    run = Stepped(engine.committing(tx))
    assert run.effect == Serving(130.0)
    node.serving = True
    asked = run.answer()
    assert asked == Control(
        LEADER, "tx_commit", {"db_id": db.id, "reads": [[b"k", 0]], "writes": [[b"k", b"v"]]}
    )
    assert run.answer(5) is None and run.ended and run.result == 5


def test_a_commit_with_nothing_to_write_asks_nobody(db: Database) -> None:
    engine = engine_of(Node(1))
    tx = engine.begin(db)
    tx.fetch(b"k")
    tx.writes[b"k"] = None  # deleting what is not there: nothing changes
    run = Stepped(engine.committing(tx))
    assert run.ended and run.result == db.seqnum()


def test_only_the_serving_leader_coordinates(db: Database) -> None:
    engine = engine_of(Node(1))
    with pytest.raises(CtdbError) as err:
        Stepped(engine.coordinating(db, [], [[b"k", b"v"]]))
    assert err.value.code == ErrorCode.RETRY


def test_the_leader_prepares_everywhere_then_commits_everywhere_then_announces(
    db: Database,
) -> None:
    node = Node(LEADER)
    engine = engine_of(node)
    run = Stepped(engine.coordinating(db, [], [[b"k", b"v"]]))
    prepare = run.effect
    assert isinstance(prepare, Controls) and prepare.failures
    assert [c.pnn for c in prepare.calls] == MEMBERS
    args = prepare.calls[0].args
    assert {c.op for c in prepare.calls} == {"tx_prepare"} and args["generation"] == GENERATION
    assert any(rec[0] == b"k" and rec[3] == b"v" for rec in args["records"])
    finish = {"db_id": db.id, "commit_id": args["commit_id"], "commit": True}
    assert run.answer([None, None, None]) == Controls.on_all(
        MEMBERS, "tx_finish", finish, failures=True
    )
    told = {"db_id": db.id, "commit_id": args["commit_id"], "generation": GENERATION}
    assert run.answer([None, None, None]) == Announce(MEMBERS, told)
    assert run.answer() is None and run.ended and run.result == db.seqnum() + 1
    assert node.recoveries == 0


def test_a_refused_prepare_cancels_everywhere_and_the_client_retries(db: Database) -> None:
    node = Node(LEADER)
    engine = engine_of(node)
    run = Stepped(engine.coordinating(db, [], [[b"k", b"v"]]))
    assert isinstance(run.effect, Controls)
    busy = CtdbError(ErrorCode.BUSY, "a commit in progress")
    finish = run.answer([None, busy, None])
    assert isinstance(finish, Controls)
    assert [c.args["commit"] for c in finish.calls] == [False, False, False]
    with pytest.raises(CtdbError) as err:
        run.answer([None, None, None])
    assert err.value.code == ErrorCode.RETRY and "node 1" in err.value.message
    assert node.recoveries == 0  # nobody committed: nothing to decide


def test_a_commit_a_member_did_not_confirm_is_not_acknowledged_and_recovers(
    db: Database,
) -> None:
    node = Node(LEADER)
    engine = engine_of(node)
    run = Stepped(engine.coordinating(db, [], [[b"k", b"v"]]))
    run.answer([None, None, None])
    lost = CtdbError(ErrorCode.TIMEOUT, "node 2 did not answer")
    with pytest.raises(CtdbError) as err:
        run.answer([None, None, lost])  # no Announce: not every node made it
    assert err.value.code == ErrorCode.RETRY and "outcome unknown" in err.value.message
    assert node.recoveries == 1
