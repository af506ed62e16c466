"""What goes back from records lent to Samba's clients (`samba_grants`).

The half of `SambaGrants` that gives records back to the stream: taking
back a record wanted elsewhere (under its chain lock, our file back at the
stream's copy, what the clients wrote as one ordered unlock, sent again
until applied) and revoking one the stream took away or that this node may
no longer lend (our file back at the stream's copy at once, or once the
client holding its chain lets go). Its state is the `SambaGrants` object's;
the design is in `samba_grants`' docstring.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.chains import poll
from ctdb.engines.effects import Chain, Pause
from ctdb.engines.flows import Flow
from ctdb.engines.host import Cancellable
from ctdb.engines.ordered.local_clients import LockingEngine
from ctdb.engines.ordered.waits import Effect, Job
from ctdb.storage.database import Database
from ctdb.storage.ltdb import NO_DMASTER, Record

log = logging.getLogger("ctdb.engines.ordered")


#: A record lent here stays at least this long (seconds) before it is taken
#: back for another request, unless a client has written it meanwhile: the
#: client that asked for it must get to use it, or two nodes' clients could
#: take it from each other for ever.
HOLD_MIN = 0.005
#: Pause (seconds) before an unlock that failed (no quorum, a resync under
#: way) is sent again.
GIVE_BACK_RETRY = 0.05

Ref = tuple[int, bytes]


@dataclass
class Lent:
    """A record lent to this node's Samba clients."""

    #: our copy as the stream left it (None: it had none)
    record: Record | None
    since: float

    @property
    def value(self) -> bytes:
        return self.record.value if self.record is not None else b""


class LendingEngine(LockingEngine, Protocol):
    """What lending needs of the ordered engine."""

    synced: bool

    @property
    def members(self) -> list[int]: ...

    @property
    def quorate(self) -> bool: ...

    def resync(self, why: str, *, damaged: bool = True) -> None: ...


class Returns:
    """Taking back and revoking; the state is `SambaGrants`'."""

    engine: LendingEngine
    #: this node's Samba clients, as one owner in the lock queues
    session: object
    #: records lent here, whose header names this node
    lent: dict[Ref, Lent]
    #: records taken back whose unlock is not applied yet: what it carries
    returning: dict[Ref, Record]
    #: records revoked whose file may still name us (its chain was busy):
    #: as the stream left them, for a state transfer (`samba_views`)
    restoring: dict[Ref, Lent]
    #: lending, taking back or revoking in progress, by record (one at a time each)
    _busy: dict[Ref, Job]
    #: runs one of these flows as a job of its own: a task on the event loop
    #: (a test runs them by hand)
    spawn: Callable[[Flow[Effect, None]], Job]
    #: while something is lent: a look again at our lease's end (`_watch_lease`)
    lease_watch: Cancellable | None

    @property
    def in_stream(self) -> bool:
        """In sync, in a quorate view: what we send, every member applies."""
        return self.engine.synced and self.engine.quorate

    @property
    def may_lend(self) -> bool:
        """This node serves: in the stream, not stopped or banned, no round under way."""
        return self.in_stream and self.engine.node.serving

    def _ours(self, ref: Ref) -> bool:
        """Our Samba side holds the record's lock in the stream's queues."""
        q = self.engine.replica.locks.get(ref)
        return q is not None and q.holder == self.engine.clients.owner(self.session)

    def _running(self, ref: Ref) -> bool:
        task = self._busy.get(ref)
        return task is not None and not task.done()

    def _start(self, ref: Ref, work: Flow[Effect, None]) -> Job:
        task = self.spawn(work)
        self._busy[ref] = task
        task.add_done_callback(self._done)
        return task

    def _done(self, task: Job) -> None:
        for ref, busy in list(self._busy.items()):
            if busy is task:
                del self._busy[ref]
        if not task.cancelled() and task.exception() is not None:
            # The callers of a lending saw it (shield); a taking back has none.
            log.warning("lending to Samba's clients: %s", task.exception())
        # A request may have queued while this ran (before the record counted
        # as lent): nothing else would look again.
        self.after_apply()

    def after_apply(self) -> None:
        """After each operation the stream delivered, and at our lease's end:
        take back what is wanted elsewhere (everything, if we do not serve),
        and forget what the stream no longer lends us."""
        if not self.lent:
            return
        engine = self.engine
        if not self.in_stream:
            self.revoke_all()
            return
        # Stopped, banned, a round under way, or our lease ended: all goes back.
        # One look at the lease for this and for the watch below: with two, a
        # lease that ended between them kept everything lent with no watch
        # left, and Samba's `ctdb pfetch` read a replaced value in place
        # (tests/test_samba_lent_lease.py, a few runs in a hundred under load).
        until, now = engine.node.serving_until(), engine.node.now()
        urgent = not self.may_lend or now >= until
        for ref in list(self.lent):
            lent = self.lent.get(ref)
            if lent is None:
                continue  # revoked by a resync that a failing file started this pass
            q = engine.replica.locks.get(ref)
            if not self._ours(ref):
                # Purged or replaced by a state transfer: our clients must
                # stop writing in place.
                self._revoke(ref)
            elif q is not None and (urgent or len(q.entries) > 1) and not self._running(ref):
                db = engine.node.dbs.get(ref[0])
                if db is not None:
                    # The entry goes with the task: a revoke before it runs
                    # leaves the restoring to it (`_revoke`).
                    self._start(ref, self.taking_back(db, ref[1], lent))
        self._watch_lease(until - now)

    def _watch_lease(self, delay: float) -> None:
        """While something is lent, look again when our lease ends.

        The lease ends before the others can go on without us (a cut, our
        corosync stopped, a ring that does not re-form), but nothing comes
        from the stream to say so: its view change may come seconds later
        (a cut between two nodes, chaos vs seed 1320: Samba's clients on
        the node left behind read a persistent record 19 commits old, under
        a g_lock lent to them). So at that time, if it was not renewed,
        everything lent goes back, before the others may lend it elsewhere.
        """
        if not self.lent or self.lease_watch is not None:
            return
        if 0 < delay < math.inf:  # (an ended lease made the caller take everything back)
            self.lease_watch = self.engine.node.call_later(delay, self._lease_due)

    def _lease_due(self) -> None:
        self.lease_watch = None
        self.after_apply()

    @property
    def owed_back(self) -> bool:
        """Records lent here must go back before our Samba clients go on: we
        no longer serve (our lease ended, we left the stream, we stopped)."""
        return bool(self.lent or self.restoring) and not self.may_lend

    async def given_back(self, deadline: float) -> None:
        """Once nothing is owed back (see `owed_back`), or at `deadline`.

        A daemon that was stopped (SIGSTOP) resumes with its clients'
        requests and its lease's end due at once, and answered a `ctdb
        pfetch` that came meanwhile before it took back the g_lock lent
        here: the pfetch then queued on the g_lock's chain, ahead of us,
        and read our copy in place after the others had committed past it
        (chaos vs seed 1615). So the door holds such requests back until
        this returns (`CtdbSession`)."""
        self.after_apply()  # (our lease's watch may not have run yet)
        await poll(lambda: not self.owed_back, deadline)

    def revoke_all(self) -> None:
        """This node stops serving: nothing stays lent (see the module docstring)."""
        for ref in list(self.lent):
            self._revoke(ref)

    def _revoke(self, ref: Ref) -> None:
        lent = self.lent.pop(ref, None)
        if lent is None:
            return  # (a resync this revoke started revoked everything already)
        self._disown(ref)
        db = self.engine.node.dbs.get(ref[0])
        if db is None:
            return
        self.restoring[ref] = lent
        if self._running(ref):
            return  # (a taking back in progress restores it)
        # At once if we can (always at a view change: the gate holds every
        # shared file whole then).
        try:
            if db.local.try_lock_chain(ref[1]):
                try:
                    self._restore(db, ref[1], lent)
                finally:
                    db.local.unlock_chain(ref[1])
                return
        except Exception as exc:
            # Whoever revokes goes on (a view change, a resync, a stop).
            self.restoring.pop(ref, None)
            self._file_failed(f"revoking {ref[1]!r} from Samba's clients", exc)
            return
        self._start(ref, self.restoring_later(db, ref[1], lent))

    def _file_failed(self, what: str, exc: Exception) -> str:
        """Our shared file failed under us (a write raises OSError, the
        chain calls CtdbError): our copies are suspect, and what our clients
        wrote in place is lost with them. A resync replaces them, unless one
        is under way already. Returns why, for the caller's error."""
        detail = exc.message if isinstance(exc, CtdbError) else f"{type(exc).__name__}: {exc}"
        why = f"{what} failed: {detail}"
        log.warning("%s", why)
        if self.engine.synced:
            self.engine.resync(why)
        return why

    def _disown(self, ref: Ref) -> None:
        """Nobody here holds the record any more: a lock still ours in the
        queues is released once we serve again (LocalClients.release_orphans)."""
        self.engine.clients.granted.pop((self.engine.clients.owner(self.session), *ref), None)

    def restoring_later(self, db: Database, key: bytes, lent: Lent) -> Flow[Effect, None]:
        """`_restore` once the client holding the record's chain lets go:
        next in the lock's queue, before clients who come later (who would
        find the record named ours, while the others may go on without us)."""
        try:
            yield Chain(db, key, math.inf, queue=True)
            try:
                self._restore(db, key, lent)
            finally:
                db.local.unlock_chain(key)
        except Exception as exc:
            self.restoring.pop((db.id, key), None)
            self._file_failed(f"revoking {key!r} from Samba's clients", exc)

    def _restore(self, db: Database, key: bytes, lent: Lent) -> None:
        """Under the record's chain: our file goes back to the stream's copy,
        unless the stream rewrote it since (a state transfer, a wipe).

        (Never while the record is lent again: lending waits for the task
        that restores it, `_busy`.)"""
        if self.restoring.get((db.id, key)) is lent:
            # Done, or failed (the caller resyncs: a node out of sync sends no state).
            del self.restoring[(db.id, key)]
        rec = db.local.get(key)
        if rec is None or rec.dmaster != self.engine.node.pnn:
            return
        if lent.record is None:
            db.local.remove(key)
        else:
            db.local.put(key, lent.record)

    def taking_back(self, db: Database, key: bytes, lent: Lent) -> Flow[Effect, None]:
        """The record lent here goes back to the stream, with what our clients wrote."""
        ref = (db.id, key)
        try:
            taken, value = yield from self.collecting(db, key, lent)
        except Exception as exc:  # the file failed under us, not a held chain
            if self.lent.pop(ref, None) is not None:
                self._disown(ref)  # (the lock goes back once we serve again)
            self.restoring.pop(ref, None)
            self._file_failed(f"taking back {key!r} from Samba's clients", exc)
            return
        if not taken:
            return  # revoked meanwhile
        if value is not None:
            rsn = lent.record.rsn if lent.record is not None else 0
            self.returning[ref] = Record(rsn, NO_DMASTER, value)
        try:
            yield from self.giving_back(db, key, value)
        finally:
            self.returning.pop(ref, None)

    def collecting(
        self, db: Database, key: bytes, lent: Lent
    ) -> Flow[Effect, tuple[bool, bytes | None]]:
        """Under the record's chain, our file back at the stream's copy:
        (True, what our clients left, None if nothing new), or (False, None)
        if the record was revoked meanwhile."""
        ref = (db.id, key)
        waited = False
        while True:
            # Never given up: the record is the clients' until they let go of it.
            if not db.local.try_lock_chain(key):
                if not waited:
                    self.engine.node.stats["chain_waits"] += 1
                    waited = True
                # While we serve, a client who comes later may have it first;
                # not once our lease ended or we stopped serving (see
                # `restoring_later`).
                yield Chain(db, key, math.inf, queue=not self.may_lend)
            try:
                if self.lent.get(ref) is not lent:
                    self._restore(db, key, lent)  # revoked meanwhile
                    return False, None
                rec = db.local.get(key)
                if rec is None or rec.dmaster != self.engine.node.pnn:
                    value = None  # the stream rewrote it (a wipe): nothing to give back
                else:
                    value = rec.value if rec.value != lent.value else None
                early = lent.since + HOLD_MIN - self.engine.node.now() if self.may_lend else 0.0
                if early <= 0 or value is not None:  # (or a client used it already)
                    self._restore(db, key, lent)
                    del self.lent[ref]
                    return True, value
            finally:
                db.local.unlock_chain(key)
            yield Pause(early)

    def giving_back(self, db: Database, key: bytes, value: bytes | None) -> Flow[Effect, None]:
        """Unlock, with what our clients wrote; again until applied or no longer ours."""
        ref = (db.id, key)
        warned = False
        while self._ours(ref):
            try:
                # Not waiting for this node to serve while every member
                # applies what it sends: a stopped node gives back too.
                yield from self.engine.unlocking(
                    db, key, self.session, value, serving=not self.in_stream
                )
                return
            except CtdbError as exc:
                if exc.code == ErrorCode.NOT_LOCKED:
                    return  # the lock went with our copy (purged, replaced)
                if not warned:
                    log.warning("giving back %r lent to Samba's clients: %s", key, exc.message)
                    warned = True
            yield Pause(GIVE_BACK_RETRY)


def unnamed(rec: Record) -> Record:
    """`rec` as the stream holds it: naming no dmaster."""
    return Record(rec.rsn, NO_DMASTER, rec.value, rec.flags)
