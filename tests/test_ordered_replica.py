"""The ordered engine's replicated state alone: operations in, results and effects
out, no stream, no event loop. Two replicas fed the same operations end alike;
what concerns the local node only comes out as effects."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines import record_calls
from ctdb.engines.ordered.replica import FirstEntry, Granted, Replica, Written
from ctdb.engines.record_calls import Append, Read, Remove
from ctdb.storage.database import Database, DbKind
from ctdb.storage.entries import Entry
from ctdb.storage.ltdb import live_value
from ctdb.storage.placement import db_id


class Dbs:
    """A node's databases in a directory (what `Host` offers the replica)."""

    def __init__(self, directory: Path, pnn: int) -> None:
        self.directory, self.pnn = directory, pnn
        self.dbs: dict[int, Database] = {}

    def db(self, dbid: int) -> Database:
        return self.dbs[dbid]

    def attach(self, name: str, kind: DbKind) -> Database:
        existing = self.dbs.get(db_id(name))
        if existing is not None:
            return existing  # (a process opens a TDB file once)
        db = self.dbs[db_id(name)] = Database.open(self.directory, name, kind, self.pnn)
        return db


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list[Replica]]:
    made = []
    for pnn in (0, 1):
        (tmp_path / str(pnn)).mkdir()
        made.append(Replica(pnn, Dbs(tmp_path / str(pnn), pnn), Counter()))
    yield made
    for r in made:
        for db in r.databases.dbs.values():
            db.local.close()


def apply_all(replicas: list[Replica], origin: int, op: str, args: dict[str, Any]) -> list[Any]:
    return [r.apply(origin, op, args) for r in replicas]


def attach(replicas: list[Replica]) -> int:
    apply_all(replicas, 0, "attach", {"name": "v", "kind": "volatile"})
    return next(iter(replicas[0].databases.dbs))


def value(r: Replica, dbid: int, key: bytes) -> bytes | None:
    return live_value(r.databases.db(dbid).local.get(key))


def test_locks_are_granted_in_order_and_only_the_holders_node_hears_it(
    replicas: list[Replica],
) -> None:
    dbid = attach(replicas)
    for r in replicas:
        r.effects.clear()
    apply_all(replicas, 0, "lock", {"db": dbid, "key": b"k", "owner": [0, 1]})
    apply_all(replicas, 1, "lock", {"db": dbid, "key": b"k", "owner": [1, 7]})
    # Each change of the queue says again who holds it (the engine answers a
    # fetch_lock once); only to the holder's node.
    assert set(replicas[0].effects) == {Granted((0, 1), (dbid, b"k"), None)}
    assert replicas[1].effects == []
    for r in replicas:
        r.effects.clear()
    apply_all(replicas, 0, "unlock", {"db": dbid, "key": b"k", "owner": [0, 1], "value": b"v1"})
    assert replicas[1].effects == [Written((dbid, b"k")), Granted((1, 7), (dbid, b"k"), b"v1")]
    assert replicas[0].effects == [Written((dbid, b"k"))]
    assert [value(r, dbid, b"k") for r in replicas] == [b"v1", b"v1"]
    with pytest.raises(CtdbError) as refused:
        replicas[0].apply(0, "unlock", {"db": dbid, "key": b"k", "owner": [0, 1], "value": None})
    assert refused.value.code == ErrorCode.NOT_LOCKED


def test_a_store_waits_behind_the_holder_and_lands_when_it_unlocks(
    replicas: list[Replica],
) -> None:
    dbid = attach(replicas)
    apply_all(replicas, 0, "lock", {"db": dbid, "key": b"k", "owner": [0, 1]})
    apply_all(replicas, 1, "store", {"db": dbid, "key": b"k", "value": b"queued", "owner": [1, 2]})
    assert value(replicas[0], dbid, b"k") is None
    apply_all(replicas, 0, "unlock", {"db": dbid, "key": b"k", "owner": [0, 1], "value": b"mine"})
    assert [value(r, dbid, b"k") for r in replicas] == [b"queued", b"queued"]
    assert not replicas[0].locks


def test_entry_lists_and_the_purge_of_a_departed_node(replicas: list[Replica]) -> None:
    dbid = attach(replicas)

    def call(origin: int, c: record_calls.RecordCall) -> list[Any]:
        wire = {"db": dbid, "key": b"q", "call": record_calls.to_wire(c)}
        return apply_all(replicas, origin, "call", wire)

    for r in replicas:
        r.effects.clear()
    first = call(1, Append("empty", None, Entry(1, 5, b"a")))
    assert first[0] == first[1] and first[0]["appended"]
    # The appender of a first entry knows from the answer: nobody is told.
    assert not any(isinstance(e, FirstEntry) for r in replicas for e in r.effects)
    assert not call(0, Append("empty", None, Entry(0, 3, b"b")))[0]["appended"]
    call(0, Append("always", None, Entry(0, 3, b"b")))
    with pytest.raises(CtdbError):  # a node may append only for its own clients
        replicas[0].apply(
            0,
            "call",
            {
                "db": dbid,
                "key": b"q",
                "call": record_calls.to_wire(Append("always", None, Entry(1, 9, b"x"))),
            },
        )
    for r in replicas:
        r.effects.clear()
    call(1, Remove((1, 5)))
    # Node 0's client is first now: only node 0 is told.
    assert FirstEntry((0, 3), (dbid, b"q")) in replicas[0].effects
    assert not any(isinstance(e, FirstEntry) for e in replicas[1].effects)
    call(1, Append("always", None, Entry(1, 6, b"c")))
    for r in replicas:
        r.purge_entries(lambda e: e.pnn == 0, writer=1)
    read = call(1, Read())
    assert read[0] == read[1]
    assert read[0]["entries"] == [[1, 6, b"c"]]
    files = [dict(r.databases.db(dbid).local.items()) for r in replicas]
    assert files[0] == files[1]  # byte-identical replicas, writer included


def test_a_call_on_a_record_held_with_fetch_lock_is_busy(replicas: list[Replica]) -> None:
    dbid = attach(replicas)
    apply_all(replicas, 0, "lock", {"db": dbid, "key": b"q", "owner": [0, 1]})
    wire = {"db": dbid, "key": b"q", "call": record_calls.to_wire(Read())}
    for r in replicas:
        with pytest.raises(CtdbError) as busy:
            r.apply(1, "call", wire)
        assert busy.value.code == ErrorCode.BUSY


def test_a_persistent_entry_list_moves_the_sequence_number(replicas: list[Replica]) -> None:
    """In a persistent database every change of a list, a purge included, is a
    transaction: recovery compares copies by sequence number and history."""
    apply_all(replicas, 0, "attach", {"name": "p", "kind": "persistent"})
    dbid = next(iter(replicas[0].databases.dbs))
    db = replicas[0].databases.db(dbid)

    def call(origin: int, c: record_calls.RecordCall) -> list[Any]:
        wire = {"db": dbid, "key": b"q", "call": record_calls.to_wire(c)}
        return apply_all(replicas, origin, "call", wire)

    call(0, Append("always", None, Entry(0, 3, b"a")))
    call(1, Append("always", None, Entry(1, 5, b"b")))
    assert db.seqnum() == 2
    assert call(1, Append("always", None, Entry(1, 5, b"b")))[0]["index"] == 1  # idempotent
    call(1, Read())
    assert db.seqnum() == 2  # neither wrote
    history = db.history()
    for r in replicas:
        r.effects.clear()
        r.purge_entries(lambda e: e.pnn == 0, writer=1)
    assert db.seqnum() == 3 and db.history() != history
    assert FirstEntry((1, 5), (dbid, b"q")) in replicas[1].effects
    assert not any(isinstance(e, FirstEntry) for e in replicas[0].effects)
    assert call(0, Read())[0]["entries"] == [[1, 5, b"b"]]
    files = [dict(r.databases.db(dbid).local.items()) for r in replicas]
    assert files[0] == files[1]


def test_vacuum_proposes_idle_markers_and_every_replica_drops_them(
    replicas: list[Replica],
) -> None:
    dbid = attach(replicas)
    owner = {"owner": [0, 1]}
    for key in (b"a", b"b", b"c"):
        apply_all(replicas, 0, "store", {"db": dbid, "key": key, "value": b"v", **owner})
        apply_all(replicas, 0, "store", {"db": dbid, "key": key, "value": b"", **owner})
    apply_all(replicas, 0, "store", {"db": dbid, "key": b"c", "value": b"back", **owner})
    apply_all(replicas, 0, "lock", {"db": dbid, "key": b"b", "owner": [0, 2]})
    # a: a marker nobody holds; b: locked, not now; c: written again, no marker
    (proposal,) = replicas[0].vacuum_proposals(batch=10)
    assert proposal == (dbid, [[b"a", 2]])
    assert list(replicas[0].markers[dbid]) == [b"a", b"b"]  # in the order noted
    apply_all(replicas, 0, "vacuum", {"db": dbid, "records": proposal[1]})
    for r in replicas:
        assert r.databases.db(dbid).local.get(b"a") is None
        assert r.databases.db(dbid).local.get(b"b") is not None
