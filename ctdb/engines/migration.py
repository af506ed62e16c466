"""Volatile records over a point-to-point transport: CTDB's dmaster migration.

A record is served only by its dmaster; a node that needs it asks the key's
lmaster, which forwards the call to the dmaster, which hands the record over
through the lmaster (the routing and hand-over decisions, pure, are in
`ctdb.engines.handover`; what this node does with the other nodes' messages
is in `ctdb.engines.migration_messages`).

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

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines import persistent_calls
from ctdb.engines.base import resolved
from ctdb.engines.chains import ChainGate, release, try_hold
from ctdb.engines.dmaster_calls import DmasterCalls
from ctdb.engines.merge import from_wire
from ctdb.engines.migration_messages import HandoverMessages, KeyState
from ctdb.engines.record_calls import RecordCall
from ctdb.engines.vacuum import Vacuum
from ctdb.protocol.messages import Call
from ctdb.storage.database import Database, DbKind
from ctdb.storage.ltdb import Record, live_value
from ctdb.storage.placement import lmaster

if TYPE_CHECKING:
    from ctdb.engines.host import Host
    from ctdb.engines.transactions import Transaction, TransactionEngine

log = logging.getLogger("ctdb.engines.migration")

#: Re-send a call after this long without the record arriving (messages of an
#: aborted generation are dropped, so a call can vanish).
RETRY_INTERVAL = 0.5


class MigrationEngine(HandoverMessages):
    def __init__(self, node: Host, transactions: TransactionEngine) -> None:
        self.node = node
        #: persistent databases commit through it (the leader's two-phase commit)
        self.transactions = transactions
        self._keys: dict[tuple[int, bytes], KeyState] = {}
        self._calls_out: dict[tuple[int, bytes], asyncio.Future[None]] = {}
        #: requests of our clients in `acquire`, by record (at most MaxLockWaiters)
        self._acquiring: dict[tuple[int, bytes], int] = {}
        #: locks a freeze took away, by record: their holders get a clear error
        self._voided: dict[tuple[int, bytes], object] = {}
        #: work on records Samba's clients share, under their chain locks
        self.chains = ChainGate(node.stats, lambda: node.in_generation(node.generation))
        self.vacuum = Vacuum(self)
        #: conditional appends and their kin, run at the dmaster
        self.calls = DmasterCalls(self)

    # -- the record operations a client asks for (see ctdb.engines.base) -----------

    def fetch(self, db: Database, key: bytes, session: object) -> Any:
        ok, rec = self.try_local(db, key, session)
        if ok:
            self.node.stats["fetch_local"] += 1
            return live_value(rec)
        return self._fetch_slow(db, key, session)

    def settled(self, db: Database, key: bytes) -> bool:
        """A volatile record is written only where it is acknowledged (its dmaster);
        a persistent one may hold a commit not every node has made yet
        (transactions.TransactionEngine.settled)."""
        return not db.replicated or self.transactions.settled(db, key)

    async def settle(self, db: Database, key: bytes, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.node.wait_serving(deadline)
            if self.settled(db, key):
                return
            remaining = deadline - loop.time()
            try:
                await asyncio.wait_for(self.transactions.wait_settled(db, key), max(remaining, 0))
            except TimeoutError:
                raise CtdbError(
                    ErrorCode.TIMEOUT, f"a commit of {key!r} was not made on every node in time"
                ) from None

    async def _fetch_slow(self, db: Database, key: bytes, session: object) -> bytes | None:
        return live_value(await self.acquire(db, key, session, lock=False))

    def store(self, db: Database, key: bytes, value: bytes, session: object) -> Any:
        if self.node.serving and try_hold(db, key):
            try:
                if self._local(db, key, session)[0]:
                    self.write(db, key, value)
                    return None
            finally:
                release(db, key)
        return self._store_slow(db, key, value, session)

    async def _store_slow(self, db: Database, key: bytes, value: bytes, session: object) -> None:
        while True:
            await self.acquire(db, key, session, lock=False)
            if await self._write_when_free(db, key, value, session):
                return

    def _write_now(self, db: Database, key: bytes, value: bytes) -> bool:
        """Write a record we are dmaster of, unless a client holds its chain (False)."""
        if not try_hold(db, key):
            return False
        try:
            self.write(db, key, value)
        finally:
            release(db, key)
        return True

    async def _write_when_free(
        self, db: Database, key: bytes, value: bytes, session: object
    ) -> bool:
        """Write once no Samba client holds the record's chain, if `acquire`'s
        answer still holds then (False: the record moved or a freeze came)."""
        deadline = asyncio.get_running_loop().time() + self.node.tunable("CallTimeout")
        await self.chains.hold(db, key, deadline)
        try:
            if not self._local(db, key, session)[0]:
                return False
            self.write(db, key, value)
            return True
        finally:
            release(db, key)

    async def lock(self, db: Database, key: bytes, session: object) -> bytes | None:
        return live_value(await self.acquire(db, key, session, lock=True))

    def unlock(self, db: Database, key: bytes, session: object, value: bytes | None) -> Any:
        if self._voided.get((db.id, key)) is session:
            del self._voided[(db.id, key)]
            raise CtdbError(
                ErrorCode.RETRY,
                f"the lock on {key!r} was lost to a recovery: nothing written, take the lock again",
            )
        if not self.locked_by(db, key, session):
            raise CtdbError(ErrorCode.NOT_LOCKED, f"record {key!r} is not locked by this client")
        if not self.node.serving:
            # Our lease is being renewed (a freeze would have voided the
            # lock): write only once we serve again, or fail.
            return self._unlock_when_serving(db, key, session, value)
        if value is not None and not self._write_now(db, key, value):
            return self._unlock_soon(db, key, session, value)
        self.release(db, key, session)
        return None

    async def _unlock_soon(self, db: Database, key: bytes, session: object, value: bytes) -> None:
        """`unlock` once no Samba client holds the record's chain (still locked meanwhile)."""
        deadline = asyncio.get_running_loop().time() + self.node.tunable("CallTimeout")
        await self.chains.hold(db, key, deadline)
        try:
            if self.locked_by(db, key, session) and self.node.serving:
                self.write(db, key, value)
                self.release(db, key, session)
                return
        finally:
            release(db, key)
        await resolved(self.unlock(db, key, session, value))  # voided, or not serving

    async def _unlock_when_serving(
        self, db: Database, key: bytes, session: object, value: bytes | None
    ) -> None:
        node = self.node
        await node.wait_serving(asyncio.get_running_loop().time() + node.tunable("CallTimeout"))
        await resolved(self.unlock(db, key, session, value))

    def call(self, db: Database, key: bytes, call: RecordCall) -> Any:
        if db.replicated:
            return persistent_calls.call(self, db, key, call)
        return self.calls.call(db, key, call)

    async def commit(self, tx: Transaction) -> int:
        return await self.transactions.commit(tx)

    async def attach(self, name: str, kind: DbKind) -> Database:
        return await self.node.attach_everywhere(name, kind)

    async def wipe(self, db: Database) -> None:
        node = self.node
        if db.replicated:
            # A transaction deleting everything: all nodes or none, and the
            # sequence number moves forward so recovery cannot undo the wipe.
            tx = self.transactions.begin(db)
            for key, _ in await self.traverse(db):
                tx.writes[key] = None
            await self.commit(tx)
            return
        await node.wait_serving(asyncio.get_running_loop().time() + node.tunable("CallTimeout"))
        args = {"db_id": db.id, "generation": node.generation}
        await asyncio.gather(*(node.control(p, "wipe", args) for p in node.vnnmap))

    async def traverse(self, db: Database) -> list[tuple[bytes, Record]]:
        """Each member sends the records it is dmaster of (a replicated database: ours)."""
        node = self.node
        await node.wait_serving(asyncio.get_running_loop().time() + node.tunable("CallTimeout"))
        members = [node.pnn] if db.replicated else node.vnnmap
        parts = await asyncio.gather(
            *(node.control(p, "traverse", {"db_id": db.id}) for p in members)
        )
        return sorted(from_wire(rec for part in parts for rec in part).items())

    # -- the machinery behind them -------------------------------------------

    def try_local(self, db: Database, key: bytes, session: object) -> tuple[bool, Record | None]:
        """The fast path: (True, record) if it can be served now without waiting."""
        if not self.node.serving or not try_hold(db, key):
            return False, None  # a Samba client holds it: the slow path waits
        try:
            return self._local(db, key, session)
        finally:
            release(db, key)

    def _local(self, db: Database, key: bytes, session: object) -> tuple[bool, Record | None]:
        """`try_local` under the record's chain lock."""
        rec = db.local.get(key)
        if not self.is_dmaster(db, key, rec):
            return False, None
        ks = self._keys.get((db.id, key))
        if ks is not None and ks.holder is not None and ks.holder is not session:
            return False, None
        return True, rec

    async def acquire(
        self, db: Database, key: bytes, session: object, *, lock: bool
    ) -> Record | None:
        """Make this node dmaster of `key` with no other client holding it.

        Returns the current record; with `lock` the record stays locked for
        `session` until `release`.
        """
        node = self.node
        ref = (db.id, key)
        acquiring = self._acquiring.get(ref, 0)
        limit = int(node.tunable("MaxLockWaiters"))
        if acquiring >= limit:
            raise CtdbError(
                ErrorCode.BUSY, f"record {key!r} is busy: {limit} requests already wait for it"
            )
        self._acquiring[ref] = acquiring + 1
        try:
            return await self._acquire(db, key, session, lock)
        finally:
            if self._acquiring[ref] > 1:
                self._acquiring[ref] -= 1
            else:
                del self._acquiring[ref]

    async def _acquire(
        self, db: Database, key: bytes, session: object, lock: bool
    ) -> Record | None:
        node = self.node
        deadline = asyncio.get_running_loop().time() + node.tunable("CallTimeout")
        while True:
            if not node.serving:
                await node.wait_serving(deadline)
            if try_hold(db, key):  # the usual case: read at once, no await
                try:
                    rec = db.local.get(key)
                finally:
                    release(db, key)
            else:
                rec = await self._read(db, key, deadline)
                if not node.serving:
                    continue  # a freeze came while a client held the chain
            if self.is_dmaster(db, key, rec):
                ks = self._keys.get((db.id, key))
                if ks is None or ks.holder is None or ks.holder is session:
                    if lock:
                        self._state(db, key).holder = session
                        if self._voided.get((db.id, key)) is session:
                            del self._voided[(db.id, key)]
                    return rec
                await self._wait(ks.waiters, deadline, key)
            else:
                await self._fetch_remote(db, key, deadline)

    async def _read(self, db: Database, key: bytes, deadline: float) -> Record | None:
        """The local copy, read once no Samba client holds its chain (None, unread,
        if a recovery began meanwhile: the caller waits for it)."""
        await self.chains.hold(db, key, deadline)
        try:
            return db.local.get(key) if self.node.serving else None
        finally:
            release(db, key)

    def release(self, db: Database, key: bytes, session: object) -> None:
        ks = self._keys[(db.id, key)]
        ks.holder = None
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
                ks.holder = None
                db = self.node.dbs.get(dbid)
                if db is not None:
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
        rec = Record(self.next_rsn(db.local.get(key)), self.node.pnn, value)
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
                ks.holder = None
        self.reset()

    def reset(self) -> None:
        """Recovery: outstanding calls belong to a dead generation; waiters re-check."""
        for fut in self._calls_out.values():
            if not fut.done():
                fut.set_result(None)
        self._calls_out.clear()
        for ks in self._keys.values():
            ks.remote.clear()
            for fut in ks.waiters:
                if not fut.done():
                    fut.set_result(None)
            ks.waiters.clear()
        self._keys = {ref: ks for ref, ks in self._keys.items() if not ks.idle}

    # -- internals --------------------------------------------------------------

    def _state(self, db: Database, key: bytes) -> KeyState:
        ks = self._keys.get((db.id, key))
        if ks is None:
            ks = self._keys[(db.id, key)] = KeyState()
        return ks

    async def _fetch_remote(self, db: Database, key: bytes, deadline: float) -> None:
        """Ask for the record (one call per key at a time) and wait for it."""
        node = self.node
        loop = asyncio.get_running_loop()
        fut = self._calls_out.get((db.id, key))
        if fut is None or fut.done():
            fut = loop.create_future()
            self._calls_out[(db.id, key)] = fut
            node.stats["calls_sent"] += 1
            node.send(lmaster(key, node.vnnmap), Call(db.id, key, node.generation, node.pnn, 0))
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise CtdbError(ErrorCode.TIMEOUT, f"record {key!r} did not arrive in time")
        # Wait on a future of our own: a cancelled client must not cancel the
        # call that other requests for the record wait on too (what
        # asyncio.shield does, at a fraction of the cost of shield + wait_for).
        waiter = loop.create_future()
        fut.add_done_callback(lambda _: _settle(waiter))
        # Unanswered by then, the call is given up: the next turn of
        # `_acquire` sends a fresh one.
        timer = loop.call_later(min(remaining, RETRY_INTERVAL), _settle, fut)
        try:
            await waiter
        finally:
            timer.cancel()

    async def _wait(self, waiters: list[asyncio.Future[None]], deadline: float, key: bytes) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(fut)
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(fut, max(remaining, 0))
        except TimeoutError:
            raise CtdbError(
                ErrorCode.TIMEOUT, f"record {key!r} stayed locked by another client"
            ) from None
        finally:
            if fut in waiters:
                waiters.remove(fut)


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
