"""The vs engine applies its stream only under the chains each event touches in
files Samba's clients share (ctdb.engines.ordered.stream_gate): what each event
needs, and a stall that keeps the stream's order; another process holds the
locks, as a client would, and the test moves the gate's clock itself."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ctdb.engines.chains import RETRY
from ctdb.engines.ordered.locks import LockQueue
from ctdb.engines.ordered.stream_gate import StreamGate, needs
from ctdb.protocol.messages import Ordered
from ctdb.storage.database import Database, DbKind
from tests.chain_holder import Holder
from tests.clocks import ManualClock
from transport.base import View


@pytest.fixture
def dbs(tmp_path: Path) -> Iterator[dict[int, Database]]:
    shared = Database.open(tmp_path, "shared.tdb", DbKind.VOLATILE, 0)
    shared.shared = True  # a Samba client attached it
    private = Database.open(tmp_path, "private.tdb", DbKind.VOLATILE, 0)
    try:
        yield {shared.id: shared, private.id: private}
    finally:
        shared.local.close()
        private.local.close()


def _by_name(dbs: dict[int, Database], name: str) -> Database:
    return next(db for db in dbs.values() if db.name == name)


@pytest.fixture
def holder(dbs: dict[int, Database]) -> Iterator[Holder]:
    shared = _by_name(dbs, "shared.tdb")
    client = Holder(shared.path, shared.local.tdb_flags)
    try:
        yield client
    finally:
        client.close()


def _not_stuck(why: str, damaged: bool) -> None:
    raise AssertionError(f"not stuck here: {why}")


def _op(op: str, **args: Any) -> Ordered:
    return Ordered(1, 7, op, args)


def test_what_each_event_needs(dbs: dict[int, Database]) -> None:
    shared, private = _by_name(dbs, "shared.tdb"), _by_name(dbs, "private.tdb")
    held = LockQueue()
    held.entries.append(((2, 5), "lock", None, 1))
    orphan = LockQueue()  # a store left at the head by a failed write
    orphan.entries.append(((2, 6), "store", b"v", None))
    locked = {(shared.id, b"held"): held, (shared.id, b"orphan"): orphan}
    free_store = _op("store", db=shared.id, key=b"k", value=b"v", owner=[1, 1])
    assert needs(free_store, dbs, locked) == [(shared, b"k")]
    # A file no Samba client uses is never locked.
    assert needs(_op("store", db=private.id, key=b"k", owner=[1, 1]), dbs, locked) == []
    # Queuing behind another holder (or failing BUSY) touches no file...
    for op in ("lock", "store", "withdraw", "call"):
        assert needs(_op(op, db=shared.id, key=b"held", owner=[1, 1]), dbs, locked) == []
    # ...the holder's own unlock or withdrawal does, and so does any unlock.
    assert needs(_op("unlock", db=shared.id, key=b"held", owner=[2, 5]), dbs, locked) == [
        (shared, b"held")
    ]
    assert needs(_op("withdraw", db=shared.id, key=b"held", owner=[2, 5]), dbs, locked) == [
        (shared, b"held")
    ]
    assert needs(_op("unlock", db=shared.id, key=b"held", owner=[1, 1]), dbs, locked) == [
        (shared, b"held")
    ]
    # A release changes hands only where its owner holds (or nobody does).
    assert needs(_op("release", owner=[2, 5]), dbs, locked) == [
        (shared, b"held"),
        (shared, b"orphan"),
    ]
    assert needs(_op("release", owner=[3, 1]), dbs, locked) == [(shared, b"orphan")]
    vacuum = _op("vacuum", db=shared.id, records=[[b"a", 3], [b"b", 4]])
    assert needs(vacuum, dbs, locked) == [(shared, b"a"), (shared, b"b")]
    for op in ("applied", "sync", "attach", "flags", "recover"):
        assert needs(_op(op), dbs, locked) == []
    # A view change, a round's message: every shared file, whole.
    assert needs(View(3, (0, 1, 2)), dbs, locked) == [(shared, None)]
    assert needs(_op("snapshot", name="shared.tdb"), dbs, locked) == [(shared, None)]
    # A commit or a wipe: its database, whole (a file no client shares: nothing).
    assert needs(_op("wipe", db=shared.id), dbs, locked) == [(shared, None)]
    assert needs(_op("commit", db=private.id, reads=[], writes=[]), dbs, locked) == []


def test_a_held_chain_stalls_the_stream_in_order_and_lets_go_afterwards(
    dbs: dict[int, Database], holder: Holder
) -> None:
    shared = _by_name(dbs, "shared.tdb")
    stats: Counter[str] = Counter()
    clock = ManualClock()
    gate = StreamGate(dbs, {}, stats, lambda: 60.0, _not_stuck, clock)
    handled: list[str] = []

    def handle(event: object) -> None:
        name = event.op if isinstance(event, Ordered) else "view"
        if isinstance(event, Ordered) and event.op == "store":
            assert holder.ask("lock", b"k") == "busy"  # the gate holds it meanwhile
        handled.append(name)

    gate.enter(_op("store", db=shared.id, key=b"k", owner=[1, 1]), handle)
    assert handled == ["store"] and not gate.stalled
    assert holder.ask("lock", b"k") == "locked"
    gate.enter(_op("store", db=shared.id, key=b"k", owner=[1, 1]), handle)
    # Later events wait behind it, even ones that need nothing.
    gate.enter(_op("applied"), handle)
    gate.enter(View(4, (0, 1)), handle)
    assert handled == ["store"] and gate.stalled and stats["stream_stalls"] == 1
    assert gate.try_whole(lambda: "read") is None
    clock.advance(RETRY)  # tried again: still held
    assert handled == ["store"] and gate.stalled and clock.pending() == 1
    assert holder.ask("unlock", b"k") == "unlocked"
    clock.advance(RETRY)
    assert not gate.stalled and clock.pending() == 0
    assert handled == ["store", "store", "applied", "view"]
    assert holder.ask("lock", b"k") == "locked"  # nothing kept
    assert holder.ask("unlock", b"k") == "unlocked"
    assert gate.try_whole(lambda: "read") == "read"
    assert holder.ask("lockall") == "locked"  # and the whole file let go too
    assert holder.ask("unlockall") == "unlocked"


def test_an_event_that_fails_when_let_through_resyncs_the_node(
    dbs: dict[int, Database], holder: Holder
) -> None:
    """A handler that fails (a local write: python-tdb raises RuntimeError for
    an I/O error) leaves this replica without that event: as when an event
    handled at once fails (`NodeMessages.handle`), the node resyncs with its
    copies marked damaged, and what waited behind it goes with the backlog.
    Raised from the timer instead, it left the node in RECOVERY for good
    (simulator, vs seed 21003767)."""
    shared = _by_name(dbs, "shared.tdb")
    clock = ManualClock()
    resyncs: list[tuple[str, bool]] = []
    gate = StreamGate(dbs, {}, Counter(), lambda: 60.0, lambda *why: resyncs.append(why), clock)
    handled: list[int] = []

    def handle(event: object) -> None:
        assert isinstance(event, Ordered)
        if event.seq == 1:
            raise RuntimeError(2, "I/O error in store")
        handled.append(event.seq)

    assert holder.ask("lock", b"k") == "locked"
    for seq in (1, 2):
        gate.enter(Ordered(0, seq, "store", {"db": shared.id, "key": b"k"}), handle)
    assert holder.ask("unlock", b"k") == "unlocked"
    clock.advance(RETRY)
    assert handled == [] and not gate.stalled and clock.pending() == 0
    assert len(resyncs) == 1 and resyncs[0][1] is True
    assert "I/O error in store" in resyncs[0][0]


def test_a_lock_call_that_fails_drops_what_waits_and_resyncs_the_node(
    dbs: dict[int, Database],
) -> None:
    """Not a chain a client holds: libtdb itself failed (here: the handle is
    gone). The node can no longer apply the stream to that file."""
    shared = _by_name(dbs, "shared.tdb")
    resyncs: list[tuple[str, bool]] = []
    clock = ManualClock()
    gate = StreamGate(dbs, {}, Counter(), lambda: 60.0, lambda *why: resyncs.append(why), clock)
    handled: list[object] = []
    shared.local.chains.close()
    gate.enter(_op("store", db=shared.id, key=b"k", owner=[1, 1]), handled.append)
    assert handled == [] and not gate.stalled and clock.pending() == 0
    assert len(resyncs) == 1 and resyncs[0][1] is False
    assert resyncs[0][0].startswith("chain locks of a shared file failed")


def test_a_stall_is_timed_from_when_the_event_before_it_got_through(
    dbs: dict[int, Database], holder: Holder
) -> None:
    """Each held chain gets the whole limit: a stream that keeps moving is
    not given up because it stalled often."""
    shared = _by_name(dbs, "shared.tdb")
    limit = 0.3
    clock = ManualClock()
    at: dict[str, float] = {}

    def stuck(why: str, damaged: bool) -> None:
        at["stuck"] = clock.now()

    def handle(event: object) -> None:
        at.setdefault("first", clock.now())

    gate = StreamGate(dbs, {}, Counter(), lambda: limit, stuck, clock)
    assert holder.ask("lock", b"k1") == "locked"
    gate.enter(_op("store", db=shared.id, key=b"k1", owner=[1, 1]), handle)
    gate.enter(_op("store", db=shared.id, key=b"k2", owner=[1, 1]), handle)
    clock.advance(0.2)  # two thirds of the limit on k1
    assert holder.ask("lock", b"k2") == "locked"
    assert holder.ask("unlock", b"k1") == "unlocked"
    clock.advance(limit)  # k1 got through at the next retry: k2 is timed from there
    assert "stuck" not in at and at["first"] == pytest.approx(0.2 + RETRY, abs=RETRY)
    clock.advance(limit)
    assert at["stuck"] - at["first"] == pytest.approx(limit, abs=RETRY)
    assert holder.ask("unlock", b"k2") == "unlocked"


def test_a_stream_stalled_past_the_limit_is_given_up_and_says_which_file(
    dbs: dict[int, Database], holder: Holder
) -> None:
    """The node must then leave the group (its members wait for what it
    applies) and come back once the files are free (`files_free`)."""
    shared = _by_name(dbs, "shared.tdb")
    stats: Counter[str] = Counter()
    stuck: list[str] = []
    clock = ManualClock()
    gate = StreamGate(dbs, {}, stats, lambda: 0.05, lambda why, _damaged: stuck.append(why), clock)
    handled: list[object] = []
    assert holder.ask("lock", b"k") == "locked"
    assert not gate.files_free()
    gate.enter(_op("store", db=shared.id, key=b"k", owner=[1, 1]), handled.append)
    gate.enter(_op("applied"), handled.append)
    clock.advance(0.04)
    assert not stuck
    clock.advance(0.02 + RETRY)
    assert stuck == ["a client has held a chain in shared.tdb too long"]
    assert not gate.stalled and handled == [] and stats["stream_stuck"] == 1
    assert clock.pending() == 0  # nothing left to retry
    assert holder.ask("unlock", b"k") == "unlocked"
    assert gate.files_free()
