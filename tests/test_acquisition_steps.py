"""tcp: one step of a client's request for a record (`Acquisition._step`),
without a loop: what the request waits for next, or the record it got, and
that the record's chain lock is released on every way out but a lock that
keeps it. Another process holds chain locks as Samba's clients do
(`tests.chain_holder`), which is also how the tests see whether the engine
still holds one (chain locks belong to a process)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from ctdb.engines.acquisition import Got, LockedBy, Need
from ctdb.engines.chains import try_hold
from ctdb.engines.migration import MigrationEngine
from ctdb.storage.database import Database
from ctdb.storage.ltdb import Record
from tests.chain_holder import Holder, holding, shared_volatile
from tests.clocks import ManualClock

KEY = b"record"
ME, PEER = 0, 1


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with shared_volatile(tmp_path) as volatile:
        yield volatile


@pytest.fixture
def holder(db: Database) -> Iterator[Holder]:
    with holding(db) as client:
        yield client


class Node(SimpleNamespace):
    """What a step reads of its node: whether it serves, who is who, a clock."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(
            pnn=ME,
            vnnmap=[ME, PEER],
            serving=True,
            generation=1,
            stats=Counter(),
            now=clock.now,
            call_later=clock.call_later,
            call_soon=clock.call_soon,
        )

    def in_generation(self, generation: int) -> bool:
        return generation == self.generation

    def local_failure(self) -> None:
        raise AssertionError("nothing here fails")


def engine_on(node: Node) -> MigrationEngine:
    return MigrationEngine(cast(Any, node), cast(Any, None))


def chain_free(holder: Holder) -> bool:
    """Whether nobody else (this process, the engine) holds the record's chain."""
    if holder.ask("lock", KEY) != "locked":
        return False
    assert holder.ask("unlock", KEY) == "unlocked"
    return True


def test_a_record_here_and_free_is_got_and_a_lock_keeps_its_chain(
    db: Database, holder: Holder
) -> None:
    rec = Record(3, ME, b"v")
    db.local.put(KEY, rec)
    e, session = engine_on(Node(ManualClock())), object()
    step = e._step(db, KEY, session, lock=False, chain_held=False)
    assert isinstance(step, Got) and step.record == rec
    assert chain_free(holder) and not e.locked_by(db, KEY, session)

    step = e._step(db, KEY, session, lock=True, chain_held=False)
    assert isinstance(step, Got) and e.locked_by(db, KEY, session)
    # Samba's clients must not write it in place while our client holds it.
    assert not chain_free(holder)
    e.release(db, KEY, session)
    assert chain_free(holder)


def test_a_node_that_does_not_serve_waits_and_gives_back_a_chain_the_gate_took(
    db: Database, holder: Holder
) -> None:
    db.local.put(KEY, Record(3, ME, b"v"))
    node = Node(ManualClock())
    node.serving = False
    e = engine_on(node)
    assert e._step(db, KEY, object(), lock=True, chain_held=False) is Need.SERVING
    assert try_hold(db, KEY)  # as the driver's wait for the chain leaves it for the next step
    assert not chain_free(holder)
    assert e._step(db, KEY, object(), lock=True, chain_held=True) is Need.SERVING
    assert chain_free(holder)


def test_a_chain_a_client_holds_is_waited_for_then_the_step_goes_on_under_it(
    db: Database, holder: Holder
) -> None:
    db.local.put(KEY, Record(3, ME, b"v"))
    e, session = engine_on(Node(ManualClock())), object()
    assert holder.ask("lock", KEY) == "locked"
    assert e._step(db, KEY, session, lock=False, chain_held=False) is Need.CHAIN
    assert holder.ask("unlock", KEY) == "unlocked"
    assert try_hold(db, KEY)
    step = e._step(db, KEY, session, lock=False, chain_held=True)
    assert isinstance(step, Got) and chain_free(holder)


def test_a_record_elsewhere_is_asked_for_and_one_locked_by_another_client_waited_for(
    db: Database, holder: Holder
) -> None:
    db.local.put(KEY, Record(3, PEER, b"v"))
    e = engine_on(Node(ManualClock()))
    assert e._step(db, KEY, object(), lock=True, chain_held=False) is Need.RECORD
    assert chain_free(holder)

    db.local.put(KEY, Record(4, ME, b"v"))
    first, second = object(), object()
    assert isinstance(e._step(db, KEY, first, lock=True, chain_held=False), Got)
    step = e._step(db, KEY, second, lock=True, chain_held=False)
    # It waits among the record's own waiters, whom the release answers.
    assert isinstance(step, LockedBy) and step.waiters is e._keys[(db.id, KEY)].waiters
    assert not chain_free(holder)  # still the first client's lock
    # The holder itself asks again (a fetch under its own lock): it has it.
    assert isinstance(e._step(db, KEY, first, lock=False, chain_held=False), Got)
    e.release(db, KEY, first)
    assert chain_free(holder)


def test_a_record_kept_for_our_clients_goes_back_to_the_queued_calls_after_the_step(
    db: Database, holder: Holder
) -> None:
    db.local.put(KEY, Record(3, ME, b"v"))
    clock = ManualClock()
    e = engine_on(Node(clock))

    def reserved() -> bool:
        ks = e._keys.get((db.id, KEY))
        return ks is not None and ks.reserved

    e._state(db, KEY).reserved = True
    assert isinstance(e._step(db, KEY, object(), lock=False, chain_held=False), Got)
    # A store still writes in this step: the queued calls go on only after it.
    assert reserved()
    clock.advance(0)
    assert not reserved() and chain_free(holder)

    e._state(db, KEY).reserved = True
    session = object()
    assert isinstance(e._step(db, KEY, session, lock=True, chain_held=False), Got)
    # A lock: they go on when it is released.
    assert not reserved() and e.locked_by(db, KEY, session)
    assert clock.pending() == 0
    e.release(db, KEY, session)
    assert chain_free(holder)
