"""tcp: a client's record call on a record elsewhere, step by step and without a
loop (`dmaster_calls.RemoteCallOut`): sent to the record's lmaster with one
request id however often it is re-sent, run here instead once the record
came to us, and failed rather than re-sent across a recovery when running
it twice would not be the same (a read is simply sent again)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import tdb

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.dmaster_calls import RETRY_INTERVAL, DmasterCalls, RemoteCallOut
from ctdb.engines.effects import Serving
from ctdb.engines.record_calls import Append, Read, RecordCall
from ctdb.engines.waiting import Heard, Waiting
from ctdb.protocol.messages import RemoteCall
from ctdb.storage.database import Database, DbKind
from ctdb.storage.entries import Entry, decode_entries, encode_entries
from ctdb.storage.ltdb import Record
from ctdb.storage.placement import lmaster
from tests.flow_steps import Stepped

KEY = b"list"
VNNMAP = [0, 1, 2]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    volatile = Database.open(tmp_path, "lists.tdb", DbKind.VOLATILE, 0)
    try:
        yield volatile
    finally:
        volatile.local.close()


class Engine(SimpleNamespace):
    """The migration engine as record calls see it; `here`: we are the dmaster."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, RemoteCall]] = []
        node = SimpleNamespace(
            pnn=0,
            vnnmap=VNNMAP,
            generation=5,
            stats=Counter(),
            send=lambda pnn, msg: self.sent.append((pnn, msg)),
            entry_head=lambda owner, db_id, key: None,
        )
        super().__init__(node=node, here=False)

    def is_dmaster(self, db: Database, key: bytes, rec: Record | None) -> bool:
        return bool(self.here)

    def locked(self, db: Database, key: bytes) -> bool:
        return False

    def write(self, db: Database, key: bytes, value: bytes) -> Record:
        rec = Record(7, 0, value)
        db.local.put(key, rec)
        return rec


def out_for(db: Database, call: RecordCall) -> tuple[Engine, RemoteCallOut]:
    engine = Engine()
    return engine, RemoteCallOut(DmasterCalls(cast(Any, engine)), db, KEY, call, 42)


def test_a_call_goes_to_the_lmaster_with_one_request_id_however_often_it_is_sent(
    db: Database,
) -> None:
    engine, out = out_for(db, Append("always", None, Entry(0, 3, b"a")))
    assert out.step() is None and out.step() is None  # sent, then sent again
    to = lmaster(KEY, VNNMAP)
    assert [(pnn, msg.reqid, msg.generation) for pnn, msg in engine.sent] == [(to, 42, 5)] * 2
    assert out.waiter == ("call", 42) and out.sent_in == 5


def test_a_call_runs_here_once_the_record_came_to_us(db: Database) -> None:
    engine, out = out_for(db, Append("always", None, Entry(0, 3, b"a")))
    assert out.step() is None
    engine.here = True
    answer = out.step()
    assert answer is not None and answer["appended"]
    assert len(engine.sent) == 1  # not sent again
    assert db.local.get(KEY) is not None  # written here, as the dmaster writes


def test_across_a_recovery_a_change_fails_with_unknown_outcome_and_a_read_is_sent_again(
    db: Database,
) -> None:
    engine, out = out_for(db, Append("always", None, Entry(0, 3, b"a")))
    assert out.step() is None
    engine.node.generation = 6
    with pytest.raises(CtdbError) as failed:
        out.step()
    assert failed.value.code == ErrorCode.TIMEOUT and len(engine.sent) == 1

    engine, out = out_for(db, Read())
    assert out.step() is None
    engine.node.generation = 6
    assert out.step() is None
    assert [msg.generation for _, msg in engine.sent] == [5, 6]


class Calling(Engine):
    """The engine a call's flow runs on: a clock, CallTimeout, its waiters."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = 0.0
        self.waiting = Waiting()
        self.node.serving = True
        self.node.now = lambda: self.clock
        self.node.tunable = lambda name: {"CallTimeout": 30.0}[name]


def test_a_call_elsewhere_waits_for_its_reply_and_is_sent_again_meanwhile(
    db: Database,
) -> None:
    engine = Calling()
    calls = DmasterCalls(cast(Any, engine))
    run = Stepped(calls.calling_remote(db, KEY, Read()))
    heard = run.effect
    assert isinstance(heard, Heard) and heard.seconds == RETRY_INTERVAL
    assert len(engine.sent) == 1
    engine.clock += RETRY_INTERVAL
    assert run.answer(False) == Heard(heard.wait, RETRY_INTERVAL)  # the same wait, sent again
    assert len(engine.sent) == 2 and engine.sent[0][1].reqid == engine.sent[1][1].reqid
    engine.node.serving = False  # a recovery: a read waits, then goes again
    engine.clock += RETRY_INTERVAL
    assert run.answer(False) == Serving(30.0)
    engine.node.serving = True
    assert isinstance(run.answer(), Heard) and len(engine.sent) == 3
    engine.waiting.answer(("call", engine.sent[0][1].reqid), {"entries": []})
    assert run.answer(True) is None and run.result == {"entries": []}
    late = Stepped(calls.calling_remote(db, KEY, Read()))
    assert isinstance(late.effect, Heard)
    engine.clock += 29.75
    assert late.answer(False) == Heard(late.effect.wait, 0.25)  # no look past the deadline
    engine.clock += 0.25
    with pytest.raises(CtdbError) as err:  # nothing came within CallTimeout
        late.answer(False)
    assert err.value.code == ErrorCode.TIMEOUT


class Purging(Engine):
    """The engine a purge runs on: dmaster of every record of `db`, its writes
    failing while `failing` (a full disk)."""

    def __init__(self, db: Database) -> None:
        super().__init__()
        self.node.dbs = {db.id: db}
        self.failing = False

    def write(self, db: Database, key: bytes, value: bytes) -> Record:
        if self.failing:
            raise OSError(28, "No space left on device")
        return super().write(db, key, value)


def _lists(db: Database, keys: list[bytes]) -> dict[bytes, list[int]]:
    """Each entry list's owners' pnns."""
    out = {}
    for key in keys:
        rec = db.local.get(key)
        value = b"" if rec is None else rec.value
        out[key] = [e.pnn for e in decode_entries(value)] if value else []
    return out


def test_a_purge_that_failed_half_way_is_done_again(db: Database) -> None:
    """A recovery's purge whose write failed (set_vnnmap fails, the leader
    retries) must purge everything at the next attempt: it used to note the
    owners before it wrote, so the retry found nothing new to do and the
    departed clients' entries stayed, their locks held for ever."""
    run = 5
    keys = [b"a", b"b", b"c"]
    for key in keys:
        entries = [Entry(1, run << 32 | 1, b"x"), Entry(0, run << 32 | 2, b"y")]
        db.local.put(key, Record(3, 0, encode_entries(entries)))
    engine = Purging(db)
    calls = DmasterCalls(cast(Any, engine))
    owners = {0: run}  # node 1 left
    engine.failing = True
    with pytest.raises(OSError):
        calls.purge(owners, {})
    engine.failing = False
    assert calls.purge(owners, {}) == 3
    assert _lists(db, keys) == {key: [0] for key in keys}
    assert calls.purge(owners, {}) == 0  # nothing new: nothing to do


def test_a_purge_after_a_join_then_a_departure_removes_the_joiners_entries(
    db: Database,
) -> None:
    """Owners {0, 1}, then node 2 joins (nothing to purge, but it is an owner
    now), then leaves: its clients' entries go. The purge that noted its
    owners only once done skipped the join without noting it, and then found
    {0, 1} unchanged at the departure (test_cond_append, tcp, 2 runs in 5)."""
    run = 5
    calls = DmasterCalls(cast(Any, Purging(db)))
    assert calls.purge({0: run, 1: run}, {}) == 0
    assert calls.purge({0: run, 1: run, 2: run}, {}) == 0  # node 2 joined
    entries = [Entry(2, run << 32 | 1, b"x"), Entry(0, run << 32 | 2, b"y")]
    db.local.put(b"a", Record(3, 0, encode_entries(entries)))
    assert calls.purge({0: run, 1: run}, {}) == 1  # node 2 left
    assert _lists(db, [b"a"]) == {b"a": [0]}


def test_a_record_pushed_by_a_recovery_is_purged_though_the_owners_did_not_change(
    db: Database,
) -> None:
    """tcp campaign seed 174: node 2 hung with a list holding an entry of node
    0's first run; nodes 0 and 1 restarted and recovered together (owners
    {0: 2, 1: 2}); node 2 came back, and the recovery pushed its copy of the
    list to node 1, its new dmaster. Nobody had left since the last purge,
    so the purge was skipped, and the dead client's entry held the list for
    good. The records a recovery pushed are purged whatever the owners."""
    calls = DmasterCalls(cast(Any, Purging(db)))
    assert calls.purge({0: 2, 1: 2}, {}) == 0
    stale = encode_entries([Entry(0, 1 << 32 | 1, b"x"), Entry(1, 2 << 32 | 1, b"y")])
    db.local.put(b"pushed", Record(9, 0, stale))
    db.local.put(b"kept", Record(9, 0, stale))  # (not pushed: purged before, by the rule)
    assert calls.purge({0: 2, 1: 2, 2: 1}, {db.id: [b"pushed"]}) == 1
    assert _lists(db, [b"pushed", b"kept"]) == {b"pushed": [1], b"kept": [0, 1]}


def test_a_purge_passes_over_a_record_without_its_header(db: Database) -> None:
    """A foreign writer's record (no CTDB header) holds no entry list: the
    purge leaves it to readers' IO errors and recovery's pull, rather than fail
    every recovery on it."""
    run = 5
    db.local.put(b"a", Record(3, 0, encode_entries([Entry(1, run << 32 | 1, b"x")])))
    db.local._tdb.store(b"junk", b"xx", tdb.REPLACE)
    calls = DmasterCalls(cast(Any, Purging(db)))
    assert calls.purge({0: run}, {}) == 1
    assert _lists(db, [b"a"]) == {b"a": []}
