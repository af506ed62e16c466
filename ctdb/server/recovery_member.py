"""What a member does when a leader recovers it: the recovery's steps, as controls.

A tcp recovery (`ctdb.engines.recovery`) is driven by the leader and done
by every active member: freeze (stop serving, answer what our copies are),
pull (send our records), changed (the keys we wrote since our base copy),
push (install the merged records), set_vnnmap (the new generation's map,
epoch and purge), thaw (serve the new generation). Each step names the
generation it belongs to, and a step of another generation than the one
the leader froze us for is refused: attempts cut short never mix.

A member follows one leader at a time (`_check_vote`), does its
whole-database work off the event loop and one attempt at a time (`bulk`),
and holds the migration messages of the generation it is about to enter
that peers which thawed first already send (`defer_if_early`). From its
answer to the freeze until thaw it holds its volatile files whole, so that
Samba's clients do not write in place under a recovery (`frozen_files`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines import persistent_calls
from ctdb.engines.merge import WireRecord, from_wire, to_wire
from ctdb.engines.migration import MigrationEngine
from ctdb.engines.vacuum import Vacuum
from ctdb.protocol.messages import Message
from ctdb.server.frozen_files import FrozenFiles
from ctdb.server.state import INACTIVE, INVALID_GENERATION, RecoveryMode
from ctdb.storage.database import Database, DbKind
from ctdb.storage.ltdb import Record

if TYPE_CHECKING:
    from ctdb.server.membership import ServerNode

log = logging.getLogger("ctdb.server.leader")
T = TypeVar("T")

#: Migration messages held while this node finishes its part of a recovery
#: that a peer has finished already (see `defer_if_early`); past it they are
#: dropped, as messages of another generation are (calls are re-sent).
MAX_DEFERRED = 10_000
#: The share of the leader's timeout for a freeze that a member may spend
#: waiting for clients to release the chain locks of its volatile files.
FREEZE_SHARE = 0.8


class RecoveryMember:
    def __init__(self, node: ServerNode, engine: MigrationEngine) -> None:
        self.node = node
        self.engine = engine
        #: the generation the leader froze us for; a recovery step of any other is stale
        self._frozen_generation = INVALID_GENERATION
        self._deferred: list[tuple[int, Message]] = []
        #: recovery steps our storage failed since we last thawed (`ctl_ban_failing`)
        self._storage_failures = 0
        #: volatile keys pushed to us since the last purge (`ctl_set_vnnmap`),
        #: by database id: copies of nodes that missed purges may come with them
        self._pushed: dict[int, set[bytes]] = {}
        #: the epoch of the last generation this run of the daemon served
        #: (None: none yet, so its clients own no entries)
        self._served_epoch: int | None = None
        #: Recovery's whole-database work runs off the event loop (see `bulk`).
        self.bulk_lock = threading.Lock()
        #: the volatile files held whole from the leader's freeze to thaw
        self.files = FrozenFiles(node.dbs, node.stats)

    def defer_if_early(self, src: int, msg: Message, generation: int) -> bool:
        """Hold a migration message of the generation we are about to thaw into.

        A peer that thawed before us already works in it: a record it handed
        over must not be dropped (its copy already names us dmaster).
        """
        node = self.node
        if (
            node.recovery_mode is not RecoveryMode.RECOVERY
            or generation != self._frozen_generation
            or generation == node.generation
        ):
            return False
        if len(self._deferred) < MAX_DEFERRED:
            self._deferred.append((src, msg))
        return True

    def freeze(self, generation: int) -> None:
        node = self.node
        if generation != self._frozen_generation:
            self._deferred.clear()  # held for a generation that will not start
        self._frozen_generation = generation
        if node.recovery_mode is not RecoveryMode.RECOVERY:
            node.frozen_at = time.monotonic()
            node.recovery_mode = RecoveryMode.RECOVERY
            node.publish_serving()  # in-place clients stop before the files are held
            node.serving_event.clear()
            node.transactions.cancel_all()
            self.engine.freeze()
            node.liveness.announce()

    def _check_vote(self, leader: int) -> None:
        """Follow one leader at a time, so that two leaders never serve at once.

        Views are each node's own: with the link 0-1 cut and both linked to
        2, node 0 sees {0, 2} and node 1 sees {1, 2}, both majorities. Node
        2 lets only the lowest active node it sees recover it, and not while
        the leader of its current generation is still connected and has not
        stepped down (a leader steps down, frozen, as soon as it sees a lower
        node). So at most one of 0 and 1 can gather a majority.
        """
        node = self.node
        if leader == node.pnn:
            return
        active = node.active_members()
        if not active or active[0] != leader:
            raise CtdbError(
                ErrorCode.RETRY,
                f"node {node.pnn} follows node {active[0] if active else '-'}, not node {leader}",
            )
        current = node.liveness.peers.get(node.leader)
        if (
            node.leader not in (-1, leader)
            and current is not None
            and current.leader == node.leader
            and not current.recovery_mode
            and not current.flags & INACTIVE
        ):
            raise CtdbError(
                ErrorCode.RETRY,
                f"node {node.pnn} still follows node {node.leader}, which has not stepped down",
            )

    async def bulk(self, work: Callable[[], T]) -> T:
        """Recovery's whole-database work, off the event loop and one at a time.

        Off the loop so that keepalives keep flowing (the frozen node touches
        no database meanwhile). A recovery attempt that timed out cannot stop
        its thread; the next attempt's pull or push waits for it instead of
        sharing the handle.
        """

        def locked() -> T:
            with self.bulk_lock:
                return work()

        try:
            result: T = await self.node.offload(locked)
        except Exception as exc:
            if not isinstance(exc, CtdbError) or exc.code == ErrorCode.IO:
                self._storage_failures += 1  # the leader sees IO, and may ban us for a row
            raise
        return result

    def _check_generation(self, args: dict[str, Any]) -> None:
        if args.get("generation") != self._frozen_generation:
            raise CtdbError(ErrorCode.RETRY, "recovery step from a superseded generation")

    async def ctl_freeze(self, src: int, args: dict[str, Any]) -> dict[str, Any]:
        node = self.node
        self._check_vote(src)
        generation = int(args["generation"])
        self.freeze(generation)
        # No client writes in place from here to thaw. The locks are taken on
        # this thread, once no earlier attempt's bulk work uses the handles.
        await self.bulk(lambda: None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FREEZE_SHARE * node.tunable("RecoverTimeout")
        try:
            await self.files.hold(deadline)
        except CtdbError as exc:
            if exc.code == ErrorCode.IO:  # a client would not let go of a chain
                self._storage_failures += 1
            raise
        # Frozen, we grant no more: these leases end within these seconds.
        leases = await node.liveness.leases_granted()
        if node.recovery_mode is not RecoveryMode.RECOVERY:
            self.files.release()  # thawed meanwhile: clients write in place again
            raise CtdbError(ErrorCode.RETRY, "this node thawed while it froze")
        if generation != self._frozen_generation:
            raise CtdbError(ErrorCode.RETRY, "a newer recovery froze this node meanwhile")
        dbs = list(node.dbs.values())
        # After any earlier attempt's push: its sequence numbers are the real ones.
        info = await self.bulk(lambda: {db.name: _recovery_info(db) for db in dbs})
        return {
            "epoch": node.epochs.epoch,
            "incarnation": node.epochs.incarnation,
            # A restarted run has served nothing yet, but its durable epoch
            # may be that of a generation the others missed (they purged).
            "served": node.epochs.epoch if self._served_epoch is None else self._served_epoch,
            # What our persistent copies can hold (merge.persistent_source).
            "thawed": node.epochs.thawed,
            "generation": node.generation,
            "view": list(node.transport.view.members),
            "leases": leases,
            "dbs": info,
        }

    async def ctl_pull(self, src: int, args: dict[str, Any]) -> list[Any]:
        """Our copy of a database: all of it, or the records of `keys` we hold."""
        self._check_generation(args)
        db = self.node.db(int(args["db_id"]))
        keys = None if args.get("keys") is None else [bytes(k) for k in args["keys"]]
        records, dropped = await self.bulk(lambda: _pullable(db, keys))
        if dropped:
            self.node.stats["corrupt_records_dropped"] += dropped
        return records

    def ctl_changed(self, src: int, args: dict[str, Any]) -> list[bytes]:
        """The keys we wrote or removed since our base copy (see merge.VolatilePlan)."""
        self._check_generation(args)
        changed = self.node.db(int(args["db_id"])).local.changed
        if changed is None:  # not tracking: recovery must not take that for "nothing"
            raise CtdbError(ErrorCode.RETRY, "this node does not track its changes")
        return sorted(changed)

    async def ctl_push(self, src: int, args: dict[str, Any]) -> None:
        """Install records recovery merged (all of them, or the ones that changed)."""
        self._check_generation(args)
        db = self.node.db(int(args["db_id"]))
        wire, replace_all = args["records"], bool(args["replace_all"])

        def install() -> dict[bytes, Record]:
            records = from_wire(wire)  # decoding 100k records takes a while: not on the loop
            db.local.write_batch(records, replace_all=replace_all)
            return records

        records = await self.bulk(install)
        if not db.replicated:
            self._pushed.setdefault(db.id, set()).update(records)
            # Our copy is now the one this recovery distributes: track from here.
            db.base = (int(args["base"][0]), int(args["base"][1]))
            db.local.track_changes()
            self.engine.vacuum.note_all(db, records)

    def ctl_vacuum(self, src: int, args: dict[str, Any]) -> int:
        """The key's lmaster removes deletion markers: drop our copies first (engines.vacuum)."""
        if not self.node.in_generation(int(args["generation"])):
            raise CtdbError(ErrorCode.RETRY, "vacuum from another generation")
        return Vacuum.drop_copies(self.node.db(int(args["db_id"])), args["records"])

    def ctl_set_vnnmap(self, src: int, args: dict[str, Any]) -> None:
        node = self.node
        self._check_generation(args)
        vnnmap = [int(p) for p in args["vnnmap"]]
        # A member we lost since the freeze left no trace here: it was not in
        # our old vnnmap, so its departure froze nothing. Migration messages
        # to it would vanish without a view change (tcp 51058: a record sent
        # across a cut had no dmaster afterwards), so this generation must not start.
        unseen = [p for p in vnnmap if p not in node.transport.view]
        if unseen:
            raise CtdbError(ErrorCode.RETRY, f"node {node.pnn} no longer sees nodes {unseen}")
        node.vnnmap = vnnmap
        node.leader = int(args["leader"])
        node.liveness.configure_lease()
        # A generation was served without us since we last served: its
        # recovery purged our clients' entries. (Not "the epoch moved by more
        # than one": an attempt that set some members' epochs and then failed
        # moves it too, with nothing served and nobody purged.)
        left_out = self._served_epoch is not None and int(args["served"]) > self._served_epoch
        # Written after the pushes: it certifies that our copies hold every
        # commit acknowledged up to this recovery.
        node.epochs.set(int(args["epoch"]))
        # Stamped with the new epoch, so the purge outranks every older copy.
        owners = {int(p): int(inc) for p, inc in args["incarnations"]}
        self.engine.calls.purge(owners, self._pushed)
        self._pushed = {}
        persistent_calls.purge(node, owners, node.leader)
        if left_out:
            node.owners.fence_all()

    async def ctl_thaw(self, src: int, args: dict[str, Any]) -> None:
        node = self.node
        self._check_generation(args)
        # A pull or push of an abandoned recovery attempt may still be running
        # in its thread: serve nothing until it is done.
        await self.bulk(lambda: None)
        self._check_generation(args)
        if node.flags & INACTIVE:
            raise CtdbError(ErrorCode.RETRY, f"node {node.pnn} became inactive")
        # On disk before we serve (merge.persistent_source): a disk that
        # refuses it leaves us frozen, and the leader tries again.
        node.epochs.thaw()
        node.generation = self._frozen_generation
        node.recovery_mode = RecoveryMode.NORMAL
        self.files.release()
        self._storage_failures = 0
        self._served_epoch = node.epochs.epoch
        node.liveness.new_generation()
        node.serving_event.set()
        node.last_recovery = {
            "duration": time.monotonic() - node.frozen_at,
            "finished": time.time(),
        }
        self.engine.reset()
        node.transactions.settle_all()
        node.liveness.announce()
        deferred, self._deferred = self._deferred, []
        for src, msg in deferred:
            node.messages.handle(src, msg)

    async def ctl_ban_failing(self, src: int, args: dict[str, Any]) -> bool:
        """Ban this node if its storage failed the leader's recoveries in a row (True).

        The leader counts the failures of its own attempts, and a success of
        its own ends the row. But a leader that was stopped for a while may
        read the failure of an attempt long gone, after this node served a
        generation with the others meanwhile (tcp seed 3234633: a healthy
        node banned for 30 s). Only this node knows whether its storage has
        worked since: it counts its failures since it last thawed.
        """
        node = self.node
        if self._storage_failures < int(args["failures"]):
            log.info(
                "not banned by node %d: %d recovery failures here since this node last served",
                src,
                self._storage_failures,
            )
            return False
        await node.control(node.pnn, "ban", {"seconds": args["seconds"]})
        return True


def _pullable(db: Database, keys: list[bytes] | None) -> tuple[list[WireRecord], int]:
    """Our copy of `db` (or of its `keys`) for a pull, and how many records
    without a CTDB header we dropped from it.

    Such a record is a foreign writer's (ours and Samba's clients always
    write the header): with no RSN it cannot be ranked against the others'
    copies, and a pull that failed on it failed every recovery after, on
    every node, until someone removed it. A volatile copy's is dropped here
    (we are frozen) and the cluster's copy of that key, if another node has
    one, replaces it. A persistent or replicated copy is never edited behind
    its sequence number: its pull fails, an I/O error that, repeated, gets
    this node banned while the others serve (`Leader._ban_culprit`).
    """
    records, headerless = db.local.sound_items(keys)
    if not headerless:
        return to_wire(records), 0
    first = headerless[0][:40]
    if db.kind is not DbKind.VOLATILE:
        raise CtdbError(
            ErrorCode.IO,
            f"{len(headerless)} record(s) of {db.name} have no CTDB header (a foreign writer's; "
            f"the first: key {first!r}): remove them, or move the file away and restart "
            "this node to take the cluster's copy",
        )
    for key in headerless:
        db.local.remove(key)
    log.error(
        "dropped %d record(s) without a CTDB header from %s (a foreign writer's; the first: "
        "key %r): the cluster's copy of each, if any, replaces it",
        len(headerless),
        db.name,
        first,
    )
    return to_wire(records), len(headerless)


def _recovery_info(db: Database) -> dict[str, Any]:
    """What the recovery plans (ctdb.engines.merge) need to know about our copy."""
    if db.replicated:
        return {
            "kind": db.kind.value,
            "seqnum": db.seqnum(),
            "history": db.history(),
            "base": None,
        }
    tracked = db.base is not None and db.local.changed is not None
    base = db.base if tracked else None
    return {"kind": db.kind.value, "seqnum": 0, "history": b"", "base": base}
