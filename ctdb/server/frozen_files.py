"""A frozen tcp member holds its volatile files whole, so no client writes in place.

Samba's clients write a volatile record in place, under its chain lock,
while this node is its dmaster. A recovery pulls every member's copy,
merges them and pushes the result back; an in-place write made after the
pull would be overwritten by the push, or would survive beside a merge
that never saw it, after its client was told it succeeded. CTDB's freeze
therefore holds every database's chain locks before it reports frozen, and
releases them at thaw.

So does a member here: before it answers the leader's freeze it takes every
volatile file's all-record lock (tdb_lockall), without waiting for it on the
event loop: a client holding a chain lock may be waiting for this daemon,
so a busy file is retried every few milliseconds until the freeze's
deadline, when the freeze fails and the leader retries the recovery (and,
as CTDB does, bans a node that keeps failing to freeze). Meanwhile the
clients' chain locks wait (smbd blocks in tdb_chainlock, as against
ctdbd), the daemon's own reads and writes pass under its lock, and a push
writes record by record, since TDB refuses a transaction under it
(`ctdb.storage.ltdb.LocalDb.write_batch`).

A node that freezes on its own (it lost a peer), or whose lease runs out
(cut off from the others, who recover without it once the lease is over),
takes the locks too (`InPlaceGuard`): no leader may ever freeze it, and its
clients must not go on writing records the majority has taken over.

The locks are robust mutexes owned by the thread that took them: taken and
released on the event loop only, never while recovery's bulk work runs in
its thread (`RecoveryMember.bulk` is awaited first).
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import Counter
from collections.abc import Callable, Mapping

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.chains import RETRY, poll
from ctdb.storage.database import Database


class FrozenFiles:
    def __init__(self, dbs: Mapping[int, Database], stats: Counter[str]) -> None:
        self.dbs = dbs
        #: the node's counters: "freeze_waits" counts freezes that found a chain held
        self.stats = stats
        #: the files this process holds whole, by database id
        self._held: dict[int, Database] = {}

    def held(self) -> bool:
        """Every shared file is held (a database attached since is not)."""
        return all(db.id in self._held for db in self.dbs.values() if db.shared)

    def try_hold(self) -> bool:
        """Take what is not held yet, without waiting; True once every shared file is held."""
        for db in self.dbs.values():
            if db.shared and db.id not in self._held and db.local.try_lock_all():
                self._held[db.id] = db
        return self.held()

    async def hold(self, deadline: float) -> None:
        """Hold every shared file whole; IO if a client still holds a chain at `deadline`."""
        if self.try_hold():
            return
        self.stats["freeze_waits"] += 1
        if not await poll(self.try_hold, deadline):
            busy = sorted(
                db.name for db in self.dbs.values() if db.shared and db.id not in self._held
            )
            # IO, as a failing disk: the leader bans a node that fails to
            # freeze recovery after recovery, as CTDB bans it, so that a
            # client holding a lock for good cannot stop the cluster.
            raise CtdbError(
                ErrorCode.IO, f"clients kept records locked in {', '.join(busy)}: not frozen"
            )

    def release(self) -> None:
        """Thaw: clients may write in place again."""
        held, self._held = self._held, {}
        for db in held.values():
            db.local.unlock_all()


class InPlaceGuard:
    """Samba's clients write in place only while our own in-place clients may.

    Our clients that use records in place stop at `in_place_until` (the
    lease, `ctdb.server.lease`: it ends before the other nodes can declare
    this one gone and recover without it). Samba's clients cannot be told,
    so once that time passes this node holds its shared files whole until
    it may again: a node cut off from the others stops its clients' writes
    in place before the majority takes their records over, as CTDB's
    minority stays frozen without the cluster lock. Its own FrozenFiles:
    the freeze's hold and this one nest (`LocalDb.try_lock_all`), and
    either ends without ending the other.

    Taken and released only with `bulk_lock`, which recovery's work in its
    thread holds: the locks are the event loop's thread's (see the module
    docstring).
    """

    def __init__(
        self,
        dbs: Mapping[int, Database],
        stats: Counter[str],
        until: Callable[[], float],
        bulk_lock: threading.Lock,
    ) -> None:
        self.files = FrozenFiles(dbs, stats)
        self.until = until
        self.bulk_lock = bulk_lock
        self._timer: asyncio.TimerHandle | None = None
        self._holding: asyncio.Task[bool] | None = None
        self._stopped = False

    def update(self) -> None:
        """`until` changed (the lease was renewed or ran out, a freeze or thaw)."""
        if self._stopped:
            return  # (the node stops: its files are about to close)
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        until = self.until()
        if until > loop.time():
            if self._holding is not None:
                self._holding.cancel()
                self._holding = None
            if not self._with_bulk_lock(self._release):
                self._timer = loop.call_later(RETRY, self.update)
            elif until < math.inf:
                self._timer = loop.call_at(until, self.update)
        elif self._holding is None or self._holding.done():
            if not self.files.held():
                self.files.stats["in_place_holds"] += 1
            self._holding = loop.create_task(poll(self._try_hold, math.inf))

    def owed(self) -> bool:
        """In-place use has ended, and our shared files are not held whole yet."""
        return self.until() <= asyncio.get_running_loop().time() and not self.files.held()

    async def held(self, deadline: float) -> None:
        """Once in-place use may go on or our files are held whole, or at
        `deadline` (see `samba_returns.Returns.given_back` for why a daemon that
        resumes from a stop must not answer its Samba clients before)."""
        self.update()  # (the lease's timer may not have run yet)
        await poll(lambda: not self.owed(), deadline)

    def _try_hold(self) -> bool:
        return self._with_bulk_lock(self.files.try_hold)

    def _release(self) -> bool:
        self.files.release()
        return True

    def _with_bulk_lock(self, work: Callable[[], bool]) -> bool:
        """`work()` unless recovery's thread works on the files now (False)."""
        if not self.bulk_lock.acquire(blocking=False):
            return False
        try:
            return work()
        finally:
            self.bulk_lock.release()

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        if self._holding is not None:
            self._holding.cancel()
        self.files.release()
