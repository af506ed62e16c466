"""The ordered engine: client operations, the stream's appliers, view changes
and state-transfer rounds (the design is in the package docstring)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines import record_calls
from ctdb.engines.merge import Mark, from_wire, same_copy, to_wire
from ctdb.engines.ordered.locks import LockQueue, Owner, QueueFull
from ctdb.engines.ordered.replica import FirstEntry, Granted, Replica, Written
from ctdb.engines.ordered.stability import STABLE_OPS, Stability
from ctdb.engines.ordered.sync import SyncRound, make_plan
from ctdb.engines.record_calls import RecordCall
from ctdb.engines.transactions import Transaction
from ctdb.protocol.message_codec import encode
from ctdb.protocol.messages import Ordered
from ctdb.storage.database import Database, DbKind
from ctdb.storage.entries import Entry
from ctdb.storage.ltdb import Record, live_value
from ctdb.storage.placement import db_id
from transport.base import View

if TYPE_CHECKING:
    from ctdb.engines.host import Host

log = logging.getLogger("ctdb.engines.ordered")

#: Operations a node out of sync queues while it waits for its snapshot; past
#: this it gives up on the round and rejoins the group.
MAX_BACKLOG = 100_000
#: Markers proposed per database in one vacuum message.
VACUUM_BATCH = 1000


@dataclass
class Barriers:
    """Read barriers: the one in flight and the one collecting readers."""

    open: asyncio.Future[Any] | None = None
    in_flight: asyncio.Future[Any] | None = None


class StreamListener(Protocol):
    """Who runs the engine (ctdb.server.stream) and mirrors its state for CTDB's tools."""

    def on_ordered_state(self) -> None:
        """Our sync or quorum state, a generation or the agreed flags changed."""

    def rejoin(self) -> None:
        """Leave the group and join again, for a state transfer."""

    def fence_owners(self) -> None:
        """We were out of the group: the others purged our clients' entries."""


class OrderedEngine:
    def __init__(self, node: Host, listener: StreamListener) -> None:
        self.node = node
        self.listener = listener
        # Above every seq an earlier run of this node used: an `applied`
        # message about that run, delivered late, must not make one of
        # this run's writes look stable.
        self._seq = itertools.count((node.epochs.incarnation << 32) + 1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        #: the replicated state: records, lock queues, entry lists, markers
        self.replica = Replica(node.pnn, node, node.stats)
        #: local lock waiters: owner -> future resolved when it becomes holder
        self._lock_waiters: dict[tuple[Owner, int, bytes], asyncio.Future[Any]] = {}
        #: locks our clients were told they hold (fetch_lock answered, not yet unlocked)
        self._granted: set[tuple[Owner, int, bytes]] = set()
        self._sessions: dict[int, object] = {}
        self._session_ids = itertools.count(1)
        self.synced = False
        #: this run completed a round (its clients may own entries)
        self._served = False
        #: a local write failed since our copies were last in sync: they may
        #: lack or have lost anything (see `freshest_copy` in engines.merge)
        self.damaged = False
        self.view: View = node.transport.view
        self._round: SyncRound | None = None
        #: members that have yet to say they installed the snapshots of the
        #: last plan (view id, members): the same on every member, whose own
        #: round may be over already
        self._catching_up: tuple[int, set[int]] = (0, set())
        #: operations delivered while this node waits for its snapshot
        self._backlog: list[Ordered] = []
        #: configuration events (forced recoveries, node flag changes) applied
        #: in the current view: part of the agreed generation
        self.recoveries = 0
        #: every member's administrative flags, as agreed in the stream
        self.flags: dict[int, int] = {node.pnn: 0}
        #: read barriers ("sync" broadcasts): see _fetch_ordered
        self._barriers = Barriers()
        #: which writes every member holds (see stability.py)
        self.stability = Stability(node.pnn, self._send)

    # -- identity of local clients --------------------------------------------------

    def _owner(self, session: object) -> Owner:
        sid = getattr(session, "_ordered_id", None)
        if sid is None:
            sid = next(self._session_ids)
            session._ordered_id = sid  # type: ignore[attr-defined]
            self._sessions[sid] = session
        return (self.node.pnn, sid)

    # -- serving state ---------------------------------------------------------------

    @property
    def members(self) -> list[int]:
        return list(self.view.members)

    @property
    def quorate(self) -> bool:
        return 2 * len(self.members) > len(self.node.nodes)

    @property
    def serving(self) -> bool:
        return self.synced and self.quorate and self._round is None

    # -- client operations -------------------------------------------------------------

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.node.tunable("CallTimeout")

    async def _submit(self, op: str, args: dict[str, Any], deadline: float | None = None) -> Any:
        """Broadcast `op` and wait for its result, at most until `deadline`.

        A request that times out may still be applied later (it is in the
        stream): the client hears TIMEOUT, which means "unknown outcome".
        """
        node = self.node
        if deadline is None:
            deadline = self._deadline()
        await node.wait_serving(deadline)
        seq = next(self._seq)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[seq] = fut
        node.stats["ordered_sent"] += 1
        try:
            node.transport.broadcast(encode(Ordered(node.pnn, seq, op, args)))
            return await _until(fut, deadline, f"{op} was not delivered in time: outcome unknown")
        finally:
            self._pending.pop(seq, None)
            self.stability.unstable.pop(seq, None)

    def fetch(self, db: Database, key: bytes, session: object) -> Any:
        q = self.replica.locks.get((db.id, key))
        holder = q.holder if q is not None else None
        if (
            self.node.serving
            and self.settled(db, key)
            and (
                holder == self._owner(session)
                or (holder is None and self.node.tunable("LocalReads"))
            )
        ):
            self.node.stats["fetch_local"] += 1
            return live_value(db.local.get(key))
        return self._fetch_ordered(db, key, session)

    async def _fetch_ordered(self, db: Database, key: bytes, session: object) -> bytes | None:
        """A linearizable read: wait for a barrier sent after the read arrived.

        Totem assigns sequence numbers on a circulating token, so a write
        acknowledged anywhere before this read began is ordered before the
        barrier, and is applied here by the time the barrier is delivered.
        """
        node = self.node
        deadline = self._deadline()
        await node.wait_serving(deadline)
        await self._barrier(deadline)
        q = self.replica.locks.get((db.id, key))
        if q is None or q.holder in (None, self._owner(session)):
            await self.settle(db, key, deadline)
            return live_value(db.local.get(key))
        # Someone else holds the record: wait for it, as migration would.
        value = await self.lock(db, key, session)
        try:
            await self.unlock(db, key, session, None)
        except CtdbError:
            # The client asked for a read, not a lock: it must not keep one.
            owner = self._owner(session)
            self._granted.discard((owner, db.id, key))
            self._broadcast("withdraw", {"db": db.id, "key": key, "owner": owner})
            raise
        return value

    async def _barrier(self, deadline: float) -> None:
        """Reads share barriers: at most one in flight and one collecting readers."""
        b = self._barriers
        fut = b.open
        if fut is None:
            fut = b.open = asyncio.get_running_loop().create_future()
            if b.in_flight is None:
                self._send_barrier(b)
        await _until(fut, deadline, "the read's ordering barrier was not delivered in time")

    def _send_barrier(self, b: Barriers) -> None:
        fut, b.open = b.open, None
        assert fut is not None
        b.in_flight = fut
        seq = next(self._seq)
        self._pending[seq] = fut
        fut.add_done_callback(lambda done: self._barrier_done(b, seq, done))
        self.node.stats["read_barriers"] += 1
        self.node.transport.broadcast(encode(Ordered(self.node.pnn, seq, "sync", {})))

    def _barrier_done(self, b: Barriers, seq: int, fut: asyncio.Future[Any]) -> None:
        """The next barrier goes out; if this one failed, its waiting readers fail alike."""
        self._pending.pop(seq, None)
        b.in_flight = None
        waiting = b.open
        if waiting is None:
            return
        error = None if fut.cancelled() else fut.exception()
        if error is None:
            self._send_barrier(b)
        else:
            b.open = None
            if not waiting.done():
                waiting.set_exception(error)

    def _apply_sync(self, origin: int, args: dict[str, Any]) -> None:
        """A read barrier: its origin's readers go on once it is delivered."""

    def store(self, db: Database, key: bytes, value: bytes, session: object) -> Any:
        owner = self._owner(session)
        args = {"db": db.id, "key": key, "value": value, "owner": owner, "waiters": self._waiters()}
        return self._submit("store", self._volatile_write(args))

    def _volatile_write(self, args: dict[str, Any]) -> dict[str, Any]:
        """Ask for stability if this node's StableVolatileWrites says so.

        The origin decides, in the message, so that every member treats the
        write alike (whether reads of its key wait for it to become stable).
        """
        if self.node.tunable("StableVolatileWrites"):
            args["stable"] = True
        return args

    def _waiters(self) -> int:
        """The queue bound our lock requests and writes carry (see the module docstring)."""
        return int(self.node.tunable("MaxLockWaiters"))

    async def lock(self, db: Database, key: bytes, session: object) -> bytes | None:
        owner = self._owner(session)
        q = self.replica.locks.get((db.id, key))
        if q is not None and q.holder == owner:
            self._granted.add((owner, db.id, key))
            return live_value(db.local.get(key))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._lock_waiters[(owner, db.id, key)] = fut
        deadline = self._deadline()
        args = {"db": db.id, "key": key, "owner": owner, "waiters": self._waiters()}
        try:
            await self._submit("lock", args, deadline)
            result: bytes | None = await _until(
                fut, deadline, f"record {key!r} stayed locked by another client"
            )
            self._granted.add((owner, db.id, key))
            return result
        except QueueFull:
            raise  # never queued: nothing to withdraw
        except CtdbError:
            # Our place in the queue (or the lock itself, granted a moment
            # too late) must not outlive the request: withdraw it, in order.
            self._broadcast("withdraw", {"db": db.id, "key": key, "owner": owner})
            raise
        finally:
            self._lock_waiters.pop((owner, db.id, key), None)

    async def unlock(self, db: Database, key: bytes, session: object, value: bytes | None) -> None:
        owner = self._owner(session)
        q = self.replica.locks.get((db.id, key))
        if q is None or q.holder != owner:
            self._granted.discard((owner, db.id, key))  # a grant a state transfer undid
            raise CtdbError(ErrorCode.NOT_LOCKED, f"record {key!r} is not locked by this client")
        args = {"db": db.id, "key": key, "owner": owner, "value": value}
        await self._submit("unlock", self._volatile_write(args))
        self._granted.discard((owner, db.id, key))

    def release_all(self, session: object) -> None:
        sid = getattr(session, "_ordered_id", None)
        if sid is None:
            return
        self._sessions.pop(sid, None)
        owner = (self.node.pnn, sid)
        self._granted = {g for g in self._granted if g[0] != owner}
        if any(e[0] == owner for q in self.replica.locks.values() for e in q.entries):
            self._broadcast("release", {"owner": owner})

    def _broadcast(self, op: str, args: dict[str, Any]) -> None:
        """An ordered operation nobody waits for."""
        self.node.transport.broadcast(encode(Ordered(self.node.pnn, next(self._seq), op, args)))

    def call(self, db: Database, key: bytes, call: RecordCall) -> Any:
        """One ordered operation; every member runs the call at its position.

        On a replicated database it is a commit, acknowledged once stable.
        """
        record_calls.check(call)
        args: dict[str, Any] = {"db": db.id, "key": key, "call": record_calls.to_wire(call)}
        if db.replicated:
            args["stable"] = True
            return self._submit("call", args)
        return self._submit("call", self._volatile_write(args))

    async def commit(self, tx: Transaction) -> int:
        if not tx.writes:
            return tx.db.seqnum()
        reads = [[k, rsn] for k, rsn in tx.reads.items()]
        writes = [[k, v] for k, v in tx.writes.items()]
        result: int = await self._submit(
            "commit", {"db": tx.db.id, "reads": reads, "writes": writes}
        )
        return result

    async def attach(self, name: str, kind: DbKind) -> Database:
        existing = self.node.dbs.get(db_id(name))
        if existing is None:
            await self._submit("attach", {"name": name, "kind": kind.value})
        return self.node.attach(name, kind)

    async def wipe(self, db: Database) -> None:
        await self._submit("wipe", {"db": db.id})

    async def recover(self) -> None:
        await self._submit("recover", {})

    def _apply_recover(self, origin: int, args: dict[str, Any]) -> None:
        self.recoveries += 1
        self.listener.on_ordered_state()

    def announce_flags(self, flags: int) -> None:
        """Our flags changed (stop, ban, ...): every member learns it at one position.

        Sent without waiting for quorum or sync: a stopped node must still
        be able to say it continues.
        """
        self._broadcast("flags", {"flags": flags})

    def _apply_flags(self, origin: int, args: dict[str, Any]) -> None:
        self.flags[origin] = int(args["flags"])
        self.recoveries += 1  # a new generation, as a CTDB recovery would give
        self.listener.on_ordered_state()

    async def traverse(self, db: Database) -> list[tuple[bytes, Record]]:
        """Every node holds every record: a local traverse is the whole database."""
        node = self.node
        await node.wait_serving(asyncio.get_running_loop().time() + node.tunable("CallTimeout"))
        return sorted(db.live_items())

    # -- the ordered stream --------------------------------------------------------------

    def on_ordered(self, msg: Ordered) -> None:
        if msg.op == "applied":
            if self.stability.on_applied(msg):
                self._check_stable()
            return
        if msg.op == "offer":
            self._on_offer(msg)
            return
        if msg.op == "snapshot":
            self._on_snapshot(msg)
            return
        if msg.op == "synced":
            self._on_synced(msg)
            return
        if not self.synced or (
            self._round is not None and self._round.plan is not None and self._needs_snapshot()
        ):
            self._backlog.append(msg)
            if len(self._backlog) > MAX_BACKLOG:
                self.resync(
                    f"more than {MAX_BACKLOG} operations queued while waiting to sync",
                    damaged=False,
                )
            return
        self._apply(msg)

    def resync(self, why: str, *, damaged: bool = True) -> None:
        """Our replica can no longer follow the stream: rejoin for a state transfer.

        `damaged`: a local write failed, so our copies are suspect, not just
        behind; until a state transfer replaces them they are taken only
        where no member offers a sound copy of the same epoch.
        """
        log.error("leaving the group and rejoining: %s", why)
        self.synced = False
        # A round in progress must not put us back in sync with the copy
        # that just failed: the view change of our rejoin starts a new one.
        self._round = None
        self.damaged = self.damaged or damaged
        self._drop_backlog()
        self._fail_pending(CtdbError(ErrorCode.RETRY, f"node {self.node.pnn} is resyncing: {why}"))
        self.listener.on_ordered_state()
        self.listener.rejoin()

    def _fail_pending(self, error: CtdbError) -> None:
        for seq, fut in list(self._pending.items()):
            if not fut.done():
                fut.set_exception(error)
            del self._pending[seq]
        self.stability.drop()

    def _apply(self, msg: Ordered) -> None:
        stable_op = msg.op in STABLE_OPS or msg.args.get("stable", False)
        members = frozenset(self.members) if stable_op else None
        if members is not None:
            self.stability.applying = (msg.origin, msg.seq, members)
        try:
            if msg.op in Replica.OPS:
                result = self.replica.apply(msg.origin, msg.op, msg.args)
            else:
                result = getattr(self, f"_apply_{msg.op}")(msg.origin, msg.args)
            error = None
        except CtdbError as exc:
            result, error = None, exc
        except Exception as exc:
            # Our replica may now differ from everyone else's (I/O error,
            # disk full, a bug): never carry on with it.
            log.exception("applying %s from node %d failed", msg.op, msg.origin)
            self._act()
            self.resync(f"applying {msg.op} failed: {type(exc).__name__}: {exc}")
            return
        finally:
            self._act()
            self.stability.applying = None
        self.node.stats["ordered_applied"] += 1
        stable = members is not None and error is None
        if stable:
            self.stability.confirm(msg.origin, msg.seq)
        if msg.origin != self.node.pnn:
            return
        fut = self._pending.get(msg.seq)
        if fut is None or fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        elif stable:
            assert members is not None
            self.stability.unstable[msg.seq] = (fut, result, members)
            self._check_stable()
        else:
            fut.set_result(result)

    # -- stability: a write counts once every member applied it ----------------------

    def _send(self, msg: Ordered) -> None:
        self.node.transport.broadcast(encode(msg))

    def _check_stable(self) -> None:
        settling = self._round is not None or self._behind(self.view)
        self.stability.check(self.view, settling)

    def settled(self, db: Database, key: bytes) -> bool:
        """The key holds only stable writes here.

        We apply a write before every member has: until they all have, a
        failure can still take it back (a round after a lost quorum may take
        a copy without it), so a local read must not return it: that would
        be a dirty read.
        """
        return (db.id, key) not in self.stability.dirty

    async def settle(self, db: Database, key: bytes, deadline: float) -> None:
        while True:
            await self.node.wait_serving(deadline)
            if self.settled(db, key):
                return
            waiter = self.stability.wait((db.id, key))
            fut = waiter[1]
            try:
                await _until(fut, deadline, f"a write to {key!r} did not become stable in time")
            finally:
                if not fut.done():  # timed out: nobody is left to wake
                    self.stability.waiters.remove(waiter)

    def _db(self, dbid: int) -> Database:
        return self.node.db(int(dbid))

    # -- vacuuming: every replica drops the same markers at the same position ----------

    def vacuum(self) -> None:
        """The first member proposes markers to remove; the stream applies it everywhere.

        Every member holds every record and applies the same stream, so a
        marker removed at one position is removed on every replica and no
        node is left with a copy it could bring back.
        """
        if not self.serving or self.members[0] != self.node.pnn:
            return
        for dbid, keys in list(self.replica.markers.items()):
            db = self.node.dbs.get(dbid)
            if db is None:
                del self.replica.markers[dbid]
                continue
            batch = []
            for key in list(itertools.islice(keys, VACUUM_BATCH)):
                rec = db.local.get(key)
                if rec is None or not rec.deleted:
                    keys.discard(key)
                elif (dbid, key) not in self.replica.locks:
                    batch.append([key, rec.rsn])
            if batch:
                self._broadcast("vacuum", {"db": dbid, "records": batch})

    def _act(self) -> None:
        """Do what applying the stream left for this node to do (replica effects)."""
        effects, self.replica.effects = self.replica.effects, []
        for effect in effects:
            if isinstance(effect, Written):
                self.stability.touched(effect.ref)
            elif isinstance(effect, FirstEntry):
                self.node.entry_head(effect.owner, *effect.ref)
            else:
                self._granted_here(effect)

    def _granted_here(self, grant: Granted) -> None:
        """One of our clients now holds a lock: answer its fetch_lock, or give it back."""
        dbid, key = grant.ref
        mine = (grant.owner, dbid, key)
        fut = self._lock_waiters.get(mine)
        if fut is not None:
            if not fut.done():
                fut.set_result(grant.value)
        elif mine not in self._granted:
            # Nobody here wants it any more: a fetch_lock that failed, or
            # one whose grant a state transfer undid. Held, it would stay
            # locked for good.
            self._broadcast("withdraw", {"db": dbid, "key": key, "owner": grant.owner})

    def _purge(self, gone: Callable[[Owner], bool]) -> None:
        try:
            self.replica.purge_locks(gone)
        finally:
            self._act()

    def _purge_entries(self, gone: Callable[[Entry], bool]) -> None:
        try:
            self.replica.purge_entries(gone, min(self.members))
        finally:
            self._act()

    # -- membership -------------------------------------------------------------------------

    def on_view(self, view: View) -> None:
        """Handle a view change at its position in the stream (same on every member)."""
        old = self.view
        self.view = view
        self.recoveries = 0
        left = set(old.members) - set(view.members)
        joined = set(view.members) - set(old.members)
        failure = None
        if left:
            try:
                self._purge(lambda o: o[0] in left)
                if self.quorate:
                    # Not in a minority view: its copy may still be the one a
                    # later round takes (when nobody is in sync), and the
                    # majority's clients' entries must not have gone from it.
                    # A round purges whoever is not in its view (_finish_round).
                    self._purge_entries(lambda e: e.pnn in left)
            except Exception as exc:  # as in _apply: our replica may now differ
                log.exception("releasing the locks and entries of departed nodes failed")
                failure = f"releasing departed nodes' locks failed: {type(exc).__name__}: {exc}"
        self.stability.forget(view)
        behind = self._catching_up[1]
        if left & behind:
            # A member that left will not say it installed its snapshots;
            # if it was the last one, the survivors hold the plan's copies.
            behind -= left
            if not behind and self.quorate and self.node.pnn in view:
                self._plan_done()
        if self.node.pnn not in view:
            self._fail_pending(CtdbError(ErrorCode.RETRY, "left the group"))
        elif not self.quorate:
            self._fail_pending(
                CtdbError(ErrorCode.NO_QUORUM, f"view {list(view.members)} has no quorum")
            )
        if not self.quorate:
            if self.synced:
                log.warning(
                    "view %s has no quorum: out of sync until it is regained", list(view.members)
                )
            self.synced = False
            self._round = None
        elif joined or not self.synced or self._round is not None or self._behind(view):
            # A round cut short by a view change starts again with the new
            # view, also where it was over: a member still waiting for a
            # snapshot (from a departed source, or sent in the old view and
            # now delivered in the new one, where its round ignores it)
            # needs everyone's offer again. Whether anyone still waits is
            # known alike everywhere (`_catching_up`), so every member
            # decides alike.
            self._start_round(view)
        else:
            # Members in sync went through one more quorate view (see
            # merge.freshest_copy); all of them, at this same position.
            self.node.epochs.set(self.node.epochs.epoch + 1)
        if self.quorate and self.node.pnn in view:
            # Survivors delivered what we delivered in the old view; joiners
            # hold it once the round just started is done (see `_stable`).
            self._check_stable()
        self.listener.on_ordered_state()
        if failure is not None:
            self.resync(failure)

    def _start_round(self, view: View) -> None:
        self._round = SyncRound(view.view_id, view.members)
        offer = {
            "view_id": view.view_id,
            "synced": self.synced,
            "damaged": self.damaged,
            "epoch": self.node.epochs.epoch,
            "numbered": self.node.epochs.numbered,
            "incarnation": self.node.epochs.incarnation,
            "flags": self.node.flags,
            "dbs": [
                [db.name, db.kind.value, db.seqnum(), db.history()] for db in self.node.dbs.values()
            ],
        }
        msg = Ordered(self.node.pnn, next(self._seq), "offer", offer)
        self.node.transport.broadcast(encode(msg))

    def _needs_snapshot(self) -> bool:
        r = self._round
        return r is not None and bool(r.awaiting)

    def _on_offer(self, msg: Ordered) -> None:
        r = self._round
        if r is None or msg.args.get("view_id") != r.view_id or r.plan is not None:
            return
        r.offers[msg.origin] = msg.args
        if set(r.offers) != set(r.members):
            return
        # Every member now computes the same plan from the same offers.
        plan = make_plan(r.offers)
        r.plan, r.epoch = plan.sources, plan.epoch
        self.node.epochs.number(r.epoch)
        self.flags = plan.flags
        me = self.node.pnn
        needs = plan.needs[me]
        self._catching_up = (r.view_id, {p for p in r.members if plan.needs[p]})
        self.stability.mark_plan()
        if not self._catching_up[1]:
            self._plan_done()  # every member holds the same copies already
        r.awaiting = needs
        if not self.synced:
            # What members in sync applied up to here is in the snapshots we
            # are about to get; what only members out of sync saw (sent while
            # cut off, or while nobody was in sync) was applied nowhere, and
            # stays so even where that member is now the source: its sender
            # learns that now.
            self._drop_backlog()
        # Sources send what others need, as of this position in the stream.
        for name, src in plan.sources.items():
            receivers = plan.receivers(name, r.members)
            if src == me and receivers:
                db = self.node.db_by_name(name)
                self._send_snapshot(r, db, plan.offered(name, receivers))
        if not needs:
            self._finish_round()

    def _send_snapshot(self, r: SyncRound, db: Database, offered: list[Mark]) -> None:
        """Broadcast our copy of `db` as of this position in the stream.

        A persistent copy every receiver already holds (a restarted node that
        missed no commit: merge.same_copy against our copy *now*, so nothing
        applied since the offers is missed) is sent as a token, not records.
        """
        mark = (db.seqnum(), db.history())
        unchanged = db.kind is DbKind.PERSISTENT and all(same_copy(m, mark) for m in offered)
        snap = {
            "view_id": r.view_id,
            "name": db.name,
            "kind": db.kind.value,
            "unchanged": unchanged,
            "records": [] if unchanged else to_wire(db.local.items()),
            "recoveries": self.recoveries,
            # Lock queues are replicated state like the records: a joiner
            # without them would reject the holder's unlock.
            "locks": [
                [key, q.to_wire()] for (dbid, key), q in self.replica.locks.items() if dbid == db.id
            ],
            # Stability is state too: the receiver must not read as stable
            # what is not stable yet (see `_plan_done`).
            "dirty": [
                [key, w[0], w[1], sorted(w[2])]
                for (dbid, key), w in self.stability.dirty.items()
                if dbid == db.id
            ],
        }
        msg = Ordered(self.node.pnn, next(self._seq), "snapshot", snap)
        self.node.transport.broadcast(encode(msg))

    def _drop_backlog(self) -> None:
        for msg in self._backlog:
            if msg.origin != self.node.pnn:
                continue
            fut = self._pending.pop(msg.seq, None)
            if fut is not None and not fut.done():
                fut.set_exception(
                    CtdbError(ErrorCode.RETRY, "not applied: this node was out of sync")
                )
        self._backlog.clear()

    def _behind(self, view: View) -> bool:
        return any(p in view for p in self._catching_up[1])

    def _on_synced(self, msg: Ordered) -> None:
        """A member installed every snapshot of the plan it needed."""
        view_id, behind = self._catching_up
        if msg.args["view_id"] == view_id and msg.origin in behind:
            behind.discard(msg.origin)
            if not behind:
                self._plan_done()

    def _plan_done(self) -> None:
        """Every member now holds the plan's copies (see Stability.plan_done)."""
        self.stability.plan_done()
        self._check_stable()

    def _on_snapshot(self, msg: Ordered) -> None:
        r = self._round
        if r is None or r.plan is None or msg.args.get("view_id") != r.view_id:
            return
        name = str(msg.args["name"])
        if name not in r.awaiting:
            return
        db = self.node.attach(name, DbKind.parse(str(msg.args["kind"])))
        if not msg.args.get("unchanged"):
            records = from_wire(msg.args["records"])
            db.local.write_batch(records, replace_all=True)
            if not db.replicated:
                self.replica.markers[db.id] = {k for k, rec in records.items() if rec.deleted}
        self.recoveries = int(msg.args.get("recoveries", self.recoveries))
        # Lock queues are state too: take the donor's.
        for stale in [k for k in self.replica.locks if k[0] == db.id]:
            del self.replica.locks[stale]
        for key, entries in msg.args.get("locks", []):
            q = LockQueue.from_wire(entries)
            self.replica.locks[(db.id, bytes(key))] = q
            try:
                self.replica.advance(db, bytes(key), q)
            finally:
                self._act()
        dirty = self.stability.dirty
        for stale in [ref for ref in dirty if ref[0] == db.id]:
            del dirty[stale]
        for key, origin, seq, members in msg.args["dirty"]:
            write = (int(origin), int(seq), frozenset(int(p) for p in members))
            dirty[(db.id, bytes(key))] = self.stability.pre_plan[(db.id, bytes(key))] = write
        r.awaiting.discard(name)
        if not r.awaiting:
            self._finish_round()

    def _finish_round(self) -> None:
        assert self._round is not None
        # The copy we now hold may come from a member whose purge at an
        # earlier view change failed half-way (it resynced, and the plan
        # took its copy all the same, as the freshest): departed owners
        # must not keep their locks, and writes queued behind them must
        # not be lost. Members that followed the view changes hold no such
        # entries, so this changes nothing there. Entries go by incarnation:
        # after the whole cluster restarted, a persistent list still holds
        # the entries of clients of the members' previous runs.
        incarnations = {p: int(o["incarnation"]) for p, o in self._round.offers.items()}
        self._purge(lambda o: o[0] not in self.view)
        self._purge_entries(record_calls.departed(incarnations))
        self.node.epochs.set(self._round.epoch)
        view_id, behind = self._catching_up
        took_copies = view_id == self._round.view_id and self.node.pnn in behind
        if took_copies and self._served:
            # Views without us have passed, and their purges took our
            # clients' entries.
            self.listener.fence_owners()
        self._served = True
        if took_copies:
            msg = Ordered(self.node.pnn, 0, "synced", {"view_id": view_id})
            self.node.transport.broadcast(encode(msg))
        self._round = None
        self.synced = True
        self.damaged = False
        backlog, self._backlog = self._backlog, []
        for msg in backlog:
            self._apply(msg)
            if not self.synced:
                return  # applying it failed: we resync (see _apply)
        self._release_orphans()
        log.info("in sync in view %s", list(self.view.members))
        self.listener.on_ordered_state()

    def _release_orphans(self) -> None:
        """Release what our clients hold or wait for in the queues but no longer want.

        While we were out of sync our releases and withdrawals were dropped
        with the backlog (or never delivered), but the lock queues we are
        now in sync with may still hold them: the locks of clients that
        disconnected, and the places in line of fetch_locks that failed
        (a lock nobody waits for and nobody was told they hold would stay
        locked for good once it reaches the head).
        """
        me = self.node.pnn
        # Grants the state we took over does not show were never stable: the
        # client hears NOT_LOCKED at its unlock.
        self._granted = {
            g for g in self._granted if (q := self.replica.locks.get(g[1:])) and q.holder == g[0]
        }
        gone: set[Owner] = set()
        unwanted: set[tuple[Owner, int, bytes]] = set()
        for (dbid, key), q in self.replica.locks.items():
            for owner, kind, _ in q.entries:
                if owner[0] != me:
                    continue
                if owner[1] not in self._sessions:
                    gone.add(owner)
                elif kind == "lock":
                    mine = (owner, dbid, key)
                    if mine not in self._lock_waiters and mine not in self._granted:
                        unwanted.add(mine)
        for owner in sorted(gone):
            self._broadcast("release", {"owner": owner})
        for owner, dbid, key in sorted(unwanted):
            self._broadcast("withdraw", {"db": dbid, "key": key, "owner": owner})


async def _until(fut: asyncio.Future[Any], deadline: float, what: str) -> Any:
    """Wait for `fut` until `deadline` (loop time), then fail with TIMEOUT."""
    remaining = deadline - asyncio.get_running_loop().time()
    try:
        return await asyncio.wait_for(asyncio.shield(fut), max(remaining, 0))
    except TimeoutError:
        raise CtdbError(ErrorCode.TIMEOUT, what) from None
