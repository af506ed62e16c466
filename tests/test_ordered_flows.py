"""vs: the client flows of real `OrderedEngine`s, resumed by hand (`engines/ordered/waits.py`).

A client's store, lock, unlock and read is a flow: it sends into the stream
and yields what it waits for. Here the group of `test_ordered_rounds`
delivers what the engines broadcast, and each flow is resumed with the
answer its wait holds by then, or with the TIMEOUT its deadline would
give: every way a request ends, checked without a loop, a socket or
corosync, on what every member ends up holding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.effects import Chain, Pause, Serving
from ctdb.engines.flows import Flow
from ctdb.engines.ordered.engine import OrderedEngine
from ctdb.engines.ordered.locks import QueueFull
from ctdb.engines.ordered.waits import Effect, Joined
from ctdb.engines.transactions import Transaction
from ctdb.engines.waiting import Answer
from ctdb.storage.database import Database, DbKind
from ctdb.storage.ltdb import live_value
from ctdb.storage.placement import db_id
from tests.clocks import ManualClock
from tests.flow_steps import Stepped
from tests.test_ordered_rounds import Group, Session


class Resumed(Stepped[Effect]):
    """A client's flow resumed as its driver would: once it ended, `result`
    or `error` says how. A pause moves `clock` on."""

    def __init__(self, flow: Flow[Effect, Any], clock: ManualClock | None = None) -> None:
        self.clock = clock
        self.error: CtdbError | None = None
        super().__init__(flow)

    def _go(self, step: Callable[[], Effect]) -> Effect | None:
        try:
            return super()._go(step)
        except CtdbError as exc:
            self.effect, self.ended, self.error = None, True, exc
            return None

    def resume(self) -> bool:
        """Give the flow what its driver would once the answer is there:
        whether it moved."""
        effect = self.effect
        if isinstance(effect, Serving):
            raise AssertionError("waits for its node to serve")
        if isinstance(effect, Chain):
            if not effect.db.local.try_lock_chain(effect.key):
                return False  # a client holds it
            self.answer(True)
            return True
        if isinstance(effect, Joined):
            if not effect.job.done():
                return False
            error = effect.job.exception()
            if error is None:
                self.answer()
            else:
                assert isinstance(error, Exception)
                self.fail(error)
            return True
        if isinstance(effect, Pause):
            assert self.clock is not None
            self.clock.advance(effect.seconds)
            self.answer()
            return True
        assert isinstance(effect, Answer), effect
        if not effect.wait.done:
            return False
        if effect.wait.error is not None:
            self.fail(effect.wait.error)
        else:
            self.answer(effect.wait.result)
        return True

    def time_out(self) -> None:
        """Its deadline passed (what `Waiting.until` raises then)."""
        effect = self.effect
        assert isinstance(effect, Answer) and not effect.wait.done
        self.fail(CtdbError(ErrorCode.TIMEOUT, effect.what))


def run(group: Group, *flows: Resumed) -> None:
    """Deliver and resume until nothing moves: every flow ended or waits
    for what has not happened."""
    moved = True
    while moved:
        group.deliver()
        moved = any(f.resume() for f in flows if not f.ended)


def three_engines(directory: Path) -> Iterator[Group]:
    """Nodes 0, 1 and 2 in one view, in sync, with the volatile database "v"."""
    made = Group(directory)
    try:
        for pnn in (0, 1, 2):
            made.start(pnn)
        made.view(0, 1, 2)
        made.deliver()
        attach = {"name": "v", "kind": "volatile"}
        run(made, Resumed(made.members[0].engine.submitting("attach", attach)))
        yield made
    finally:
        for member in made.members.values():
            member.close()


@pytest.fixture
def group(tmp_path: Path) -> Iterator[Group]:
    yield from three_engines(tmp_path)


def engine(group: Group, pnn: int) -> OrderedEngine:
    return group.members[pnn].engine


def db(group: Group, pnn: int) -> Database:
    return group.members[pnn].db_by_name("v")


def values(group: Group, key: bytes) -> set[bytes | None]:
    """What each member holds of `key` (one value when they agree)."""
    found = set()
    for pnn in group.members:
        rec = db(group, pnn).local.get(key)
        found.add(rec.value if rec is not None else None)
    return found


def queue(group: Group, key: bytes) -> set[tuple[Any, ...]]:
    """Each member's lock queue of `key`, as owners in line (one when they agree)."""
    seen = set()
    for pnn in group.members:
        q = engine(group, pnn).replica.locks.get((db(group, pnn).id, key))
        seen.add(tuple(e[0] for e in q.entries) if q is not None else ())
    return seen


def holding(group: Group, pnn: int, key: bytes, value: bytes) -> tuple[Session, Resumed]:
    """A client of node `pnn` that stored `value` under `key` and holds its lock."""
    client = Session()
    e = engine(group, pnn)
    store = Resumed(e.storing(db(group, pnn), key, value, client))
    run(group, store)
    assert store.ended and store.error is None
    lock = Resumed(e.locking(db(group, pnn), key, client))
    run(group, lock)
    assert lock.ended and lock.result == value
    return client, lock


def test_a_store_is_answered_once_its_own_message_is_delivered(group: Group) -> None:
    store = Resumed(engine(group, 1).storing(db(group, 1), b"k", b"one", Session()))
    assert isinstance(store.effect, Answer) and not store.resume()
    run(group, store)
    assert store.ended and store.error is None
    assert values(group, b"k") == {b"one"}


def test_a_stable_store_is_answered_only_once_every_member_applied_it(group: Group) -> None:
    """StableVolatileWrites: delivered is not enough, every member must say it applied it."""
    group.members[1].tunables["StableVolatileWrites"] = 1
    store = Resumed(engine(group, 1).storing(db(group, 1), b"k", b"one", Session()))
    group.deliver(1)  # the store only: the members' `applied` notices are still to come
    assert values(group, b"k") == {b"one"}
    assert not store.resume()
    run(group, store)
    assert store.ended and store.error is None


def test_an_attach_is_answered_only_once_every_member_applied_it(group: Group) -> None:
    """Then a client of any member may use the database, as over tcp."""
    attach = Resumed(engine(group, 0).attaching("w", DbKind.PERSISTENT))
    group.deliver(1)  # the attach only: the members' `applied` notices are still to come
    assert all(m.dbs.get(db_id("w")) is not None for m in group.members.values())
    assert not attach.resume()
    run(group, attach)
    assert attach.ended and attach.error is None
    assert attach.result.name == "w"


def test_a_write_waits_while_its_node_does_not_serve(group: Group) -> None:
    group.view(0)
    group.view(1, 2)
    group.deliver()
    store = Resumed(engine(group, 0).storing(db(group, 0), b"k", b"x", Session()))
    assert isinstance(store.effect, Serving) and not group.sent  # nothing sent yet


def test_a_lock_waits_in_line_and_gets_what_its_holder_wrote(group: Group) -> None:
    a, a_lock = holding(group, 0, b"k", b"old")
    b = Session()
    b_lock = Resumed(engine(group, 1).locking(db(group, 1), b"k", b))
    run(group, b_lock)
    assert not b_lock.ended  # its request is in line, behind a's lock
    assert len(queue(group, b"k")) == 1 and len(queue(group, b"k").pop()) == 2

    unlock = Resumed(engine(group, 0).unlocking(db(group, 0), b"k", a, b"new"))
    run(group, unlock, b_lock)
    assert unlock.ended and unlock.error is None
    assert b_lock.ended and b_lock.result == b"new"
    assert values(group, b"k") == {b"new"}
    owner = engine(group, 1).clients.owner(b)
    assert queue(group, b"k") == {(owner,)}
    assert (owner, db(group, 1).id, b"k") in engine(group, 1).clients.granted


def test_a_lock_that_times_out_leaves_the_line_on_every_member(group: Group) -> None:
    """Its client heard TIMEOUT: its place in line must not stay, or the
    lock would one day be granted to a client that no longer waits."""
    a, _ = holding(group, 0, b"k", b"old")
    a_owner = engine(group, 0).clients.owner(a)
    b_lock = Resumed(engine(group, 1).locking(db(group, 1), b"k", Session()))
    run(group, b_lock)
    b_lock.time_out()
    assert b_lock.error is not None and b_lock.error.code == ErrorCode.TIMEOUT
    group.deliver()  # its withdrawal
    assert queue(group, b"k") == {(a_owner,)}

    unlock = Resumed(engine(group, 0).unlocking(db(group, 0), b"k", a, b"new"))
    run(group, unlock)
    assert queue(group, b"k") == {()}  # nobody was granted it


def test_a_lock_refused_by_a_full_line_withdraws_nothing(group: Group) -> None:
    holding(group, 0, b"k", b"old")
    run(group, Resumed(engine(group, 1).locking(db(group, 1), b"k", Session())))
    group.members[2].tunables["MaxLockWaiters"] = 1
    c_lock = Resumed(engine(group, 2).locking(db(group, 2), b"k", Session()))
    group.deliver()
    assert c_lock.resume()
    assert isinstance(c_lock.error, QueueFull) and c_lock.error.code == ErrorCode.BUSY
    assert not group.sent  # never queued: nothing to withdraw
    assert len(queue(group, b"k").pop()) == 2


def test_an_unlock_by_a_client_without_the_lock_fails_before_anything_is_sent(
    group: Group,
) -> None:
    holding(group, 0, b"k", b"old")
    unlock = Resumed(engine(group, 1).unlocking(db(group, 1), b"k", Session(), b"mine"))
    assert unlock.error is not None and unlock.error.code == ErrorCode.NOT_LOCKED
    assert not group.sent


def test_a_read_of_a_record_another_client_holds_waits_for_it_and_keeps_no_lock(
    group: Group,
) -> None:
    """A linearizable read behind a lock waits for the holder's unlock, as
    migration would, and gives the lock it took for that back."""
    a, _ = holding(group, 0, b"k", b"old")
    read = Resumed(engine(group, 1).reads.ordered(db(group, 1), b"k", Session()))
    run(group, read)
    assert not read.ended  # in line behind a
    unlock = Resumed(engine(group, 0).unlocking(db(group, 0), b"k", a, b"new"))
    run(group, unlock, read)
    assert read.ended and read.result == b"new"
    assert queue(group, b"k") == {()}
    assert not engine(group, 1).clients.granted


def test_a_read_answers_after_its_barrier_with_every_write_ordered_before_it(
    group: Group,
) -> None:
    store = Resumed(engine(group, 0).storing(db(group, 0), b"k", b"before", Session()))
    read = Resumed(engine(group, 1).reads.ordered(db(group, 1), b"k", Session()))
    assert isinstance(read.effect, Answer) and not read.resume()  # its barrier
    run(group, store, read)
    assert read.ended and read.result == b"before"
    assert engine(group, 1).node.stats["read_barriers"] == 1


def test_a_request_whose_delivery_times_out_forgets_it_and_may_still_be_applied(
    group: Group,
) -> None:
    """TIMEOUT means "outcome unknown": the store is in the stream."""
    e = engine(group, 1)
    store = Resumed(e.storing(db(group, 1), b"k", b"late", Session()))
    store.time_out()
    assert store.error is not None and store.error.code == ErrorCode.TIMEOUT
    assert not e.requests.pending
    group.deliver()
    assert values(group, b"k") == {b"late"}


def test_a_recover_marker_gives_every_member_a_new_generation_and_returns_once_serving(
    group: Group,
) -> None:
    before = [engine(group, pnn).recoveries for pnn in range(3)]
    recover = Resumed(engine(group, 2).recovering())
    assert isinstance(recover.effect, Answer)  # its marker, until delivered
    run(group, recover)
    assert recover.ended and recover.error is None
    assert [engine(group, pnn).recoveries for pnn in range(3)] == [n + 1 for n in before]


def test_commits_of_one_attached_database_are_validated_where_the_stream_delivers_them(
    group: Group,
) -> None:
    attach = Resumed(engine(group, 1).attaching("p.tdb", DbKind.PERSISTENT))
    run(group, attach)
    assert attach.ended and attach.error is None
    dbs = {pnn: group.members[pnn].db_by_name("p.tdb") for pnn in group.members}
    # Two clients on two nodes read the same key, then both write it.
    first, second = Transaction(1, dbs[1]), Transaction(2, dbs[2])
    for tx, value in ((first, b"one"), (second, b"two")):
        assert tx.fetch(b"k") is None
        tx.writes[b"k"] = value
    commits = [Resumed(engine(group, 1).committing(first))]
    commits.append(Resumed(engine(group, 2).committing(second)))
    run(group, *commits)
    assert all(c.ended for c in commits)
    lost = [c for c in commits if c.error is not None]
    assert len(lost) == 1 and lost[0].error is not None and lost[0].error.code == ErrorCode.BUSY
    won = b"one" if commits[0].error is None else b"two"
    assert {live_value(d.local.get(b"k")) for d in dbs.values()} == {won}
    assert len({d.seqnum() for d in dbs.values()}) == 1
    # Writing what the key holds commits nothing: nothing is sent.
    same = Transaction(3, dbs[0])
    same.fetch(b"k")
    same.writes[b"k"] = won
    unchanged = Resumed(engine(group, 0).committing(same))
    assert unchanged.ended and unchanged.result == dbs[0].seqnum() and not group.sent
