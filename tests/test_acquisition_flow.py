"""tcp: a client's request for a record as a flow (`Acquisition.acquiring`),
resumed by hand: which `Call` it sends and when it sends another, how many
requests may wait for one record, and what it waits for between its steps
(one step at a time is `tests/test_acquisition_steps.py`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.acquisition import RETRY_INTERVAL
from ctdb.engines.effects import Chain, Serving
from ctdb.engines.migration import MigrationEngine
from ctdb.engines.waiting import Answer, Heard
from ctdb.protocol.messages import Call
from ctdb.storage.database import Database
from ctdb.storage.ltdb import Record
from ctdb.storage.placement import lmaster
from tests.chain_holder import Holder, holding, shared_volatile
from tests.clocks import ManualClock
from tests.flow_steps import Stepped
from tests.test_acquisition_steps import KEY, ME, PEER, Node, chain_free, engine_on

TIMEOUT, WAITERS = 30.0, 2


class Sending(Node):
    """The step's node, with the tunables a request reads and what it sends."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock)
        self.sent: list[tuple[int, Any]] = []

    def tunable(self, name: str) -> float:
        return {"CallTimeout": TIMEOUT, "MaxLockWaiters": WAITERS}[name]

    def send(self, pnn: int, msg: Any) -> None:
        self.sent.append((pnn, msg))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with shared_volatile(tmp_path) as volatile:
        yield volatile


@pytest.fixture
def holder(db: Database) -> Iterator[Holder]:
    with holding(db) as client:
        yield client


def setup() -> tuple[MigrationEngine, Sending, ManualClock]:
    clock = ManualClock()
    node = Sending(clock)
    return engine_on(node), node, clock


def request(e: MigrationEngine, db: Database, *, lock: bool = False) -> Stepped[Any]:
    return Stepped(e.acquiring(db, KEY, object(), lock=lock))


def test_a_record_elsewhere_is_asked_for_once_for_all_its_requests(
    db: Database, holder: Holder
) -> None:
    db.local.put(KEY, Record(3, PEER, b"v"))
    e, node, _ = setup()
    first, second = request(e, db), request(e, db)
    assert isinstance(first.effect, Heard) and first.effect.seconds == RETRY_INTERVAL
    assert isinstance(second.effect, Heard)
    call = Call(db.id, KEY, node.generation, ME, 0)
    assert node.sent == [(lmaster(KEY, node.vnnmap), call)]  # one call, both wait for it
    assert chain_free(holder)
    db.local.put(KEY, Record(4, ME, b"v"))  # it came; the hand-over answers the waiters
    e._calls_out.pop((db.id, KEY)).end(e.waiting)
    assert first.effect.wait.done and second.effect.wait.done
    assert first.answer(True) is None and first.result == Record(4, ME, b"v")
    assert second.answer(True) is None and second.result == Record(4, ME, b"v")
    assert len(node.sent) == 1 and chain_free(holder)


def test_a_call_unanswered_for_a_while_is_given_up_and_sent_again(db: Database) -> None:
    """Messages of an aborted generation are dropped: a call can vanish."""
    db.local.put(KEY, Record(3, PEER, b"v"))
    e, node, clock = setup()
    run = request(e, db)
    assert len(node.sent) == 1
    clock.advance(RETRY_INTERVAL)
    given_up = run.effect
    again = run.answer(False)  # nothing came within RETRY_INTERVAL
    assert isinstance(again, Heard) and len(node.sent) == 2
    assert isinstance(given_up, Heard) and again.wait is not given_up.wait
    clock.advance(TIMEOUT)
    with pytest.raises(CtdbError) as err:
        run.answer(False)
    assert err.value.code == ErrorCode.TIMEOUT and len(node.sent) == 3


def test_at_most_max_lock_waiters_requests_wait_for_one_record(db: Database) -> None:
    db.local.put(KEY, Record(3, PEER, b"v"))
    e, _, _ = setup()
    waiting = [request(e, db) for _ in range(WAITERS)]
    with pytest.raises(CtdbError) as err:
        request(e, db)
    assert err.value.code == ErrorCode.BUSY
    waiting[0].flow.close()  # one gave up (its client went away)
    assert isinstance(request(e, db).effect, Heard)


def test_a_request_waits_for_its_node_to_serve_and_for_a_samba_clients_chain(
    db: Database, holder: Holder
) -> None:
    db.local.put(KEY, Record(3, ME, b"v"))
    e, node, _ = setup()
    node.serving = False
    run = request(e, db, lock=True)
    assert run.effect == Serving(TIMEOUT)
    node.serving = True
    assert holder.ask("lock", KEY) == "locked"
    assert run.answer() == Chain(db, KEY, TIMEOUT)
    assert holder.ask("unlock", KEY) == "unlocked"
    assert db.local.try_lock_chain(KEY)  # as the driver's poll leaves it
    assert run.answer(True) is None and run.result == Record(3, ME, b"v")
    assert e.locked(db, KEY)
    assert not chain_free(holder)  # the lock keeps the chain: no client writes in place


def test_a_chain_a_client_keeps_times_the_request_out(db: Database, holder: Holder) -> None:
    db.local.put(KEY, Record(3, ME, b"v"))
    e, _, _ = setup()
    assert holder.ask("lock", KEY) == "locked"
    run = request(e, db)
    assert isinstance(run.effect, Chain)
    # The driver gave up at the deadline; the client lets go only later.
    # (Let go first here: a read under its lock would block the test.)
    assert holder.ask("unlock", KEY) == "unlocked"
    with pytest.raises(CtdbError) as err:
        run.answer(False)
    assert err.value.code == ErrorCode.TIMEOUT


def test_a_request_behind_another_clients_lock_waits_for_its_release(
    db: Database, holder: Holder
) -> None:
    db.local.put(KEY, Record(3, ME, b"v"))
    e, _, _ = setup()
    first = object()
    owner = Stepped(e.acquiring(db, KEY, first, lock=True))
    assert owner.ended
    behind = request(e, db, lock=True)
    assert isinstance(behind.effect, Answer) and not behind.effect.wait.done
    e.release(db, KEY, first)
    assert behind.effect.wait.done
    assert behind.answer(behind.effect.wait.outcome()) is None
    assert behind.result == Record(3, ME, b"v") and e.locked(db, KEY)
