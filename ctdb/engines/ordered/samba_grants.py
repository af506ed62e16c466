"""Records lent to Samba's clients of this node over vs, for writes in place.

Samba's clients (smbd, the `ctdb` tool, CTDB's test programs) lock a
record's chain in this node's volatile file and work on it in place when
its header names this node as dmaster; otherwise they ask with REQ_CALL
(`ctdb.server.ctdb_calls`) and look again. Over vs every member holds every
record and every write must enter the ordered stream, so the file names no
dmaster (`ltdb.NO_DMASTER`) until a record is lent:

1. Lend, only while this node serves (in sync, in a quorate view, not
   stopped or banned): REQ_CALL
   takes the record's replicated lock (`locks.LockQueue`) for this node's
   Samba side, one owner per node (`session`); once the stream grants it,
   the header of our copy names this node, and the call is answered.
   Samba's clients then write in place, under their chain lock.
2. Take back, when the record is wanted elsewhere: another request queued
   behind our lock (`after_apply` sees it at its position in the stream),
   once a client wrote it or HOLD_MIN has passed, so that the client that
   asked gets to use the record first. Under the chain lock (a client
   working on it finishes first) our file goes back to the stream's copy,
   naming nobody, and what the clients left becomes one ordered unlock that
   every member applies before the next holder reads. The unlock is sent
   again until it is applied or the lock is no longer ours: a lock we hold
   and never give back would stay locked for good. (Taking back and
   revoking are in `samba_returns`.)
   A node that stops serving while it still follows the stream (stopped,
   banned, a round for a joiner under way) takes back everything at once,
   as a stopped ctdbd is frozen: the record is served elsewhere meanwhile.
3. Revoke: when the stream takes the lock from us without our unlock (the
   others purged it, a state transfer replaced our copy), or this node no
   longer follows the stream (a minority view, a resync, a stop of the
   daemon), our file goes back to the stream's copy at once, naming
   nobody, so our clients stop writing in place and ask; what they wrote
   meanwhile is lost. A lock still ours in the queues is released once we
   serve again (`LocalClients.release_orphans`). A record whose chain a
   client holds goes back once it lets go, before any client that queued
   on the chain after it (a helper process waits in the lock's queue for
   us: `chains.wait_in_queue`), and a node that resyncs stays in the group
   until then (`StreamMembership._taken_back`), so that nothing it did
   not apply is acknowledged while its clients still work in place.

Our file thus always holds the stream's copy of every record except the
ones lent here right now, and a state transfer this node sends carries
those as lent (`samba_views.published_items`): no replica takes up a write
the others may never see.

Our own clients see what Samba's clients wrote: a read or lock of a record
someone else holds goes through the lock queue (`reads.Reads`),
which takes the record back first, and a traverse asks every node for what
it has lent or is giving back (`samba_views`). A record
stays lent until it is wanted elsewhere, as a record stays with its dmaster
in CTDB; meanwhile a record call of ours on it (conditional append) fails
BUSY, as on any locked record. The stream itself touches a shared file only
under the chains it needs (`stream_gate`), so a client holding a chain
never blocks the daemon.

Nor does anything stay lent past this node's lease (`Returns._watch_lease`):
the lease ends before the others can go on without us, and a node cut off
may hear of its minority view much later (a cut between two nodes left one
in its old view a second after the others had moved on: chaos vs seed
1320), so at the lease's end, unless it was renewed, everything lent goes
back, and Samba's clients ask, and wait.

What is not covered, as with CTDB's own volatile databases: a value written
in place and not yet taken back is only in this node's file, so it is lost
if this node fails or leaves the group first. A daemon that hangs (SIGSTOP)
cannot take anything back: its Samba clients go on with what is lent while
the others move on, until it runs again and its lease's end is past. A
client that holds a lent record's chain while the others go on without us
works on our copy until it lets go (its reads began before they could).
A wipe ordered between a taking back and its unlock does not wipe what the
unlock carries: it lands after the wipe, as a write ordered after it would.
A shared file that fails under lending (a write's OSError, a chain
call's CtdbError) resyncs the node: its copies are replaced, and a lock
still ours in the queues goes back once it serves again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.effects import Chain, Serving
from ctdb.engines.flows import Flow
from ctdb.engines.ordered.samba_returns import LendingEngine, Lent, Ref, Returns, unnamed
from ctdb.engines.ordered.waits import Effect, Joined
from ctdb.storage.database import Database
from ctdb.storage.ltdb import Record


class SambaSide:
    """This node's Samba clients, as one client of the lock queues (a session)."""


class SambaGrants(Returns):
    def __init__(self, engine: LendingEngine) -> None:
        # (what each holds: see `Returns`)
        self.engine = engine
        self.session = SambaSide()
        self.lent = {}
        self.returning = {}
        self.restoring = {}
        self._busy = {}
        self.spawn = lambda work: asyncio.ensure_future(engine.run(work))
        self.lease_watch = None

    # -- lending (REQ_CALL) ----------------------------------------------------------

    def migrate_here(self, db: Database, key: bytes) -> Awaitable[Record]:
        deadline = self.engine.node.now() + self.engine.node.tunable("CallTimeout")
        return self.engine.run(self.migrating_here(db, key, deadline))

    def migrating_here(self, db: Database, key: bytes, deadline: float) -> Flow[Effect, Record]:
        """The record, with this node named dmaster in its header, once lent here."""
        ref = (db.id, key)
        while True:
            while ref not in self.lent:
                job = self._busy.get(ref)
                if job is None or job.done():  # (a done job leaves `_busy` a moment later)
                    job = self._start(ref, self.lending(db, key, deadline))
                # Shared by the calls for the record. (A taking back may wait
                # for quorum past our deadline.)
                yield Joined(job, deadline, f"record {key!r} not lent in time")
            rec = yield from self.handing(db, key, deadline)
            if rec is not None:
                return rec

    def handing(self, db: Database, key: bytes, deadline: float) -> Flow[Effect, Record | None]:
        """A record lent here, as its header names us, read under its chain;
        None if it was taken back meanwhile (ask again)."""
        ref = (db.id, key)
        # Our clients may be working on it already, and one may hold its
        # chain while it waits for us: never wait for it on the loop.
        if not (yield from self._chain(db, key, deadline)):
            raise CtdbError(ErrorCode.TIMEOUT, f"a client held the record {key!r} too long")
        try:
            lent = self.lent.get(ref)
            if lent is None:
                return None
            rec = db.local.get(key)
            if rec is None or rec.dmaster != self.engine.node.pnn:
                # The stream rewrote it under our lock (a wipe): lend that.
                lent.record = None if rec is None else unnamed(rec)
                rec = self._name(db, key, lent)
            return rec
        except Exception as exc:
            raise self._lending_failed(ref, exc) from None
        finally:
            db.local.unlock_chain(key)

    def lending(self, db: Database, key: bytes, deadline: float) -> Flow[Effect, None]:
        """Take the record's lock for our Samba side and name us in our copy's header."""
        engine = self.engine
        engine.node.stats["samba_lends"] += 1
        if not engine.node.serving:
            yield Serving(deadline)
        yield from engine.locking(db, key, self.session)
        ref = (db.id, key)
        if not (yield from self._chain(db, key, deadline)):
            yield from self.giving_back(db, key, None)
            raise CtdbError(ErrorCode.TIMEOUT, f"a client held the record {key!r} too long")
        lend = self.may_lend and self._ours(ref)
        try:
            if lend:
                rec = db.local.get(key)
                lent = Lent(None if rec is None else unnamed(rec), self.engine.node.now())
                self._name(db, key, lent)
                self.lent[ref] = lent
        except Exception as exc:
            raise self._lending_failed(ref, exc) from None
        finally:
            db.local.unlock_chain(key)
        if not lend:
            # This node stopped serving while we waited: what follows the
            # stream gives the lock back now; what does not releases it
            # once it serves again (LocalClients.release_orphans).
            if self.in_stream:
                yield from self.giving_back(db, key, None)
            else:
                self._disown(ref)
            raise CtdbError(ErrorCode.RETRY, f"node {engine.node.pnn} stopped serving")

    def _chain(self, db: Database, key: bytes, deadline: float) -> Flow[Effect, bool]:
        """The record's chain lock once no client holds it (False at
        `deadline`); a file that fails under it fails the lending."""
        try:
            held: bool = yield Chain(db, key, deadline)
        except Exception as exc:
            raise self._lending_failed((db.id, key), exc) from None
        return held

    def _lending_failed(self, ref: Ref, exc: Exception) -> CtdbError:
        """Our shared file failed while lending `ref`: the lock (granted, or
        lent already) goes back once we serve again, with copies a resync
        replaced. Returns the error for the call."""
        self.lent.pop(ref, None)
        self._disown(ref)
        return CtdbError(
            ErrorCode.IO, self._file_failed(f"lending {ref[1]!r} to Samba's clients", exc)
        )

    def _name(self, db: Database, key: bytes, lent: Lent) -> Record:
        """Under the record's chain: our file names us its dmaster."""
        rsn = lent.record.rsn if lent.record is not None else 0
        rec = Record(rsn, self.engine.node.pnn, lent.value)
        db.local.put(key, rec)
        return rec

    def stop(self) -> None:
        """The daemon stops: nothing stays lent, nothing is sent."""
        if self.lease_watch is not None:
            self.lease_watch.cancel()
            self.lease_watch = None
        self.revoke_all()
        for task in list(self._busy.values()):
            task.cancel()
