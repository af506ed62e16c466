"""TDB sequence numbers of volatile databases, kept moving on every node.

smbd opens brlock.tdb, locking.tdb and leases.tdb with TDB_SEQNUM and caches
what it read from them until the file's sequence number (in the TDB header,
bumped by every store through a handle with TDB_SEQNUM set) moves: e.g. a
file's byte-range locks (`brl_get_locks_readonly`, source3/locking/brlock.c).
A record another node changes never touches this node's file, so ctdbd
(ctdb_ltdb_server.c, `ctdb_ltdb_enable_seqnum` and `ctdb_ltdb_seqnum_check`)
does three things, and so does this module:

* ENABLE_SEQNUM (a client's, once per database): set TDB_SEQNUM on the
  daemon's own handle, so that the daemon's stores (a record migrating in
  or out) bump it too, and DB_OPEN_FLAGS reports the flag (smbd opens the
  file with the flags the daemon reports);
* every SeqnumInterval (1 s, ctdbd's default; pyctdb has no such tunable),
  if the number moved since the last look, send UPDATE_SEQNUM for the
  database to every other active node (ctdbd: a NOREPLY control to
  CTDB_BROADCAST_ACTIVE);
* UPDATE_SEQNUM from another node: bump this node's number
  (`tdb_increment_seqnum_nonblock`, a no-op where no client enabled it),
  and take the new number as seen, so it is not sent back (unless this
  node had a change of its own to send: ctdbd drops that one).

Like ctdbd's, a change is seen elsewhere up to about one interval late.

Only volatile databases are watched and bumped. smbd asks ENABLE_SEQNUM
for the persistent registry.tdb too (REG_TDB_FLAGS is TDB_SEQNUM): there
the flag is set, so every node's own commit of every transaction bumps its
number, and nothing more is needed. Bumping it on UPDATE_SEQNUM would even
be harmful: pyctdb holds a persistent commit prepared (an open TDB
transaction) across the wait for the other nodes, and a write to the
header through that handle meanwhile makes the commit fail (libtdb:
"transaction already prepared, write not allowed", then TDB_ERR_IO at
commit), which smbd, seeing its database sequence number unchanged, then
retries for ever. ctdbd commits synchronously, so it never meets this.
"""

from __future__ import annotations

import asyncio
import logging
import struct

from ctdb.protocol.ctdb_opcodes import Control
from ctdb.server.node import Node

log = logging.getLogger("ctdb.server.ctdb_seqnum")

#: ctdbd's SeqnumInterval default, in seconds
SEQNUM_INTERVAL = 1.0


class SeqnumWatch:
    """This node's share of ctdbd's sequence-number propagation."""

    def __init__(self, node: Node, interval: float = SEQNUM_INTERVAL) -> None:
        self.node = node
        self.interval = interval
        #: database id -> its sequence number when last looked at or sent
        self.seen: dict[int, int] = {}
        self._task: asyncio.Task[None] | None = None

    def enable(self, db_id: int) -> None:
        """ENABLE_SEQNUM: TDB_SEQNUM on the daemon's handle, and watch a
        volatile database's number."""
        db = self.node.db(db_id)
        local = db.local
        local.enable_tdb_seqnum()
        if not db.replicated:
            # -1 while not serving (see `update`): the next look sends one
            # UPDATE_SEQNUM too many at most.
            self.seen.setdefault(db_id, local.tdb_seqnum if self.node.serving else -1)

    def update(self, db_id: int) -> None:
        """UPDATE_SEQNUM from another node: a record there changed.

        The bump is not sent back; a change made here since the last look
        still is (ctdbd takes the bumped number as seen either way, which
        loses such a change until the next one)."""
        db = self.node.db(db_id)
        if db.replicated or not self.node.serving:
            # Persistent: see the module's note. Not serving: a recovery's
            # bulk work may be using the handle in its thread (TDB handles
            # are not thread-safe), and the recovery moves what it changes.
            return
        local = db.local
        before = local.tdb_seqnum
        local.bump_tdb_seqnum()
        if self.seen.get(db_id) == before:
            self.seen[db_id] = local.tdb_seqnum

    def moved(self) -> list[int]:
        """The databases whose number moved since the last look (now seen);
        none while the node does not serve (see `update`)."""
        if not self.node.serving:
            return []
        moved = []
        for db_id, last in list(self.seen.items()):
            db = self.node.dbs.get(db_id)
            if db is None:
                del self.seen[db_id]
                continue
            now = db.local.tdb_seqnum
            if now != last:
                self.seen[db_id] = now
                moved.append(db_id)
        return moved

    async def _tell(self, pnn: int, db_id: int) -> None:
        args = {"opcode": int(Control.UPDATE_SEQNUM), "srvid": 0, "data": struct.pack("<I", db_id)}
        try:
            await self.node.control(pnn, "ctdb_control", args, timeout=self.interval)
        except Exception as exc:
            # NOREPLY in ctdbd: a node that misses one hears of the next change
            log.debug("UPDATE_SEQNUM to node %d: %s", pnn, exc)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                moved = self.moved()
            except Exception as exc:  # a bug costs this round, not the watch
                log.error("looking at TDB sequence numbers failed", exc_info=exc)
                continue
            if not moved:
                continue
            others = [p for p in self.node.active_members() if p != self.node.pnn]
            await asyncio.gather(*(self._tell(p, db_id) for p in others for db_id in moved))

    def start(self) -> None:
        self._task = self.node.supervised(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # (what it raised, if it ended by itself, stopped the node already)
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
