"""tcp: a commit one node has made is not read there until every node has made it.

The leader's two-phase commit finishes node by node. A node that committed
while another had not yet (it hung) holds a commit the next recovery may
take back, if that recovery takes the hung node's copy; a read of it would
be a dirty read. `TransactionEngine` keeps such keys unsettled until the
leader says every node committed (`tx_settled`) or a recovery gave every
node one copy. The engine is driven here directly, without a cluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines import transactions
from ctdb.engines.controls import Control
from ctdb.engines.effects import Pause
from ctdb.engines.merge import to_wire
from ctdb.engines.transactions import TransactionEngine, next_version
from ctdb.storage.database import Database, DbKind
from tests.flow_steps import Stepped
from tests.recording import Recorded


class Node:
    """What the transaction engine reads of its node when it is not the leader."""

    pnn = 1
    generation = 7
    serving = True


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database.open(tmp_path, "p", DbKind.PERSISTENT, 1)
    yield database
    database.local.close()


def prepared(engine: TransactionEngine, db: Database, commit_id: int, value: bytes) -> None:
    _, records = next_version(db, [], [[b"k", value]], 0)
    engine.prepare(db, to_wire(records.items()), commit_id, Node.generation)


def test_a_key_is_unsettled_from_its_local_commit_until_every_node_made_it(db: Database) -> None:
    engine = TransactionEngine(Node())  # type: ignore[arg-type]
    assert engine.settled(db, b"k")
    prepared(engine, db, 1, b"v1")
    assert engine.settled(db, b"k")  # prepared only: reads see the committed value
    engine.finish(db, 1, commit=True)
    assert not engine.settled(db, b"k")
    engine.on_settled(db, 2)  # another commit's word changes nothing
    assert not engine.settled(db, b"k")
    engine.on_settled(db, 1)
    assert engine.settled(db, b"k")


def test_a_recovery_settles_everything_and_a_cancelled_commit_is_never_unsettled(
    db: Database,
) -> None:
    engine = TransactionEngine(Node())  # type: ignore[arg-type]
    prepared(engine, db, 1, b"v1")
    engine.finish(db, 1, commit=True)
    engine.settle_all()
    assert engine.settled(db, b"k")
    prepared(engine, db, 2, b"v2")
    engine.finish(db, 2, commit=False)
    assert engine.settled(db, b"k")


def test_a_waiting_reader_is_answered_when_the_key_settles_or_a_freeze_comes(
    db: Database,
) -> None:
    told = Recorded()
    engine = TransactionEngine(Node())  # type: ignore[arg-type]
    # A reader that saw the key unsettled and registers after it settled is
    # answered at once, not left waiting (seen as TIMEOUT in trans_fetch when
    # the wait ran in a task, a loop turn after the check).
    engine.wait_settled("settled already", db, b"k", told)
    prepared(engine, db, 1, b"v1")
    engine.finish(db, 1, commit=True)
    engine.wait_settled("first", db, b"k", told)
    engine.wait_settled("gave up", db, b"k", told)
    engine.unwait("gave up")
    assert told.told == [("settled already", None)]
    engine.on_settled(db, 1)
    assert told.told[1:] == [("first", None)]
    prepared(engine, db, 2, b"v2")
    engine.finish(db, 2, commit=True)
    engine.wait_settled("second", db, b"k", told)
    engine.cancel_all()  # a freeze: the reader looks again (and waits to serve)
    assert told.told[2:] == [("second", None)]


class Leader(Node):
    """What telling a node that a commit settled reads of the leader."""

    pnn = 0

    def __init__(self) -> None:
        self.transport = type("T", (), {"view": {0, 1, 2}})()

    def in_generation(self, generation: int) -> bool:
        return generation == self.generation


NOT_HEARD = CtdbError(ErrorCode.TIMEOUT, "node 1 did not answer tx_settled")


def test_a_settled_announcement_is_repeated_until_the_node_hears_it() -> None:
    """Once told nothing, a node would keep the keys unsettled and its readers
    would wait until the next recovery (seen under load: TIMEOUT in trans_fetch)."""
    engine = TransactionEngine(Leader())  # type: ignore[arg-type]
    args = {"db_id": 1, "commit_id": 9, "generation": Node.generation}
    run = Stepped(engine.telling_settled(1, args))
    for _ in range(3):
        assert run.effect == Control(1, "tx_settled", args)
        assert run.fail(NOT_HEARD) == Pause(transactions.SETTLED_RETRY)
        run.answer()
    assert run.effect == Control(1, "tx_settled", args)
    assert run.answer() is None and run.ended  # heard


def test_a_settled_announcement_stops_when_the_generation_ends_or_the_node_leaves() -> None:
    leader = Leader()
    engine = TransactionEngine(leader)  # type: ignore[arg-type]
    args = {"db_id": 1, "commit_id": 9, "generation": Node.generation}
    leader.generation = Node.generation + 1  # a recovery since: it settled everything
    run = Stepped(engine.telling_settled(1, args))
    assert run.fail(NOT_HEARD) is None and run.ended
    leader.generation = Node.generation
    leader.transport.view = {0, 2}  # type: ignore[attr-defined]
    gone = Stepped(engine.telling_settled(1, args))
    assert gone.fail(NOT_HEARD) is None and gone.ended


class Coordinator(Node):
    """The leader of three members; node 2's commit fails after its prepare
    succeeded (an I/O error in tdb_transaction_commit, as a clustered smbd once
    provoked), every other control works on this node's own engine."""

    pnn = 0
    leader = 0
    vnnmap = [0, 1, 2]

    def __init__(self, engine_db: Database) -> None:
        self.db = engine_db
        self.engine: TransactionEngine | None = None
        self.forced = 0

    async def control(
        self, pnn: int, op: str, args: dict[str, Any], timeout: float | None = None
    ) -> None:
        assert self.engine is not None
        if op == "tx_prepare" and pnn == 0:
            self.engine.prepare(self.db, args["records"], args["commit_id"], args["generation"])
        elif op == "tx_finish" and pnn == 0:
            self.engine.finish(self.db, args["commit_id"], args["commit"])
        elif op == "tx_finish" and pnn == 2 and args["commit"]:
            raise CtdbError(ErrorCode.IO, "tdb_transaction_commit failed on node 2")

    def force_recovery(self) -> None:
        self.forced += 1


def test_a_commit_some_member_failed_to_make_is_not_acknowledged_and_recovers_now(
    db: Database,
) -> None:
    """The others made the commit and node 2 did not: nothing else would bring a
    recovery soon (the members look unchanged), so node 2 would serve its old
    copy while the others serve the new one. The leader recovers at once."""
    leader = Coordinator(db)
    engine = leader.engine = TransactionEngine(leader)  # type: ignore[arg-type]
    with pytest.raises(CtdbError) as failed:
        asyncio.run(engine.coordinate(db, [], [[b"k", b"v1"]]))
    assert failed.value.code == ErrorCode.RETRY and "outcome unknown" in failed.value.message
    assert leader.forced == 1
    assert db.local.get(b"k") is not None  # made here: the recovery decides
