"""Records lent to Samba's clients of this node over vs, for writes in place.

Samba's clients (smbd, the `ctdb` tool, CTDB's test programs) lock a
record's chain in this node's volatile file and work on it in place when
its header names this node as dmaster; otherwise they ask with REQ_CALL
(`ctdb.server.ctdb_calls`) and look again. Over vs every member holds every
record and every write must enter the ordered stream, so the file names no
dmaster (`ltdb.NO_DMASTER`) until a record is lent:

1. Lend: REQ_CALL takes the record's replicated lock (`locks.LockQueue`)
   for this node's Samba side, one owner per node (`session`); once the
   stream grants it, the header of our copy names this node, and the call
   is answered. Samba's clients then write in place, under their chain lock.
2. Take back, when the record is wanted elsewhere: another request queued
   behind our lock (`after_apply` sees it at its position in the stream),
   once a client wrote it or HOLD_MIN has passed, so that the client that
   asked gets to use the record first. Under the chain lock (a client working on it finishes
   first), the value our clients left becomes one ordered unlock that
   every member applies before the next holder reads, and the header names
   nobody again.

3. Revoke: when the stream takes the lock from us without our unlock (we
   left the view and the others purged it, or a state transfer replaced
   our copy), the header names nobody again at once, so our clients stop
   writing in place and ask.

Our own clients see what Samba's clients wrote: a read or lock of a record
someone else holds goes through the lock queue (`OrderedEngine._fetch_ordered`),
which takes the record back first, and a traverse asks every node for what
it has lent (`traverse`, the `lent` control). A record stays lent until it
is wanted elsewhere, as a record stays with its dmaster in CTDB; meanwhile a
record call of ours on it (conditional append) fails BUSY, as on any locked
record. The stream itself touches a shared file only under the chains it
needs (`stream_gate`), so a client holding a chain never blocks the daemon.

What is not covered, as with CTDB's own volatile databases: a value written
in place and not yet taken back is only in this node's file, so it is lost
if this node fails or leaves the group first (its lock is purged, the
others keep the value they have). A state transfer this node sends meanwhile
carries the value as lent, not the one in the file (`published_items`), so
that no replica takes up a write the others may never see.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.chains import poll
from ctdb.engines.host import Host
from ctdb.engines.merge import from_wire
from ctdb.engines.ordered.local_clients import LocalClients
from ctdb.engines.ordered.replica import Replica
from ctdb.engines.ordered.stream_gate import read_record
from ctdb.storage.database import Database
from ctdb.storage.ltdb import NO_DMASTER, Record

log = logging.getLogger("ctdb.engines.ordered")

#: A record lent here stays at least this long (seconds) before it is taken
#: back for another request, unless a client has written it meanwhile: the
#: client that asked for it must get to use it, or two nodes' clients could
#: take it from each other for ever.
HOLD_MIN = 0.005

Ref = tuple[int, bytes]


@dataclass
class Lent:
    """A record lent to this node's Samba clients: its copy as the stream left it."""

    rsn: int
    value: bytes
    since: float


class LendingEngine(Protocol):
    """What lending needs of the ordered engine."""

    node: Host
    replica: Replica
    clients: LocalClients

    @property
    def members(self) -> list[int]: ...

    async def lock(self, db: Database, key: bytes, session: object) -> bytes | None: ...

    async def unlock(
        self, db: Database, key: bytes, session: object, value: bytes | None
    ) -> None: ...


class SambaSide:
    """This node's Samba clients, as one client of the lock queues (a session)."""


class SambaGrants:
    def __init__(self, engine: LendingEngine) -> None:
        self.engine = engine
        #: this node's Samba clients, as one owner in the lock queues
        self.session = SambaSide()
        #: records lent here, whose header names this node
        self.lent: dict[Ref, Lent] = {}
        #: lending or taking back in progress, by record (one at a time each)
        self._busy: dict[Ref, asyncio.Task[None]] = {}

    # -- lending (REQ_CALL) ----------------------------------------------------------

    async def migrate_here(self, db: Database, key: bytes) -> Record:
        """The record, with this node named dmaster in its header, once lent here."""
        ref = (db.id, key)
        deadline = asyncio.get_running_loop().time() + self.engine.node.tunable("CallTimeout")
        while ref not in self.lent:
            task = self._busy.get(ref)
            if task is None or task.done():  # (a done task leaves `_busy` a moment later)
                task = self._start(ref, self._lend(db, key, deadline))
            # Shared by the calls for the record: one that leaves cancels nothing.
            await asyncio.shield(task)
        # Our clients may be working on it already, and one may hold its
        # chain while it waits for us: read it without waiting on the loop.
        rec = await read_record(db, key, deadline)
        return rec or Record(0, self.engine.node.pnn, b"")

    def _start(self, ref: Ref, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._busy[ref] = task
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        for ref, busy in list(self._busy.items()):
            if busy is task:
                del self._busy[ref]
        if not task.cancelled() and task.exception() is not None:
            # The callers of a lending saw it (shield); a taking back has none.
            log.warning("lending to Samba's clients: %s", task.exception())
        # A request may have queued while this ran (before the record counted
        # as lent): nothing else would look again.
        self.after_apply()

    async def _lend(self, db: Database, key: bytes, deadline: float) -> None:
        engine = self.engine
        engine.node.stats["samba_lends"] += 1
        await engine.lock(db, key, self.session)
        if not await poll(lambda: db.local.try_lock_chain(key), deadline):
            await self._give_back(db, key, None)
            raise CtdbError(ErrorCode.TIMEOUT, f"a client held the record {key!r} too long")
        try:
            rec = db.local.get(key) or Record(0, NO_DMASTER, b"")
            db.local.put(key, Record(rec.rsn, engine.node.pnn, rec.value))
        finally:
            db.local.unlock_chain(key)
        self.lent[(db.id, key)] = Lent(rec.rsn, rec.value, asyncio.get_running_loop().time())

    # -- taking back ------------------------------------------------------------------

    def after_apply(self) -> None:
        """After each operation the stream delivered: take back what is wanted
        elsewhere, and forget what the stream no longer lends us."""
        if not self.lent:
            return
        engine = self.engine
        owner = engine.clients.owner(self.session)
        for ref in list(self.lent):
            q = engine.replica.locks.get(ref)
            if q is None or q.holder != owner:
                # Purged (we left the view) or replaced by a state transfer:
                # our clients must stop writing in place.
                del self.lent[ref]
                db = engine.node.dbs.get(ref[0])
                if db is None or ref in self._busy:
                    continue  # (a taking back in progress sees it)
                # At once if we can (always at a view change: the gate
                # holds every shared file whole then).
                if db.local.try_lock_chain(ref[1]):
                    try:
                        self._unname(db, ref[1])
                    finally:
                        db.local.unlock_chain(ref[1])
                else:
                    self._start(ref, self._revoke(db, ref[1]))
            elif len(q.entries) > 1 and ref not in self._busy:
                db = engine.node.dbs.get(ref[0])
                if db is not None:
                    self._start(ref, self._take_back(db, ref[1]))

    async def _take_back(self, db: Database, key: bytes) -> None:
        loop = asyncio.get_running_loop()
        lent = self.lent.get((db.id, key))
        if lent is None:
            return
        waited = False
        while True:
            # Never given up: the record is the clients' until they let go of it.
            if not db.local.try_lock_chain(key):
                if not waited:
                    self.engine.node.stats["chain_waits"] += 1
                    waited = True
                await poll(lambda: db.local.try_lock_chain(key), float("inf"))
            try:
                if self.lent.get((db.id, key)) is not lent:
                    self._unname(db, key)  # the stream took it away meanwhile
                    return
                rec = db.local.get(key)
                value = rec.value if rec is not None else b""
                early = lent.since + HOLD_MIN - loop.time()
                if early <= 0 or value != lent.value:  # (or a client used it already)
                    db.local.put(key, Record(lent.rsn, NO_DMASTER, value))
                    del self.lent[(db.id, key)]
                    break
            finally:
                db.local.unlock_chain(key)
            await asyncio.sleep(early)
        await self._give_back(db, key, value if value != lent.value else None)

    async def _revoke(self, db: Database, key: bytes) -> None:
        """The stream took the record from us: our file stops naming us its
        dmaster (what our clients wrote since is lost, as a volatile record
        is with a node that leaves the cluster)."""
        await poll(lambda: db.local.try_lock_chain(key), float("inf"))
        try:
            if (db.id, key) not in self.lent:  # (or lent again meanwhile)
                self._unname(db, key)
        finally:
            db.local.unlock_chain(key)

    def _unname(self, db: Database, key: bytes) -> None:
        """Under the record's chain: our file stops naming us its dmaster."""
        rec = db.local.get(key)
        if rec is not None and rec.dmaster == self.engine.node.pnn:
            db.local.put(key, Record(rec.rsn, NO_DMASTER, rec.value))

    async def _give_back(self, db: Database, key: bytes, value: bytes | None) -> None:
        try:
            await self.engine.unlock(db, key, self.session, value)
        except CtdbError as exc:
            # Resyncing or purged: the lock went with our copy.
            log.warning("giving back %r lent to Samba's clients failed: %s", key, exc.message)

    # -- what a traverse sees ------------------------------------------------------------

    async def traverse(self, db: Database, deadline: float) -> list[tuple[bytes, Record]]:
        """The live records of shared `db`: our copy, and what Samba's clients
        wrote in place on the records lent to other nodes, which our copy
        does not have yet."""
        node = self.engine.node
        others = [p for p in self.engine.members if p != node.pnn]
        parts = await asyncio.gather(*(node.control(p, "lent", {"db_id": db.id}) for p in others))
        if not await poll(db.local.try_lock_all, deadline):
            raise CtdbError(ErrorCode.TIMEOUT, f"Samba's clients kept records of {db.name} locked")
        try:
            records = dict(db.local.items())
        finally:
            db.local.unlock_all()
        for part in parts:
            records.update(from_wire(part))
        return sorted((key, rec) for key, rec in records.items() if not rec.deleted)

    async def lent_records(self, db: Database, deadline: float) -> list[tuple[bytes, Record]]:
        """The records of `db` lent here, as our clients left them (deleted ones too)."""
        found = []
        for dbid, key in list(self.lent):
            if dbid != db.id:
                continue
            rec = await read_record(db, key, deadline)
            if rec is not None:
                found.append((key, rec))
        return found

    # -- what a state transfer from here carries --------------------------------------

    def published_items(self, db: Database) -> Iterator[tuple[bytes, Record]]:
        """Our copy of `db` as the stream made it: a record lent here as it was lent."""
        for key, rec in db.local.items():
            lent = self.lent.get((db.id, key))
            yield key, rec if lent is None else Record(lent.rsn, NO_DMASTER, lent.value)
