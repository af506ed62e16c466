"""Persistent and replicated databases: transactions committed everywhere or nowhere.

Every node holds every record. A client's transaction runs against its local
copy: reads are remembered with the RSN they saw, writes are buffered. At
commit the writes go to the leader, which serialises commits per database,
rejects the transaction if anything it read has changed since (optimistic
concurrency: the client retries), and runs a two-phase commit over all
active nodes: each node writes the records into a TDB transaction and
prepares it (fsync'd), then all commit. The client is answered only after
every active node confirmed its commit, so an acknowledged transaction
survives the loss of any node. A commit cut short by a failure is answered
with an error, and recovery makes it all-or-nothing: it takes the copy with
the highest sequence number among the nodes of the latest epoch.

So a commit one node has made may still be taken back, until every node has
made it: a node that had not (it hung) can be the copy the next recovery
takes. Until the leader says every node committed (`tx_settled`), or a
recovery has given every node one copy, the keys a commit wrote are
unsettled here, and no read of them returns (`settled`, `wait_settled`):
reads only ever return committed data.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines import controls, flows
from ctdb.engines.answers import Answers
from ctdb.engines.controls import Control, Controls
from ctdb.engines.effects import Pause, Serving
from ctdb.engines.flows import Flow
from ctdb.engines.merge import from_wire, to_wire
from ctdb.engines.two_phase import TwoPhaseCommit
from ctdb.storage.database import HISTORY_KEY, SEQNUM_KEY, Database
from ctdb.storage.ltdb import Record, live_value

if TYPE_CHECKING:
    from ctdb.engines.host import Host


@dataclass(slots=True)
class Announce:
    """Tell each of `members`, in the background, that a commit is settled
    (`telling_settled`; `args`: the `tx_settled` control's)."""

    members: list[int]
    args: dict[str, Any]


#: What the commit flows wait for (`ctdb.engines.flows`).
Effect = Serving | Control | Controls | Pause | Announce

#: Seconds between attempts to tell a node that a commit is settled.
SETTLED_RETRY = 0.2

log = logging.getLogger("ctdb.engines.transactions")


def check_reads(db: Database, reads: Iterable[Any]) -> None:
    """BUSY if a record read at version `rsn` (each (key, rsn) of `reads`) has changed since."""
    for key, rsn in reads:
        rec = db.local.get(bytes(key))
        if (rec.rsn if rec else 0) != rsn:
            raise CtdbError(
                ErrorCode.BUSY, f"transaction conflict on {bytes(key)!r}: changed since read, retry"
            )


def next_version(
    db: Database, reads: list[Any], writes: list[Any], writer: int
) -> tuple[int, dict[bytes, Record]]:
    """Validate a transaction against `db` and build what it writes.

    Both engines commit through this: the leader before its two-phase commit
    (tcp), every node at the commit's position in the ordered stream (vs).
    Raises BUSY if a record read has changed since; returns the new sequence
    number and the records, the sequence number and history records included.
    """
    check_reads(db, reads)
    seqnum = db.seqnum() + 1
    records: dict[bytes, Record] = {}
    for key, value in writes:
        key = bytes(key)
        old = db.local.get(key)
        records[key] = Record((old.rsn if old else 0) + 1, writer, bytes(value or b""))
    records[SEQNUM_KEY] = Database.seqnum_record(seqnum, writer)
    change = [(key, rec.value) for key, rec in records.items() if key != SEQNUM_KEY]
    records[HISTORY_KEY] = db.history_record(seqnum, writer, change)
    return seqnum, records


def local_puts(records: Mapping[bytes, Record], pnn: int) -> dict[bytes, Record | None]:
    """What a commit's `records` write into node `pnn`'s file: each node's copy
    names itself in the header, as its own writes do."""
    return Database.commit_puts({k: Record(r.rsn, pnn, r.value) for k, r in records.items()})


@dataclass
class Transaction:
    """A client's open transaction on one database."""

    id: int
    db: Database
    reads: dict[bytes, int] = field(default_factory=dict)
    writes: dict[bytes, bytes | None] = field(default_factory=dict)

    def fetch(self, key: bytes) -> bytes | None:
        if key in self.writes:
            return self.writes[key]
        rec = self.db.local.get(key)
        self.reads.setdefault(key, rec.rsn if rec else 0)
        return live_value(rec)

    def drop_unchanged(self) -> dict[bytes, int]:
        """Writes of what a key already holds here become reads of it; returns
        the reads made before (what a commit with nothing left to write checks).

        Rewriting identical records then commits nothing, as with Samba,
        whose client skips them (`ptrans` of the same 10,000 records took
        1.65 s). Still serializable: the commit validates the read, so a key
        changed meanwhile fails it (BUSY), as the write would have been
        ordered after that change; with no write left, `check_reads` does.
        Run by each engine's commit.
        """
        earlier = dict(self.reads)
        for key, value in list(self.writes.items()):
            rec = self.db.local.get(key)
            if live_value(rec) == value:
                del self.writes[key]
                self.reads.setdefault(key, rec.rsn if rec else 0)
        return earlier

    def check_reads(self, reads: Mapping[bytes, int]) -> None:
        """BUSY if a key of `reads` has changed here since it was read.

        What a commit with nothing to write validates: a counter that another
        commit already moved to the value this one would write must not count
        as this one's increment. (The reads `drop_unchanged` just made hold
        by construction.)
        """
        check_reads(self.db, reads.items())


class TransactionEngine:
    def __init__(self, node: Host) -> None:
        self.node = node
        self._ids = itertools.count(1)
        self._commit_locks: dict[int, asyncio.Lock] = {}
        #: db id -> (commit id, keys) of the transaction prepared on this node.
        self._prepared: dict[int, tuple[int, list[bytes]]] = {}
        #: (db id, key) -> the commit that wrote it here, not yet made on every node
        self._unsettled: dict[tuple[int, bytes], int] = {}
        #: readers waiting for a key to settle: their key -> (the record, who answers them)
        self._settle_waiters: dict[Hashable, tuple[tuple[int, bytes], Answers]] = {}
        #: tx_settled announcements on their way (kept from the garbage collector)
        self._announcing: set[asyncio.Task[Any]] = set()

    def begin(self, db: Database) -> Transaction:
        if not db.replicated:
            raise CtdbError(
                ErrorCode.INVALID, f"database {db.name} is volatile: transactions need persistent"
            )
        return Transaction(next(self._ids), db)

    def commit(self, tx: Transaction) -> Awaitable[int]:
        """Commit through the leader (`committing`); the database's new sequence number."""
        return flows.drive(self.committing(tx), self._carry_out)

    def committing(self, tx: Transaction) -> Flow[Effect, int]:
        node = self.node
        earlier = tx.drop_unchanged()
        if not tx.writes:
            tx.check_reads(earlier)
            return tx.db.seqnum()
        if not node.serving:
            yield Serving(node.now() + node.tunable("CallTimeout"))
        writes = [[k, v] for k, v in tx.writes.items()]
        reads = [[k, rsn] for k, rsn in tx.reads.items()]
        args = {"db_id": tx.db.id, "reads": reads, "writes": writes}
        result: int = yield Control(node.leader, "tx_commit", args)
        return result

    # -- at the leader -------------------------------------------------------------

    async def coordinate(self, db: Database, reads: list[Any], writes: list[Any]) -> int:
        """Run one commit (`coordinating`), one per database at a time."""
        lock = self._commit_locks.setdefault(db.id, asyncio.Lock())
        async with lock:
            return await flows.drive(self.coordinating(db, reads, writes), self._carry_out)

    def coordinating(self, db: Database, reads: list[Any], writes: list[Any]) -> Flow[Effect, int]:
        """Validate the read set, prepare everywhere, commit everywhere: the
        new sequence number (the decisions are `two_phase.TwoPhaseCommit`'s)."""
        node = self.node
        if node.leader != node.pnn or not node.serving:
            raise CtdbError(ErrorCode.RETRY, "not the leader or in recovery: retry the commit")
        seqnum, new = next_version(db, reads, writes, node.pnn)
        members = list(node.vnnmap)
        commit_id = next(self._ids)
        tpc = TwoPhaseCommit(db.id, commit_id, node.generation, members, to_wire(new.items()))
        prepared = yield Controls.on_all(members, "tx_prepare", tpc.prepare, failures=True)
        finish = tpc.prepared(prepared)
        finished = yield Controls.on_all(members, "tx_finish", finish, failures=True)
        verdict = tpc.finished(finished)
        if verdict.settled:
            # Every node committed: their readers may see it (not awaited by the client).
            args = {"db_id": db.id, "commit_id": commit_id, "generation": node.generation}
            yield Announce(members, args)
        if verdict.unconfirmed:
            log.warning(
                "commit %d: nodes %s did not confirm: recovering", commit_id, verdict.unconfirmed
            )
            node.force_recovery()
        if verdict.error is not None:
            raise verdict.error
        return seqnum

    def telling_settled(self, pnn: int, args: dict[str, Any]) -> Flow[Effect, None]:
        """Tell `pnn` that a commit is settled, until it has heard: a node that
        has not keeps the keys unsettled, and its readers wait, as long as
        nothing else settles them. Only within the generation: a node that
        leaves it ends with a recovery, which settles everything (and
        ignores a late announcement)."""
        node = self.node
        while True:
            try:
                yield Control(pnn, "tx_settled", args)
                return
            except CtdbError as exc:
                if not node.in_generation(args["generation"]) or pnn not in node.transport.view:
                    return
                log.info("commit %d settled, node %d not told: %s", args["commit_id"], pnn, exc)
            yield Pause(SETTLED_RETRY)

    async def _carry_out(self, effect: Effect) -> Any:
        if isinstance(effect, Serving):
            return await self.node.wait_serving(effect.deadline)
        if isinstance(effect, Control | Controls):
            return await controls.send(self.node, effect)
        if isinstance(effect, Pause):
            return await asyncio.sleep(effect.seconds)
        loop = asyncio.get_running_loop()
        for pnn in effect.members:
            telling = flows.drive(self.telling_settled(pnn, effect.args), self._carry_out)
            task = loop.create_task(telling)
            self._announcing.add(task)
            task.add_done_callback(self._announcing.discard)
        return None

    # -- on every node -------------------------------------------------------------

    def prepare(self, db: Database, records: list[Any], commit_id: int, generation: int) -> None:
        if generation != self.node.generation or not self.node.serving:
            raise CtdbError(ErrorCode.RETRY, "generation changed during commit")
        if db.id in self._prepared:
            raise CtdbError(ErrorCode.BUSY, f"database {db.name} has a commit in progress")
        puts = local_puts(from_wire(records), self.node.pnn)
        try:
            db.local.prepare(puts)
        except Exception as exc:
            raise CtdbError(ErrorCode.IO, f"prepare failed on node {self.node.pnn}: {exc}") from exc
        self._prepared[db.id] = (commit_id, list(puts))

    def finish(self, db: Database, commit_id: int, commit: bool) -> None:
        prepared = self._prepared.get(db.id)
        if prepared is None or prepared[0] != commit_id:
            if commit:
                # A freeze cancelled it: confirming would let the leader
                # acknowledge a commit this node does not have.
                raise CtdbError(ErrorCode.RETRY, f"commit {commit_id} is not prepared here")
            return
        del self._prepared[db.id]
        if commit:
            db.local.commit_prepared()
            for key in prepared[1]:
                self._unsettled[(db.id, key)] = commit_id
        else:
            db.local.cancel_prepared()

    def settled(self, db: Database, key: bytes) -> bool:
        """No commit that wrote `key` here may still be taken back."""
        return (db.id, key) not in self._unsettled

    def on_settled(self, db: Database, commit_id: int) -> None:
        """The leader says every node made commit `commit_id`."""
        self._unsettled = {
            ref: c for ref, c in self._unsettled.items() if ref[0] != db.id or c != commit_id
        }
        self._wake()

    def settle_all(self) -> None:
        """A recovery gave every node the same copy: nothing is unsettled any more."""
        self._unsettled.clear()
        self._wake()

    def wait_settled(self, waiter: Hashable, db: Database, key: bytes, to: Answers) -> None:
        """`to` answers `waiter` (None) once `key` is settled here, or once
        something may have changed (a freeze); at once if it is settled now.
        The waiter calls `unwait` if it gives up first."""
        if self.settled(db, key):
            to.answer(waiter, None)
        else:
            self._settle_waiters[waiter] = ((db.id, key), to)

    def unwait(self, waiter: Hashable) -> None:
        self._settle_waiters.pop(waiter, None)

    def _wake(self) -> None:
        for waiter, (ref, to) in list(self._settle_waiters.items()):
            if ref not in self._unsettled:
                del self._settle_waiters[waiter]
                to.answer(waiter, None)

    def cancel_all(self) -> None:
        """Freeze: a prepared but unfinished commit is abandoned; recovery decides."""
        for dbid in list(self._prepared):
            db = self.node.dbs.get(dbid)
            del self._prepared[dbid]
            if db is not None:
                db.local.cancel_prepared()
        # Readers waiting for a commit to settle look again: they wait for
        # this node to serve, and the recovery settles everything.
        waiters, self._settle_waiters = self._settle_waiters, {}
        for waiter, (_, to) in waiters.items():
            to.answer(waiter, None)
