"""Volatile records over a point-to-point transport: CTDB's dmaster migration.

A record is served only by its dmaster; a node that needs it asks the key's
lmaster, which forwards the call to the dmaster, which hands the record over
through the lmaster (the routing and hand-over decisions, pure, are in
`ctdb.engines.handover`; what this node does with the other nodes' messages
is in `ctdb.engines.migration_messages`, and how a client's request waits
for a record in `ctdb.engines.acquisition`).

Every hand-over bumps the RSN and the giver keeps its copy, so if a hand-over
is cut short by a recovery the newest copy still exists somewhere and the
recovery merge finds it. RSNs carry the recovery epoch in their high 32 bits
(`next_rsn`): a version written after a recovery outranks every version
from before it, so the merge may take every node's copy, also that of a
node which missed recoveries, without an old copy beating a newer write.

Records can be locked by a client (`fetch_lock`). A call for a locked record
waits at its dmaster until the lock is released; then remote callers go
first, which keeps a record shared between busy nodes moving fairly. At most
MaxLockWaiters requests of a node's clients wait for one record, whether for
its lock or for it to arrive (one more fails with BUSY), and a node's calls
wait at the dmaster once however often it re-sends them, so a record locked
for long holds bounded queues.

Samba's clients share the volatile files and write a record in place while
this node is its dmaster (`ctdb.engines.shared_calls` brings records here for
them): every read-decide-write of a record here runs under its chain lock,
taken without waiting (`ctdb.engines.chains`), so a client's write is never
lost between the two and a client holding a lock never stalls the daemon.

A lock lives in the generation it was granted in. A recovery pulls every
node's records, merges them and pushes the result back; a write made in
between would be overwritten by the push after its client was told it
succeeded. So the freeze that starts a recovery voids every lock, and a
`store_unlock` that comes later fails with a retryable error instead of
writing: the client takes the lock again and redoes its update.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines import flows, migration_flows, persistent_calls
from ctdb.engines.acquisition import Acquisition
from ctdb.engines.chains import ChainGate, release, try_hold
from ctdb.engines.dmaster_calls import DmasterCalls
from ctdb.engines.flows import Flow
from ctdb.engines.handover import is_dmaster
from ctdb.engines.migration_messages import CallOut, KeyState
from ctdb.engines.record_calls import RecordCall
from ctdb.engines.vacuum import Vacuum
from ctdb.engines.waiting import Waiting
from ctdb.storage.database import Database, DbKind
from ctdb.storage.ltdb import Record, live_value

if TYPE_CHECKING:
    from ctdb.engines.host import Host
    from ctdb.engines.transactions import Transaction, TransactionEngine

log = logging.getLogger("ctdb.engines.migration")

T = TypeVar("T")


class MigrationEngine(Acquisition):
    def __init__(self, node: Host, transactions: TransactionEngine) -> None:
        self.node = node
        #: persistent databases commit through it (the leader's two-phase commit)
        self.transactions = transactions
        self._keys: dict[tuple[int, bytes], KeyState] = {}
        #: the calls we sent for records, until they arrive
        self._calls_out: dict[tuple[int, bytes], CallOut] = {}
        #: our clients' requests waiting for a record, until when
        self.waiting = self.answers = Waiting()
        #: requests of our clients in `acquire`, by record (at most MaxLockWaiters)
        self._acquiring: dict[tuple[int, bytes], int] = {}
        #: locks a freeze took away, by record: their holders get a clear error
        self._voided: dict[tuple[int, bytes], object] = {}
        #: work on records Samba's clients share, under their chain locks
        self.chains = ChainGate(
            node.stats, lambda: node.in_generation(node.generation), node.local_failure, node
        )
        self.vacuum = Vacuum(self)
        #: conditional appends and their kin, run at the dmaster
        self.calls = DmasterCalls(self)
        self._carry_out = functools.partial(migration_flows.carry_out, self)

    # -- the record operations a client asks for (see ctdb.engines.base) -----------
    # What waits is a flow of migration_flows.py; a record served here is
    # read or written at once, the usual case, without one.

    def fetch(self, db: Database, key: bytes, session: object) -> Any:
        if self.node.serving and try_hold(db, key):  # else a Samba client holds it: wait
            try:
                mine, rec = self.local(db, key, session)
            finally:
                release(db, key)
            if mine:
                self.node.stats["fetch_local"] += 1
                return live_value(rec)
        return self.run(migration_flows.fetching(db, key, session))

    def settled(self, db: Database, key: bytes) -> bool:
        """A volatile record is written only where it is acknowledged (its dmaster);
        a persistent one may hold a commit not every node has made yet
        (transactions.TransactionEngine.settled)."""
        return not db.replicated or self.transactions.settled(db, key)

    def settle(self, db: Database, key: bytes, deadline: float) -> Awaitable[None]:
        return self.run(migration_flows.settling(self, db, key, deadline))

    def store(self, db: Database, key: bytes, value: bytes, session: object) -> Any:
        if self.node.serving and try_hold(db, key):
            try:
                mine, rec = self.local(db, key, session)
                if mine:
                    self.write_over(db, key, rec, value)
                    return None
            finally:
                release(db, key)
        return self.run(migration_flows.storing(self, db, key, value, session))

    async def lock(self, db: Database, key: bytes, session: object) -> bytes | None:
        return live_value(await self.acquire(db, key, session, lock=True))

    def unlock(self, db: Database, key: bytes, session: object, value: bytes | None) -> Any:
        flow = migration_flows.unlocking(self, db, key, session, value)
        return flows.started(flow, self._carry_out)

    def check_lock(self, db: Database, key: bytes, session: object) -> None:
        """RETRY if a recovery voided `session`'s lock (said once), NOT_LOCKED
        if it holds none."""
        if self._voided.get((db.id, key)) is session:
            del self._voided[(db.id, key)]
            raise CtdbError(
                ErrorCode.RETRY,
                f"the lock on {key!r} was lost to a recovery: nothing written, take the lock again",
            )
        if not self.locked_by(db, key, session):
            raise CtdbError(ErrorCode.NOT_LOCKED, f"record {key!r} is not locked by this client")

    def call(self, db: Database, key: bytes, call: RecordCall) -> Any:
        if db.replicated:
            return persistent_calls.call(self, db, key, call)
        return self.calls.call(db, key, call)

    async def commit(self, tx: Transaction) -> int:
        return await self.transactions.commit(tx)

    async def attach(self, name: str, kind: DbKind) -> Database:
        return await self.node.attach_everywhere(name, kind)

    def wipe(self, db: Database) -> Awaitable[None]:
        return self.run(migration_flows.wiping(self, db))

    def traverse(self, db: Database) -> Awaitable[list[tuple[bytes, Record]]]:
        return self.run(migration_flows.traversing(self, db))

    def run(self, flow: Flow[migration_flows.Effect, T]) -> Awaitable[T]:
        """Carry out a flow of migration_flows.py on the event loop."""
        return flows.drive(flow, self._carry_out)

    def deadline(self) -> float:
        """When a request that starts now times out."""
        return self.node.now() + self.node.tunable("CallTimeout")

    # -- the machinery behind them -------------------------------------------

    def local(self, db: Database, key: bytes, session: object) -> tuple[bool, Record | None]:
        """Whether the record can be served now, and the record (read under its chain lock).

        Not `self.is_dmaster`: this runs on every fetch, one call fewer."""
        rec = db.local.get(key)
        if not is_dmaster(self.node.pnn, key, rec, self.node.vnnmap):
            return False, None
        ks = self._keys.get((db.id, key))
        if ks is not None and ks.holder is not None and ks.holder is not session:
            return False, None
        return True, rec

    def release(self, db: Database, key: bytes, session: object) -> None:
        ks = self._keys[(db.id, key)]
        _unhold(db, key, ks)
        self._wake(db, key, ks)

    def drop_lock(self, db: Database, key: bytes, session: object) -> None:
        """Release `session`'s lock if it still holds it, and forget a voided one."""
        if self.locked_by(db, key, session):
            self.release(db, key, session)
        elif self._voided.get((db.id, key)) is session:
            del self._voided[(db.id, key)]

    def release_all(self, session: object) -> None:
        """A client went away: drop every lock it held (the record stays here)."""
        for ref, holder in list(self._voided.items()):
            if holder is session:
                del self._voided[ref]
        for (dbid, key), ks in list(self._keys.items()):
            if ks.holder is session:
                db = self.node.dbs.get(dbid)
                if db is None:
                    ks.holder = None
                    continue
                _unhold(db, key, ks)
                self._wake(db, key, ks)

    def locked(self, db: Database, key: bytes) -> bool:
        """A client holds the record here (fetch_lock)."""
        ks = self._keys.get((db.id, key))
        return ks is not None and ks.holder is not None

    def locked_by(self, db: Database, key: bytes, session: object) -> bool:
        ks = self._keys.get((db.id, key))
        return ks is not None and ks.holder is session

    def write(self, db: Database, key: bytes, value: bytes) -> Record:
        """Update a record this node is dmaster of (the caller checked that)."""
        return self.write_over(db, key, db.local.get(key), value)

    def write_over(self, db: Database, key: bytes, old: Record | None, value: bytes) -> Record:
        """`write`, given the record as read under the same chain lock."""
        rec = Record(self.next_rsn(old), self.node.pnn, value)
        db.local.put(key, rec)
        self.vacuum.note(db, key, rec)
        return rec

    def idle(self, db: Database, key: bytes) -> bool:
        """Nobody holds, waits for or is fetching the record here."""
        ks = self._keys.get((db.id, key))
        return (ks is None or ks.idle) and (db.id, key) not in self._calls_out

    # -- recovery hooks --------------------------------------------------------

    def freeze(self) -> None:
        """Recovery begins: every lock is void (see the module docstring)."""
        for ref, ks in self._keys.items():
            if ks.holder is not None:
                self._voided[ref] = ks.holder
                db = self.node.dbs.get(ref[0])
                if db is None:
                    ks.holder = None
                else:
                    _unhold(db, ref[1], ks)
        self.reset()

    def reset(self) -> None:
        """Recovery: outstanding calls belong to a dead generation; waiters re-check."""
        calls, self._calls_out = self._calls_out, {}
        for out in calls.values():
            out.end(self.answers)
        for ks in self._keys.values():
            ks.remote.clear()
            ks.reserved = False
            if ks.pinned is not None:
                ks.pinned.cancel()
                ks.pinned = None
            waiters, ks.waiters = ks.waiters, {}
            for waiter in waiters:
                self.answers.answer(waiter, None)
        self._keys = {ref: ks for ref, ks in self._keys.items() if not ks.idle}


def _unhold(db: Database, key: bytes, ks: KeyState) -> None:
    """The record's lock ends, and the chain it kept with it (`KeyState.chain`)."""
    ks.holder = None
    if ks.chain:
        ks.chain = False
        release(db, key)
