"""tcp: a client's record operations as flows (`ctdb.engines.migration_flows`),
resumed by hand: what each waits for, what it writes once it has it, and
that the record's chain lock is released on every way out.

The file is shared with another process that holds chain locks as Samba's
clients do (`tests.chain_holder`). Where a flow waits for the record, the
test answers as the driver would, with one step of the real acquisition
(`Acquisition._step`). (`tests/test_cluster.py` and the recovery tests run
the same flows in real daemons.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines import flows
from ctdb.engines.acquisition import Got
from ctdb.engines.base import pending
from ctdb.engines.controls import Controls
from ctdb.engines.effects import Chain, Serving
from ctdb.engines.migration import MigrationEngine
from ctdb.engines.migration_flows import (
    Acquired,
    Effect,
    storing,
    traversing,
    unlocking,
    wiping,
)
from ctdb.engines.persistent_calls import Committed
from ctdb.engines.shared_calls import migrating_here
from ctdb.engines.transactions import TransactionEngine
from ctdb.storage.database import Database, DbKind
from ctdb.storage.ltdb import Record
from tests.chain_holder import Holder, holding, shared_volatile
from tests.clocks import ManualClock
from tests.flow_steps import Stepped
from tests.test_acquisition_steps import KEY, ME, PEER, Node, chain_free, engine_on

DEADLINE = 30.0  # CallTimeout from the manual clock's zero


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with shared_volatile(tmp_path) as volatile:
        yield volatile


@pytest.fixture
def holder(db: Database) -> Iterator[Holder]:
    with holding(db) as client:
        yield client


class Tunables(Node):
    """The step's node, with CallTimeout and a recovery epoch."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock)
        self.epochs = SimpleNamespace(epoch=2)

    def tunable(self, name: str) -> float:
        assert name == "CallTimeout"
        return DEADLINE


def engine() -> tuple[MigrationEngine, Tunables]:
    node = Tunables(ManualClock())
    return engine_on(node), node


def acquired(e: MigrationEngine, effect: Effect | None) -> Record | None:
    """Carry out `Acquired` as the driver's `acquire` ends: the record here, got."""
    assert isinstance(effect, Acquired)
    step = e._step(effect.db, effect.key, effect.session, effect.lock, chain_held=False)
    assert isinstance(step, Got)
    return step.record


async def never(effect: Effect) -> None:
    raise AssertionError(f"the fast path waited for {effect}")


def test_a_store_of_a_record_served_here_ends_at_once(db: Database, holder: Holder) -> None:
    db.local.put(KEY, Record(3, ME, b"old"))
    e, node = engine()
    result = e.store(db, KEY, b"new", object())
    assert result is None and not pending(result)
    rec = db.local.get(KEY)
    assert rec is not None and rec.value == b"new" and rec.rsn > 3 and rec.dmaster == ME
    assert chain_free(holder)


def test_a_store_brings_the_record_here_and_brings_it_again_if_it_moved_on(
    db: Database, holder: Holder
) -> None:
    db.local.put(KEY, Record(3, PEER, b"old"))
    (e, _), session = engine(), object()
    run = Stepped(storing(e, db, KEY, b"new", session))
    assert run.effect == Acquired(db, KEY, session, False)
    assert chain_free(holder)  # the look at the record let go of its chain
    db.local.put(KEY, Record(4, ME, b"old"))  # it came ...
    acquired(e, run.effect)
    db.local.put(KEY, Record(5, PEER, b"old"))  # ... and another node's call took it on
    assert run.answer() == Acquired(db, KEY, session, False)
    assert db.local.get(KEY) == Record(5, PEER, b"old")  # nothing written meanwhile
    db.local.put(KEY, Record(6, ME, b"old"))
    assert run.answer(acquired(e, run.effect)) is None and run.ended
    rec = db.local.get(KEY)
    assert rec is not None and (rec.value, rec.dmaster) == (b"new", ME) and rec.rsn > 6
    assert chain_free(holder)


def test_a_store_waits_for_a_chain_a_client_holds_and_times_out_if_it_keeps_it(
    db: Database, holder: Holder
) -> None:
    db.local.put(KEY, Record(3, ME, b"old"))
    e, node = engine()
    assert holder.ask("lock", KEY) == "locked"
    # The engine could not take the chain at once: the request goes the long way.
    later = e.store(db, KEY, b"new", object())
    assert pending(later)
    later.close()
    run = Stepped(storing(e, db, KEY, b"new", object()))
    assert isinstance(run.effect, Acquired)
    assert holder.ask("unlock", KEY) == "unlocked"
    got = acquired(e, run.effect)
    assert holder.ask("lock", KEY) == "locked"  # the client took it again in between
    assert run.answer(got) == Chain(db, KEY, DEADLINE)
    assert holder.ask("unlock", KEY) == "unlocked"
    assert db.local.try_lock_chain(KEY)  # as the driver's poll leaves it
    assert run.answer(True) is None and run.ended
    rec = db.local.get(KEY)
    assert rec is not None and rec.value == b"new"
    assert chain_free(holder)

    assert holder.ask("lock", KEY) == "locked"
    late = Stepped(storing(e, db, KEY, b"late", object()))
    late.answer(acquired_while_held(e, late.effect, holder))
    with pytest.raises(CtdbError) as err:
        late.answer(False)  # the driver gave up at the deadline
    assert err.value.code == ErrorCode.TIMEOUT
    assert holder.ask("unlock", KEY) == "unlocked"
    rec = db.local.get(KEY)
    assert rec is not None and rec.value == b"new"


def acquired_while_held(e: MigrationEngine, effect: Effect | None, holder: Holder) -> Record | None:
    """`acquired` while the holder keeps the chain: it lets go for the step only."""
    assert holder.ask("unlock", KEY) == "unlocked"
    try:
        return acquired(e, effect)
    finally:
        assert holder.ask("lock", KEY) == "locked"


def locked(e: MigrationEngine, db: Database, session: object) -> None:
    """`session` holds the record's lock, granted by a real step."""
    assert isinstance(e._step(db, KEY, session, lock=True, chain_held=False), Got)
    assert e.locked_by(db, KEY, session)


def test_an_unlock_writes_and_releases_at_once_and_fails_without_the_lock(
    db: Database, holder: Holder
) -> None:
    db.local.put(KEY, Record(3, ME, b"old"))
    (e, _), session = engine(), object()
    with pytest.raises(CtdbError) as err:
        flows.started(unlocking(e, db, KEY, session, b"x"), never)
    assert err.value.code == ErrorCode.NOT_LOCKED
    locked(e, db, session)
    assert flows.started(unlocking(e, db, KEY, session, b"new"), never) is None
    rec = db.local.get(KEY)
    assert rec is not None and rec.value == b"new" and not e.locked_by(db, KEY, session)
    assert chain_free(holder)


def test_an_unlock_while_not_serving_waits_then_writes(db: Database, holder: Holder) -> None:
    db.local.put(KEY, Record(3, ME, b"old"))
    (e, node), session = engine(), object()
    locked(e, db, session)
    node.serving = False  # a lease renewal, not a freeze: the lock stays
    run = Stepped(unlocking(e, db, KEY, session, b"new"))
    assert run.effect == Serving(DEADLINE)
    assert db.local.get(KEY) == Record(3, ME, b"old")
    node.serving = True
    assert run.answer() is None and run.ended
    rec = db.local.get(KEY)
    assert rec is not None and rec.value == b"new" and not e.locked_by(db, KEY, session)
    assert chain_free(holder)


def test_a_freeze_while_an_unlock_waits_voids_the_lock_and_writes_nothing(
    db: Database, holder: Holder
) -> None:
    """The freeze's pull may already hold the old value: a write now would
    be overwritten by the push after the client was told it succeeded."""
    db.local.put(KEY, Record(3, ME, b"old"))
    (e, node), session = engine(), object()
    locked(e, db, session)
    assert not chain_free(holder)  # the lock keeps the record's chain: no client writes in place
    node.serving = False
    run = Stepped(unlocking(e, db, KEY, session, b"new"))
    assert run.effect == Serving(DEADLINE)
    node.dbs = {db.id: db}
    e.freeze()
    node.serving = True
    with pytest.raises(CtdbError) as err:
        run.answer()
    assert err.value.code == ErrorCode.RETRY
    assert db.local.get(KEY) == Record(3, ME, b"old")
    assert chain_free(holder)
    with pytest.raises(CtdbError) as again:  # said once: then it is simply not locked
        flows.started(unlocking(e, db, KEY, session, b"new"), never)
    assert again.value.code == ErrorCode.NOT_LOCKED


def test_an_unlock_waits_for_a_chain_a_samba_client_took_after_the_lock_was_granted(
    db: Database, holder: Holder
) -> None:
    """A lock granted before a Samba client attached the file keeps no chain:
    the unlock's write waits for the client, never blocking the daemon, and
    writes nothing if a freeze voided the lock meanwhile."""
    db.local.put(KEY, Record(3, ME, b"old"))
    (e, node), session = engine(), object()
    db.shared = False  # nobody shares the file yet
    locked(e, db, session)
    db.shared = True  # a Samba client attaches it, and locks the record's chain
    assert holder.ask("lock", KEY) == "locked"
    run = Stepped(unlocking(e, db, KEY, session, b"new"))
    assert run.effect == Chain(db, KEY, DEADLINE)
    assert holder.ask("unlock", KEY) == "unlocked"
    assert db.local.try_lock_chain(KEY)  # as the driver's poll leaves it
    assert run.answer(True) is None and run.ended
    rec = db.local.get(KEY)
    assert rec is not None and rec.value == b"new" and not e.locked_by(db, KEY, session)
    assert chain_free(holder)

    db.shared = False
    locked(e, db, session)
    db.shared = True
    assert holder.ask("lock", KEY) == "locked"
    again = Stepped(unlocking(e, db, KEY, session, b"newer"))
    assert isinstance(again.effect, Chain)
    node.dbs = {db.id: db}
    e.freeze()
    assert holder.ask("unlock", KEY) == "unlocked"
    assert db.local.try_lock_chain(KEY)
    with pytest.raises(CtdbError) as err:
        again.answer(True)
    assert err.value.code == ErrorCode.RETRY
    rec = db.local.get(KEY)
    assert rec is not None and rec.value == b"new"
    assert chain_free(holder)


def test_a_traverse_waits_to_serve_and_gathers_every_members_records(db: Database) -> None:
    e, node = engine()
    node.serving = False
    run = Stepped(traversing(e, db))
    assert run.effect == Serving(DEADLINE)
    assert run.answer() == Controls.on_all([ME, PEER], "traverse", {"db_id": db.id})
    # Each member sends the records it is dmaster of; the answer is sorted by key.
    parts = [[[b"c", 4, ME, b"mine"], [b"a", 2, ME, b"x"]], [[b"b", 9, PEER, b"theirs"]]]
    assert run.answer(parts) is None and run.ended
    assert run.result == [
        (b"a", Record(2, ME, b"x")),
        (b"b", Record(9, PEER, b"theirs")),
        (b"c", Record(4, ME, b"mine")),
    ]


def test_a_wipe_of_a_volatile_database_asks_every_member(db: Database) -> None:
    e, node = engine()
    run = Stepped(wiping(e, db))
    assert run.effect == Controls.on_all(
        [ME, PEER], "wipe", {"db_id": db.id, "generation": node.generation}
    )
    assert run.answer([None, None]) is None and run.ended


def test_a_wipe_of_a_persistent_database_commits_a_delete_of_every_key(tmp_path: Path) -> None:
    node = Tunables(ManualClock())
    pdb = Database.open(tmp_path, "p.tdb", DbKind.PERSISTENT, ME)
    try:
        e = MigrationEngine(cast(Any, node), TransactionEngine(cast(Any, node)))
        run = Stepped(wiping(e, pdb))
        assert run.effect == Controls.on_all([ME], "traverse", {"db_id": pdb.id})
        committed = run.answer([[[b"a", 1, ME, b"1"], [b"b", 1, ME, b"2"]]])
        assert isinstance(committed, Committed)
        assert committed.tx.writes == {b"a": None, b"b": None}
        assert run.answer(2) is None and run.ended
    finally:
        pdb.local.close()


def test_migrating_here_installs_the_record_under_a_lock_it_then_drops(
    db: Database, holder: Holder
) -> None:
    e, node = engine()
    run = Stepped(migrating_here(e, db, KEY, DEADLINE))
    effect = run.effect
    assert isinstance(effect, Acquired) and effect.lock
    db.local.put(KEY, Record(4, ME, b"v"))  # it came
    acquired(e, effect)
    assert e.locked_by(db, KEY, effect.session)
    assert run.answer() is None and run.ended
    assert run.result == Record(4, ME, b"v")
    assert not e.locked(db, KEY) and chain_free(holder)

    # Nobody ever wrote it and we are its lmaster: a header-only record, ours.
    fresh = b"fresh"
    node.vnnmap = [ME]
    again = Stepped(migrating_here(e, db, fresh, DEADLINE))
    assert isinstance(again.effect, Acquired)
    step = e._step(db, fresh, again.effect.session, True, chain_held=False)
    assert isinstance(step, Got) and step.record is None
    again.answer()
    assert again.ended and again.result == db.local.get(fresh)
    assert again.result is not None and again.result.value == b""
