"""vs: records lent to Samba's clients, over three real engines, resumed by hand.

Lending (`engines/ordered/samba_grants.py`) and taking back
(`samba_returns.py`) are flows; the jobs lending spawns are run by the test
instead of the event loop. Node 0's file is shared with its Samba clients,
who write in place while the record is lent; the group of
`test_ordered_rounds` delivers what the engines broadcast. What is checked
is what every member holds after a record went back to the stream.
(`tests/test_samba_grants.py` covers the faults, on one engine and a loop.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ctdb.engines.controls import Controls
from ctdb.engines.effects import AllChains, Chain, Pause
from ctdb.engines.flows import Flow
from ctdb.engines.merge import to_wire
from ctdb.engines.ordered import samba_views
from ctdb.engines.ordered.samba_returns import HOLD_MIN
from ctdb.engines.ordered.waits import Effect, Joined
from ctdb.storage.database import Database
from ctdb.storage.ltdb import NO_DMASTER, Record
from tests.chain_holder import holding
from tests.test_ordered_flows import Resumed, db, engine, queue, run, three_engines, values
from tests.test_ordered_rounds import Group, Session

KEY = b"k"


class HandJob:
    """A flow lending spawned, run by the test (what lending uses of a task)."""

    def __init__(self, flow: Flow[Effect, None], group: Group) -> None:
        self.resumed = Resumed(flow, group.clock)
        self._callbacks: list[Callable[[Any], object]] = []

    def done(self) -> bool:
        return self.resumed.ended

    def cancelled(self) -> bool:
        return False

    def exception(self) -> BaseException | None:
        return self.resumed.error

    def cancel(self) -> bool:
        raise AssertionError("nothing is cancelled here")

    def add_done_callback(self, fn: Callable[[Any], object]) -> None:
        self._callbacks.append(fn)

    def step(self) -> bool:
        moved = not self.done() and self.resumed.resume()
        if moved and self.done():
            for fn in self._callbacks:
                fn(self)
        return moved


@pytest.fixture
def jobs(group: Group) -> list[HandJob]:
    """Node 0 shares its file with its Samba clients; the jobs its lending starts."""
    db(group, 0).shared = True
    started: list[HandJob] = []

    def spawn(flow: Flow[Effect, None]) -> HandJob:
        job = HandJob(flow, group)
        started.append(job)
        return job

    engine(group, 0).samba.spawn = spawn
    return started


@pytest.fixture
def group(tmp_path: Path) -> Iterator[Group]:
    yield from three_engines(tmp_path)


def settle(group: Group, jobs: list[HandJob], *flows: Resumed) -> None:
    """Deliver, resume and step until nothing moves."""
    moved = True
    while moved:
        group.deliver()
        moved = any(f.resume() for f in flows if not f.ended)
        moved = any([job.step() for job in jobs]) or moved


def lent_here(group: Group, jobs: list[HandJob], value: bytes) -> Database:
    """`KEY` (stored as `value` by a client of node 1) lent to node 0's Samba clients."""
    store = Resumed(engine(group, 1).storing(db(group, 1), KEY, value, Session()))
    run(group, store)
    lending = Resumed(engine(group, 0).samba.lending(db(group, 0), KEY, 10.0), group.clock)
    settle(group, jobs, lending)
    assert lending.ended and lending.error is None
    shared = db(group, 0)
    rec = shared.local.get(KEY)
    assert rec is not None and rec.dmaster == 0 and rec.value == value  # ours, in place
    return shared


def write_in_place(shared: Database, value: bytes) -> None:
    """What a Samba client does with a record whose header names its node."""
    assert shared.local.try_lock_chain(KEY)
    try:
        rec = shared.local.get(KEY)
        assert rec is not None and rec.dmaster == 0
        shared.local.put(KEY, Record(rec.rsn, 0, value))
    finally:
        shared.local.unlock_chain(KEY)


def test_a_record_taken_back_brings_what_samba_clients_wrote_to_every_member(
    group: Group, jobs: list[HandJob]
) -> None:
    shared = lent_here(group, jobs, b"v0")
    write_in_place(shared, b"in place")
    assert values(group, KEY) == {b"v0", b"in place"}  # only node 0 has it yet

    asking = Resumed(engine(group, 1).locking(db(group, 1), KEY, Session()))
    settle(group, jobs, asking)
    assert asking.ended and asking.result == b"in place"
    assert values(group, KEY) == {b"in place"}
    rec = shared.local.get(KEY)
    assert rec is not None and rec.dmaster == NO_DMASTER  # no longer lent: clients ask
    assert not engine(group, 0).samba.lent and len(jobs) == 1


def test_an_unchanged_record_stays_lent_a_moment_before_it_goes_back(
    group: Group, jobs: list[HandJob]
) -> None:
    """The client that asked for it must get to use it: a record nobody
    wrote goes back only HOLD_MIN after it was lent."""
    lent_here(group, jobs, b"v0")
    asking = Resumed(engine(group, 2).locking(db(group, 2), KEY, Session()))
    group.deliver()
    assert len(jobs) == 1  # the taking back started...
    taking_back = jobs[0].resumed
    assert isinstance(taking_back.effect, Pause)  # ...and waits
    assert 0 < taking_back.effect.seconds <= HOLD_MIN
    assert engine(group, 0).samba.lent
    before = group.clock.now()
    settle(group, jobs, asking)
    assert group.clock.now() - before >= HOLD_MIN * 0.99
    assert asking.ended and asking.result == b"v0"
    assert values(group, KEY) == {b"v0"}
    assert len(queue(group, KEY)) == 1  # every member agrees who holds it now


def test_a_view_change_revokes_what_is_lent_and_what_was_written_in_place_is_lost(
    group: Group, jobs: list[HandJob]
) -> None:
    """A node cut off stops lending at once: its clients must ask again,
    and a write in place the others never saw does not come back."""
    shared = lent_here(group, jobs, b"v0")
    write_in_place(shared, b"never seen")
    group.view(0)  # node 0 alone: a minority
    group.view(1, 2)
    group.deliver()
    rec = shared.local.get(KEY)
    assert rec is not None and rec.dmaster == NO_DMASTER and rec.value == b"v0"
    assert not engine(group, 0).samba.lent
    reading = Resumed(engine(group, 1).reads.ordered(db(group, 1), KEY, Session()))
    settle(group, jobs, reading)
    assert reading.ended and reading.result == b"v0"


def test_a_traverse_elsewhere_sees_what_samba_clients_wrote_in_place_here(
    group: Group, jobs: list[HandJob]
) -> None:
    """The stream does not carry a write in place until the record goes back:
    a traverse asks every other member what it lent (the `lent` control)."""
    shared = lent_here(group, jobs, b"v0")
    write_in_place(shared, b"in place")
    theirs = db(group, 1)
    theirs.shared = True  # (no client of node 1 holds anything)
    traverse = Resumed(engine(group, 1).traversing(theirs), group.clock)
    assert traverse.effect == Controls.on_all([0, 2], "lent", {"db_id": theirs.id})
    replies = []
    with holding(theirs) as elsewhere:
        for pnn in (0, 2):  # each member's `lent` control, as its daemon runs it
            lent = Resumed(samba_views.lent_records(engine(group, pnn).samba, db(group, pnn), 10.0))
            if pnn == 0:  # the record is read under its chain: a Samba client may hold it
                assert lent.effect == Chain(shared, KEY, 10.0)
            run(group, lent)
            assert lent.ended and lent.error is None
            replies.append(to_wire(lent.result))
        assert replies[1] == []  # node 2 lent nothing
        whole = traverse.answer(replies)
        assert isinstance(whole, AllChains) and whole.db is theirs
        assert theirs.local.try_lock_all()  # as the driver's poll leaves it
        assert traverse.answer(True) is None and traverse.ended
        assert elsewhere.ask("lockall") == "locked"  # the traverse let go of every chain
        assert elsewhere.ask("unlockall") == "unlocked"
    assert traverse.result == [(KEY, Record(mine(theirs).rsn, 0, b"in place"))]
    assert mine(theirs).value == b"v0"  # node 1's own copy: the stream's


def mine(database: Database) -> Record:
    rec = database.local.get(KEY)
    assert rec is not None
    return rec


def test_the_calls_for_a_record_share_one_lending_and_get_it_named_ours(
    group: Group, jobs: list[HandJob]
) -> None:
    """Samba's clients on node 0 ask for a record (REQ_CALL) twice at once."""
    run(group, Resumed(engine(group, 1).storing(db(group, 1), KEY, b"v0", Session())))
    grants = engine(group, 0).samba
    first = Resumed(grants.migrating_here(db(group, 0), KEY, 10.0), group.clock)
    second = Resumed(grants.migrating_here(db(group, 0), KEY, 10.0), group.clock)
    assert isinstance(first.effect, Joined) and isinstance(second.effect, Joined)
    assert first.effect.job is second.effect.job and len(jobs) == 1
    settle(group, jobs, first, second)
    assert first.ended and second.ended and first.error is None and second.error is None
    assert first.result == second.result == db(group, 0).local.get(KEY)
    assert first.result.dmaster == 0 and first.result.value == b"v0"  # ours, in place
    assert len(jobs) == 1


def test_a_record_the_stream_rewrote_while_lent_is_handed_out_named_ours_again(
    group: Group, jobs: list[HandJob]
) -> None:
    """A wipe in the stream deletes the record in our file under the lending's lock."""
    run(group, Resumed(engine(group, 1).storing(db(group, 1), KEY, b"v0", Session())))
    grants, shared = engine(group, 0).samba, db(group, 0)
    call = Resumed(grants.migrating_here(shared, KEY, 10.0), group.clock)
    settle(group, jobs)  # the lending, not yet the call
    assert grants.lent and isinstance(call.effect, Joined)
    shared.local.remove(KEY)  # what applying the wipe leaves
    settle(group, jobs, call)
    assert call.ended and call.error is None
    assert call.result == shared.local.get(KEY)
    assert call.result.dmaster == 0 and call.result.value == b""
