"""tcp: a record call on a persistent database as a flow, answered by hand
(`ctdb.engines.persistent_calls.calling`): when it waits for the key to
settle, what it commits, and when it runs again. No loop, no peer."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.persistent_calls import Committed, Effect, Settled, calling
from ctdb.engines.record_calls import Append, RecordCall, Remove
from ctdb.engines.transactions import Transaction
from ctdb.storage.database import Database, DbKind
from ctdb.storage.entries import Entry, decode_entries
from ctdb.storage.ltdb import Record
from tests.flow_steps import Stepped

DEADLINE = 10.0


class Engine:
    """What the flow reads of the tcp engine: the clock, transactions, the head's owner."""

    def __init__(self) -> None:
        self.node = self
        self.transactions = self
        self.time = 0.0
        self.heads: list[tuple[tuple[int, int], int, bytes]] = []
        self._ids = itertools.count(1)

    def now(self) -> float:
        return self.time

    def begin(self, db: Database) -> Transaction:
        return Transaction(next(self._ids), db)

    def entry_head(self, owner: tuple[int, int], db_id: int, key: bytes) -> None:
        self.heads.append((owner, db_id, key))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    made = Database.open(tmp_path, "p.tdb", DbKind.PERSISTENT, 0)
    try:
        yield made
    finally:
        made.local.close()


class Run(Stepped[Effect]):
    def __init__(self, engine: Engine, db: Database, request: RecordCall) -> None:
        super().__init__(calling(cast(Any, engine), db, b"k", request, DEADLINE))


def entries(value: bytes) -> list[bytes]:
    return [e.payload for e in decode_entries(value)]


def test_a_call_that_changes_nothing_commits_nothing(db: Database) -> None:
    run = Run(Engine(), db, Remove((1, 1)))
    assert run.effect == Settled(db, b"k", DEADLINE)  # no dirty read first
    assert run.answer() is None  # ended: no Committed
    assert run.result == {"removed": 0, "rsn": 0}


def test_an_append_commits_the_new_list_with_the_rsn_it_read(db: Database) -> None:
    db.local.put(b"k", Record(4, 0, b""))
    run = Run(Engine(), db, Append("always", None, Entry(1, 1, b"a")))
    committed = run.answer()
    assert isinstance(committed, Committed)
    assert committed.tx.reads == {b"k": 4}
    assert entries(committed.tx.writes[b"k"] or b"") == [b"a"]
    assert run.answer(7) is None
    assert run.result is not None and run.result["rsn"] == 5


def test_a_commit_that_lost_a_race_runs_the_call_again_on_the_newer_record(
    db: Database,
) -> None:
    """BUSY: another commit changed the record after we read it, and ours
    ran nowhere. The call runs again, on what that commit wrote."""
    engine = Engine()
    run = Run(engine, db, Append("empty", None, Entry(1, 1, b"mine")))
    first = run.answer()
    assert isinstance(first, Committed) and first.tx.reads == {b"k": 0}
    # Another client's append won: the record holds its entry now.
    other = Run(Engine(), db, Append("empty", None, Entry(2, 1, b"theirs")))
    won = other.answer()
    assert isinstance(won, Committed)
    db.local.put(b"k", Record(1, 0, won.tx.writes[b"k"] or b""))

    assert run.fail(CtdbError(ErrorCode.BUSY, "changed")) == Settled(db, b"k", DEADLINE)
    assert run.answer() is None  # "empty" no longer holds: nothing to commit
    assert run.result is not None and not run.result["appended"]


def test_a_lost_race_after_the_deadline_or_another_failure_reaches_the_client(
    db: Database,
) -> None:
    engine = Engine()
    run = Run(engine, db, Append("always", None, Entry(1, 1, b"a")))
    run.answer()
    engine.time = DEADLINE
    with pytest.raises(CtdbError) as late:
        run.fail(CtdbError(ErrorCode.BUSY, "changed"))
    assert late.value.code == ErrorCode.BUSY

    run = Run(Engine(), db, Append("always", None, Entry(1, 1, b"a")))
    run.answer()
    with pytest.raises(CtdbError) as unknown:
        run.fail(CtdbError(ErrorCode.TIMEOUT, "outcome unknown"))
    assert unknown.value.code == ErrorCode.TIMEOUT  # not run again: it may have committed


def test_a_removal_that_makes_a_new_head_tells_its_owner(db: Database) -> None:
    engine = Engine()
    db.local.put(b"k", Record(1, 0, b""))
    for owner, payload in (((1, 1), b"first"), ((2, 1), b"second")):
        run = Run(engine, db, Append("always", None, Entry(*owner, payload)))
        committed = run.answer()
        assert isinstance(committed, Committed)
        rec = db.local.get(b"k")
        assert rec is not None
        db.local.put(b"k", Record(rec.rsn + 1, 0, committed.tx.writes[b"k"] or b""))
        run.answer(0)
    run = Run(engine, db, Remove((1, 1)))
    assert isinstance(run.answer(), Committed)
    run.answer(0)
    assert engine.heads == [((2, 1), db.id, b"k")]
