"""What every member holds and changes only by applying the stream (sans-IO).

The records, the lock queues, the entry lists and the deletion markers of
every database are a function of the stream position: each member applies
the same operations in the same order and gets the same state. `Replica`
is that function. It knows nothing of clients, futures, timers or the
transport: `apply` takes one delivered operation and returns its result,
and what this node must do about it outside the replicated state is left
in `effects` (a local client got a lock, a local client's entry came
first, a key was written), for the engine to act on. So the rules of the
replicated state are tested and read in one place, without an event loop.

The databases themselves (`ctdb.storage`) are the state's storage; writes
go straight to them, in stream order.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines import record_calls
from ctdb.engines.ordered.locks import Head, LockQueue, Owner
from ctdb.engines.record_calls import Append
from ctdb.engines.transactions import next_version
from ctdb.storage.database import HISTORY_KEY, SEQNUM_KEY, Database, DbKind
from ctdb.storage.entries import Entry
from ctdb.storage.ltdb import NO_DMASTER, Record, live_value

#: A record: (database id, key).
Ref = tuple[int, bytes]


@dataclass(frozen=True, slots=True)
class Granted:
    """`owner`, a client of this node, now holds the record's lock; `value` is the record's."""

    owner: Owner
    ref: Ref
    value: bytes | None
    #: the lock request granted (its id, as the owner's node numbered it)
    req: int | None = None


@dataclass(frozen=True, slots=True)
class FirstEntry:
    """`owner`, a client of this node, now holds the first entry of the record's list."""

    owner: Owner
    ref: Ref


@dataclass(frozen=True, slots=True)
class Written:
    """The record was written (its write is stable only once every member applied it)."""

    ref: Ref


Effect = Granted | FirstEntry | Written


class Databases(Protocol):
    """The node's databases, as the replica reads and attaches them."""

    @property
    def dbs(self) -> dict[int, Database]: ...

    def db(self, dbid: int) -> Database: ...

    def attach(self, name: str, kind: DbKind) -> Database: ...


class Replica:
    #: the stream's operations this applies (the engine handles the others)
    OPS = frozenset(
        ["store", "lock", "unlock", "withdraw", "release", "call"]
        + ["commit", "attach", "wipe", "vacuum"]
    )

    def __init__(self, pnn: int, databases: Databases, stats: Counter[str]) -> None:
        self.pnn = pnn
        self.databases = databases
        self.stats = stats
        #: lock queues, by record; a record nobody holds or waits for has none
        self.locks: dict[Ref, LockQueue] = {}
        #: db id -> keys that hold a deletion marker (vacuuming candidates), in
        #: the order noted (not a set: a set of bytes iterates in an order
        #: that changes with each process's hash seed; replicas must propose
        #: alike, and a simulated schedule must replay alike in any process)
        self.markers: dict[int, dict[bytes, None]] = {}
        #: what this node must act on, in the order it arose (see the module docstring)
        self.effects: list[Effect] = []
        #: op -> its `_apply_<op>`, looked up once: every delivery needs one
        self.appliers: dict[str, Callable[[int, dict[str, Any]], Any]] = {
            op: getattr(self, f"_apply_{op}") for op in self.OPS
        }

    def apply(self, origin: int, op: str, args: dict[str, Any]) -> Any:
        """Apply one operation of the stream; its result for the origin's client.

        Raises CtdbError for an operation every member refuses alike (no
        state changed); any other exception means this node's copy may now
        differ (a failed write), and effects up to it are in `effects`.
        """
        return self.appliers[op](origin, args)

    # -- writes ------------------------------------------------------------------------

    def _db(self, dbid: int) -> Database:
        db = self.databases.dbs.get(dbid)
        # (an unknown id: `db` refuses it, as every member does)
        return db if db is not None else self.databases.db(int(dbid))

    def write(self, db: Database, key: bytes, value: bytes, origin: int) -> Record:
        old = db.local.get(key)
        # A persistent record names its writer; a volatile one names nobody,
        # so that Samba's clients on this node never write it in place.
        dmaster = origin if db.replicated else NO_DMASTER
        rec = Record((old.rsn if old else 0) + 1, dmaster, value)
        db.local.put(key, rec)
        self.effects.append(Written((db.id, key)))
        if not value:
            self.markers.setdefault(db.id, {})[key] = None
        return rec

    def _apply_store(self, origin: int, args: dict[str, Any]) -> None:
        db, key = self._db(args["db"]), bytes(args["key"])
        q = self.locks.get((db.id, key))
        owner: Owner = (int(args["owner"][0]), int(args["owner"][1]))
        if q is not None and q.holder is not None and q.holder != owner:
            # Someone holds the record: the write takes its turn in the queue.
            q.queue(owner, bytes(args["value"]), args, key)
            return
        self.write(db, key, bytes(args["value"]), origin)

    def _apply_commit(self, origin: int, args: dict[str, Any]) -> int:
        return self.commit(self._db(args["db"]), args["reads"], args["writes"], origin)[0]

    def commit(
        self, db: Database, reads: list[Any], writes: list[Any], origin: int
    ) -> tuple[int, dict[bytes, Record]]:
        """A transaction on a replicated database: the new sequence number and records."""
        seqnum, records = next_version(db, reads, writes, origin)
        db.local.write_batch(Database.commit_puts(records))
        for key in records:
            self.effects.append(Written((db.id, key)))
        return seqnum, records

    def _apply_attach(self, origin: int, args: dict[str, Any]) -> None:
        self.databases.attach(str(args["name"]), DbKind.parse(str(args["kind"])))

    def _apply_wipe(self, origin: int, args: dict[str, Any]) -> None:
        db = self._db(args["db"])
        keep: dict[bytes, Record | None] = {}
        if db.replicated:  # the sequence number and the history only move forward
            seqnum = db.seqnum() + 1
            keep[SEQNUM_KEY] = Database.seqnum_record(seqnum, origin)
            keep[HISTORY_KEY] = db.history_record(seqnum, origin, [(b"", b"wipe")])
        db.local.write_batch(keep, replace_all=True)
        self.markers.pop(db.id, None)

    def vacuum_proposals(self, batch: int) -> list[tuple[int, list[list[Any]]]]:
        """Deletion markers to propose for removal: up to `batch` per database,
        as (db id, [[key, rsn], ...]), leaving out a record someone holds or
        waits for; candidates that are no markers any more are forgotten."""
        proposals = []
        for dbid, keys in list(self.markers.items()):
            db = self.databases.dbs.get(dbid)
            if db is None:
                del self.markers[dbid]
                continue
            records = []
            for key in list(itertools.islice(keys, batch)):
                rec = db.local.get(key)
                if rec is None or not rec.deleted:
                    keys.pop(key, None)
                elif (dbid, key) not in self.locks:
                    records.append([key, rec.rsn])
            if records:
                proposals.append((dbid, records))
        return proposals

    def _apply_vacuum(self, origin: int, args: dict[str, Any]) -> None:
        db = self._db(args["db"])
        keys = self.markers.get(db.id, {})
        for raw_key, rsn in args["records"]:
            key = bytes(raw_key)
            rec = db.local.get(key)
            idle = (db.id, key) not in self.locks
            if rec is not None and rec.deleted and rec.rsn == rsn and idle:
                db.local.remove(key)
                self.stats["vacuumed"] += 1
            keys.pop(key, None)

    # -- record locks: FIFO queues, the head holds ---------------------------------------

    def _apply_lock(self, origin: int, args: dict[str, Any]) -> None:
        db, key = self._db(args["db"]), bytes(args["key"])
        owner: Owner = (int(args["owner"][0]), int(args["owner"][1]))
        q = self.locks.get((db.id, key))
        if q is None:
            q = self.locks[db.id, key] = LockQueue()
        before = q.head
        q.queue(owner, None, args, key)
        self.advance(db, key, q, before)

    def _apply_unlock(self, origin: int, args: dict[str, Any]) -> None:
        db, key = self._db(args["db"]), bytes(args["key"])
        owner = (int(args["owner"][0]), int(args["owner"][1]))
        q = self.locks.get((db.id, key))
        if q is None or q.holder != owner:
            raise CtdbError(ErrorCode.NOT_LOCKED, f"record {key!r} is not locked by this client")
        if args.get("value") is not None:
            self.write(db, key, bytes(args["value"]), origin)
        q.pop()
        self.advance(db, key, q)

    def _apply_withdraw(self, origin: int, args: dict[str, Any]) -> None:
        """A lock request gave up (timed out): drop it from that record's queue."""
        db, key = self._db(args["db"]), bytes(args["key"])
        owner = (int(args["owner"][0]), int(args["owner"][1]))
        q = self.locks.get((db.id, key))
        if q is not None:
            before = q.head
            req = args.get("req")
            q.withdraw(owner, None if req is None else int(req))
            self.advance(db, key, q, before)

    def _apply_release(self, origin: int, args: dict[str, Any]) -> None:
        owner = (int(args["owner"][0]), int(args["owner"][1]))
        self.purge_locks(lambda o: o == owner)

    def advance(self, db: Database, key: bytes, q: LockQueue, before: Head | None = None) -> None:
        """Apply queued writes at the head, then tell a new local holder it has the lock.

        `before`: the request that held it before the change; one that stays
        is not told again (and the record is not read: `stream_gate` relies
        on it).
        """
        while (store := q.head_store()) is not None:
            # Written before it leaves the queue: if the write fails, the
            # store is still queued when this node's copy is next used.
            owner, value = store
            self.write(db, key, value, owner[0])
            q.pop()
        head = q.head
        if head is None:
            self.locks.pop((db.id, key), None)
            return
        holder, req = head
        if holder[0] == self.pnn and head != before:
            found = live_value(db.local.get(key))
            self.effects.append(Granted(holder, (db.id, key), found, req))

    def purge_locks(self, gone: Callable[[Owner], bool]) -> None:
        """Drop the lock requests of owners `gone`; their queued writes stay.

        A queue whose head is a write is advanced too: only a write that
        failed half-way through an earlier advance leaves one there.
        """
        for (dbid, key), q in list(self.locks.items()):
            before = q.head
            if q.purge(gone) or q.holder is None:
                self.advance(self._db(dbid), key, q, before)

    # -- entry lists (conditional append) ------------------------------------------------

    def _apply_call(self, origin: int, args: dict[str, Any]) -> dict[str, Any]:
        db, key = self._db(args["db"]), bytes(args["key"])
        call = record_calls.from_wire(args["call"])
        if isinstance(call, Append) and call.entry.pnn != origin:
            raise CtdbError(ErrorCode.INVALID, f"node {origin} appends for another node's client")
        q = self.locks.get((db.id, key))
        if q is not None and q.holder is not None:
            raise CtdbError(ErrorCode.BUSY, f"record {key!r} is locked with fetch_lock")
        before = db.local.get(key)
        outcome = record_calls.run(call, before)
        if outcome.value is None:
            return outcome.answer
        return outcome.with_rsn(self._write_entries(db, key, before, outcome.value, origin).rsn)

    def _write_entries(
        self, db: Database, key: bytes, before: Record | None, value: bytes, origin: int
    ) -> Record:
        """Write a changed entry list; a new first entry's owner, if one of ours, is told.

        In a replicated database the write is a one-key transaction, so that
        the sequence number and the history, which recovery compares, move.
        """
        if db.replicated:
            rec = self.commit(db, [], [[key, value]], origin)[1][key]
        else:
            rec = self.write(db, key, value, origin)
        self._told(db, key, before, value)
        return rec

    def _told(self, db: Database, key: bytes, before: Record | None, value: bytes) -> None:
        head = record_calls.new_head(before, value)
        if head is not None and head[0] == self.pnn:
            self.effects.append(FirstEntry(head, (db.id, key)))

    def purge_entries(self, gone: Callable[[Entry], bool], writer: int) -> None:
        """Remove the entries of owners `gone` from every record of every database.

        Every member does it at the same position in the stream (a view
        change) with the same `gone`, and writes as the same `writer`, so
        the replicas stay identical; in a replicated database all of it is
        one transaction.
        """
        for db in list(self.databases.dbs.values()):
            changed = record_calls.purged(db.local.items(), gone)
            if db.replicated and changed:
                self.commit(db, [], [[key, value] for key, (_, value) in changed.items()], writer)
                for key, (before, value) in changed.items():
                    self._told(db, key, before, value)
                continue
            for key, (before, value) in changed.items():
                self._write_entries(db, key, before, value, writer)
