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
(`ctdb.storage.ltdb.LocalDb.write_batch`). A node that freezes on its own
(it lost a peer) takes the locks only when the leader freezes it: writes
before that are in the copy the leader pulls.

The locks are robust mutexes owned by the thread that took them: taken and
released on the event loop only, never while recovery's bulk work runs in
its thread (`RecoveryMember.bulk` is awaited first).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.chains import poll
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

    def _try_hold(self) -> bool:
        for db in self.dbs.values():
            if db.shared and db.id not in self._held and db.local.try_lock_all():
                self._held[db.id] = db
        return self.held()

    async def hold(self, deadline: float) -> None:
        """Hold every shared file whole; IO if a client still holds a chain at `deadline`."""
        if self._try_hold():
            return
        self.stats["freeze_waits"] += 1
        if not await poll(self._try_hold, deadline):
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
