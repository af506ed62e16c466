"""View changes and state-transfer rounds of the ordered engine.

A view change is delivered at the same position of the stream on every
member, so each member decides the same: purge what departed members held,
and, when someone joined or is behind, run a round. In a round every member
offers what it holds (`ctdb.engines.ordered.sync`: the offers and the plan
every member computes from them alike); each member says it numbered the
plan's epoch (`numbered`), and the epoch begins once every member did; the plan's
sources broadcast snapshots of the databases others need, with the lock
queues and the stability state that go with them; a member that installed
its snapshots says so (`synced`), and applies what it queued meanwhile.

`Rounds` is a part of `OrderedEngine` and works on its state: `RoundsHost`
says which (the replica, stability, the backlog, the local clients' locks).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines import record_calls
from ctdb.engines.host import Host
from ctdb.engines.merge import Mark, from_wire, same_copy, to_wire
from ctdb.engines.ordered import samba_views
from ctdb.engines.ordered.local_clients import LocalClients
from ctdb.engines.ordered.locks import LockQueue, Owner
from ctdb.engines.ordered.replica import Replica
from ctdb.engines.ordered.requests import Requests
from ctdb.engines.ordered.samba_grants import SambaGrants
from ctdb.engines.ordered.stability import Stability
from ctdb.engines.ordered.sync import Bump, SyncRound, make_plan
from ctdb.protocol.messages import Ordered
from ctdb.storage.database import Database, DbKind
from ctdb.storage.entries import Entry
from ctdb.storage.placement import db_id
from transport.base import View

log = logging.getLogger("ctdb.engines.ordered")


class StreamListener(Protocol):
    """Who runs the engine (ctdb.server.stream) and mirrors its state for CTDB's tools."""

    def on_ordered_state(self) -> None:
        """Our sync or quorum state, a generation or the agreed flags changed."""

    def rejoin(self) -> None:
        """Leave the group and join again, for a state transfer."""

    def fence_owners(self) -> None:
        """We were out of the group: the others purged our clients' entries."""


class RoundsHost(Protocol):
    """What a round reads and changes of its engine (`ctdb.engines.ordered.engine`)."""

    node: Host
    listener: StreamListener
    view: View
    replica: Replica
    stability: Stability
    synced: bool
    damaged: bool
    position: int
    recoveries: int
    flags: dict[int, int]
    #: our own operations in the stream, until they are delivered
    requests: Requests
    #: operations delivered while this node waits for its snapshot
    backlog: list[Ordered]
    #: what our clients hold and wait for in the lock queues
    clients: LocalClients
    samba: SambaGrants

    @property
    def quorate(self) -> bool: ...

    def apply(self, msg: Ordered) -> None: ...

    def counted(self, msgs: list[Ordered]) -> int: ...

    def act(self) -> None: ...

    def broadcast(self, op: str, args: dict[str, Any]) -> None: ...

    def purge(self, gone: Callable[[Owner], bool]) -> None: ...

    def purge_entries(self, gone: Callable[[Entry], bool]) -> None: ...

    def drop_backlog(self) -> None: ...

    def check_stable(self) -> None: ...

    def resync(self, why: str, *, damaged: bool = True) -> None: ...


#: The operations a round sends itself (`Rounds.on_message` takes them).
ROUND_OPS = frozenset({"offer", "numbered", "snapshot", "synced"})


class Rounds:
    def __init__(self, engine: RoundsHost) -> None:
        self.engine = engine
        #: the round in progress, if any
        self.round: SyncRound | None = None
        #: members that have yet to say they installed the snapshots of the
        #: last plan (view id, members): the same on every member, whose own
        #: round may be over already
        self.catching_up: tuple[int, set[int]] = (0, set())
        #: the members of the last plan's view (each holds the plan's copies once synced)
        self.plan_members: frozenset[int] = frozenset()
        #: this run completed a round (its clients may own entries)
        self.served = False
        #: the epoch of a view without a round, until every member numbered it
        self.bump: Bump | None = None

    def on_message(self, msg: Ordered) -> bool:
        """Take a round's own messages (offer, numbered, snapshot, synced); False for any other."""
        if msg.op == "offer":
            self.on_offer(msg)
        elif msg.op == "numbered":
            self.on_numbered(msg)
        elif msg.op == "snapshot":
            self.on_snapshot(msg)
        elif msg.op == "synced":
            self.on_synced(msg)
        else:
            return False
        return True

    def on_view(self, view: View) -> None:
        """Handle a view change at its position in the stream (same on every member)."""
        e = self.engine
        old = e.view
        e.view = view
        e.recoveries = 0
        self.bump = None  # not adopted in its view: the next one numbers above it
        left = set(old.members) - set(view.members)
        joined = set(view.members) - set(old.members)
        failure = None
        if left:
            try:
                e.purge(lambda o: o[0] in left)
                if e.quorate:
                    # Not in a minority view: its copy may still be the one a
                    # later round takes (when nobody is in sync), and the
                    # majority's clients' entries must not have gone from it.
                    # A round purges whoever is not in its view (_finish_round).
                    e.purge_entries(lambda entry: entry.pnn in left)
            except Exception as exc:  # as in _apply: our replica may now differ
                log.exception("releasing the locks and entries of departed nodes failed")
                failure = f"releasing departed nodes' locks failed: {type(exc).__name__}: {exc}"
        e.stability.forget(view)
        behind = self.catching_up[1]
        if left & behind:
            # A member that left will not say it installed its snapshots;
            # if it was the last one, the survivors hold the plan's copies:
            # enough once they are a majority of the cluster (see
            # Stability.stable), else the next plan's round must finish.
            behind -= left
            holders = self.plan_members & set(view.members)
            if (
                not behind
                and e.quorate
                and e.node.pnn in view
                and 2 * len(holders) > len(e.node.nodes)
            ):
                self._plan_done()
        if e.node.pnn not in view:
            e.requests.fail_all(CtdbError(ErrorCode.RETRY, "left the group"))
        elif not e.quorate:
            e.requests.fail_all(
                CtdbError(ErrorCode.NO_QUORUM, f"view {list(view.members)} has no quorum")
            )
        if not e.quorate:
            if e.synced:
                log.warning(
                    "view %s has no quorum: out of sync until it is regained", list(view.members)
                )
            e.synced = False
            self.round = None
        elif joined or not e.synced or self.round is not None or self.behind(view):
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
            # merge.freshest_copy): all of them number its epoch at this same
            # position, and adopt it once every one of them did (a member
            # may crash before it handles the view: seed 1040214 had one
            # stalled by a Samba client), above any they numbered before.
            # Meanwhile they serve, and count positions in the epoch before.
            epochs = e.node.epochs
            self.bump = Bump(view.view_id, max(epochs.epoch, epochs.numbered) + 1)
            epochs.number(self.bump.epoch)
            self._say_numbered(view.view_id)
        if e.quorate and e.node.pnn in view:
            # Survivors delivered what we delivered in the old view; joiners
            # hold it once the round just started is done (see `_stable`).
            e.check_stable()
        e.listener.on_ordered_state()
        if failure is not None:
            e.resync(failure)

    def _start_round(self, view: View) -> None:
        e = self.engine
        self.round = SyncRound(view.view_id, view.members)
        offer = {
            "view_id": view.view_id,
            "synced": e.synced,
            "damaged": e.damaged,
            "epoch": e.node.epochs.epoch,
            "position": max(e.position, 0),
            "numbered": e.node.epochs.numbered,
            "incarnation": e.node.epochs.incarnation,
            "flags": e.node.flags,
            "dbs": [
                [db.name, db.kind.value, db.seqnum(), db.history()] for db in e.node.dbs.values()
            ],
        }
        e.broadcast("offer", offer)

    def queueing(self) -> bool:
        """The round's plan gives us snapshots, and the round is not over: what
        the stream delivers waits in our backlog, to be applied in order."""
        r = self.round
        return r is not None and self.engine.node.pnn in r.behind

    def on_offer(self, msg: Ordered) -> None:
        e = self.engine
        r = self.round
        if r is None or msg.args.get("view_id") != r.view_id or r.plan is not None:
            return
        r.offers[msg.origin] = msg.args
        # Its flags as of its offer, until a later change in the stream (which
        # every member applies, in sync or not: applier.CONFIGURATION).
        e.flags[msg.origin] = int(msg.args["flags"])
        if set(r.offers) != set(r.members):
            return
        # Every member now computes the same plan from the same offers.
        plan = make_plan(r.offers)
        r.plan, r.epoch = plan.sources, plan.epoch
        e.node.epochs.number(r.epoch)
        self._say_numbered(r.view_id)
        e.flags = {p: e.flags[p] for p in r.members}
        me = e.node.pnn
        needs = plan.needs[me]
        r.behind = {p for p in r.members if plan.needs[p]}
        e.stability.mark_plan()
        r.awaiting = needs
        if not e.synced:
            # What members in sync applied up to here is in the snapshots we
            # are about to get; what only members out of sync saw (sent while
            # cut off, or while nobody was in sync) was applied nowhere, and
            # stays so even where that member is now the source: its sender
            # learns that now. Except a database attached since the members
            # made their offers: no offer names it, so no snapshot carries it,
            # and members in sync hold what the stream did to it since the
            # view change, which we apply too, after the snapshots.
            kept, e.backlog = split_new_databases(e.backlog, r.offers)
            e.drop_backlog()
            e.backlog = kept
        # Sources send what others need, as of this position in the stream.
        for name, src in plan.sources.items():
            receivers = plan.receivers(name, r.members)
            if src == me and receivers:
                db = e.node.db_by_name(name)
                self._send_snapshot(r, db, plan.offered(name, receivers))

    def _say_numbered(self, view_id: int) -> None:
        """We numbered the epoch of `view_id` durably: say so (see `on_numbered`)."""
        e = self.engine
        e.node.broadcast(Ordered(e.node.pnn, 0, "numbered", {"view_id": view_id}))

    def on_numbered(self, msg: Ordered) -> None:
        """A member numbered the epoch of its view durably.

        The epoch begins once every member did, not at our plan: a member
        may deliver every offer while another never delivers the last one
        (agreed delivery: its sender crashed, or was cut off, right after
        delivering it). Had we adopted the epoch then, that other member
        would not know the number was handed out, and a later round
        without us would number the same epoch for another history; when
        nobody is in sync, `merge.freshest_copy` would then compare copies
        of two histories as one (simulator, vs seed 1009198: a stale copy
        at epoch 5, position 0, taken over a copy at epoch 5 holding an
        acknowledged commit). Once every member numbered the epoch, every
        later quorate view holds one of them.
        """
        e = self.engine
        r, bump = self.round, self.bump
        view_id = msg.args.get("view_id")
        if bump is not None and view_id == bump.view_id:
            bump.numbered.add(msg.origin)
            if bump.numbered == set(e.view.members):
                self.bump = None
                e.node.epochs.set(bump.epoch)
                e.position = 0
            return
        if r is None or r.plan is None or view_id != r.view_id:
            return
        r.numbered.add(msg.origin)
        if not r.agreed:
            return
        # What we queued so far, members in sync applied before the epoch
        # began: it counts in the epoch before (see `_finish_round`).
        r.carried = e.counted(e.backlog)
        self.catching_up = (r.view_id, set(r.behind))
        self.plan_members = frozenset(r.members)
        if not r.behind:
            self._plan_done()  # every member holds the same copies already
        if not r.awaiting:
            self._finish_round()

    def _send_snapshot(self, r: SyncRound, db: Database, offered: list[Mark]) -> None:
        """Broadcast our copy of `db` as of this position in the stream.

        A persistent copy every receiver already holds (a restarted node that
        missed no commit: merge.same_copy against our copy *now*, so nothing
        applied since the offers is missed) is sent as a token, not records.
        """
        e = self.engine
        mark = (db.seqnum(), db.history())
        unchanged = db.kind is DbKind.PERSISTENT and all(same_copy(m, mark) for m in offered)
        snap = {
            "view_id": r.view_id,
            "name": db.name,
            "kind": db.kind.value,
            "unchanged": unchanged,
            "records": [] if unchanged else to_wire(samba_views.published_items(e.samba, db)),
            # Lock queues are replicated state like the records: a joiner
            # without them would reject the holder's unlock.
            "locks": [
                [key, q.to_wire()] for (dbid, key), q in e.replica.locks.items() if dbid == db.id
            ],
            # Stability is state too: the receiver must not read as stable
            # what is not stable yet (see `_plan_done`).
            "dirty": [
                [key, w[0], w[1], sorted(w[2])]
                for (dbid, key), w in e.stability.dirty.items()
                if dbid == db.id
            ],
        }
        e.broadcast("snapshot", snap)

    def behind(self, view: View) -> bool:
        return any(p in view for p in self.catching_up[1])

    def on_synced(self, msg: Ordered) -> None:
        """A member installed every snapshot of the plan it needed (always
        after every `numbered` of its round: it ends its round no sooner)."""
        view_id, behind = self.catching_up
        if msg.args["view_id"] == view_id and msg.origin in behind:
            behind.discard(msg.origin)
            if not behind:
                self._plan_done()

    def _plan_done(self) -> None:
        """Every member now holds the plan's copies (see Stability.plan_done)."""
        e = self.engine
        e.stability.plan_done()
        e.check_stable()

    def on_snapshot(self, msg: Ordered) -> None:
        e = self.engine
        r = self.round
        if r is None or r.plan is None or msg.args.get("view_id") != r.view_id:
            return
        name = str(msg.args["name"])
        if name not in r.awaiting:
            return
        db = e.node.attach(name, DbKind.parse(str(msg.args["kind"])))
        if not msg.args.get("unchanged"):
            records = from_wire(msg.args["records"])
            db.local.write_batch(records, replace_all=True)
            if not db.replicated:
                e.replica.markers[db.id] = {k: None for k, rec in records.items() if rec.deleted}
        # Lock queues are state too: take the donor's.
        for stale in [k for k in e.replica.locks if k[0] == db.id]:
            del e.replica.locks[stale]
        for key, entries in msg.args.get("locks", []):
            q = LockQueue.from_wire(entries)
            e.replica.locks[(db.id, bytes(key))] = q
            try:
                e.replica.advance(db, bytes(key), q)
            finally:
                e.act()
        dirty = e.stability.dirty
        for stale in [ref for ref in dirty if ref[0] == db.id]:
            del dirty[stale]
        for key, origin, seq, members in msg.args["dirty"]:
            write = (int(origin), int(seq), frozenset(int(p) for p in members))
            dirty[(db.id, bytes(key))] = e.stability.pre_plan[(db.id, bytes(key))] = write
        r.awaiting.discard(name)
        if not r.awaiting and r.agreed:
            self._finish_round()

    def _finish_round(self) -> None:
        e = self.engine
        assert self.round is not None
        # The copy we now hold may come from a member whose purge at an
        # earlier view change failed half-way (it resynced, and the plan
        # took its copy all the same, as the freshest): departed owners
        # must not keep their locks, and writes queued behind them must
        # not be lost. Members that followed the view changes hold no such
        # entries, so this changes nothing there. Entries go by incarnation:
        # after the whole cluster restarted, a persistent list still holds
        # the entries of clients of the members' previous runs.
        incarnations = {p: int(o["incarnation"]) for p, o in self.round.offers.items()}
        e.purge(lambda o: o[0] not in e.view)
        e.purge_entries(record_calls.departed(incarnations))
        e.node.epochs.set(self.round.epoch)
        # The epoch began when every member had numbered it: what we carried
        # from before that, members in sync applied before it.
        e.position = -self.round.carried
        took_copies = e.node.pnn in self.round.behind
        if took_copies and self.served:
            # Views without us have passed, and their purges took our
            # clients' entries.
            e.listener.fence_owners()
        self.served = True
        if took_copies:
            msg = Ordered(e.node.pnn, 0, "synced", {"view_id": self.round.view_id})
            e.node.broadcast(msg)
        self.round = None
        e.synced = True
        e.damaged = False
        backlog, e.backlog = e.backlog, []
        for msg in backlog:
            e.apply(msg)
            if not e.synced:
                return  # applying it failed: we resync (see _apply)
        e.clients.release_orphans()
        log.info("in sync in view %s", list(e.view.members))
        e.listener.on_ordered_state()


def split_new_databases(
    backlog: list[Ordered], offers: dict[int, Any]
) -> tuple[list[Ordered], list[Ordered]]:
    """`backlog` as (the operations on databases no offer names, attached in the
    stream since the view change, if members in sync applied them; the rest).

    (vs campaign seed 3216605: a member in sync applied a client's attach after
    it had made its offer, the joiners dropped it with their backlog, and the
    client's writes to the new database were applied on that member only.)"""
    if not any(offer["synced"] for offer in offers.values()):
        return [], backlog  # nobody applied them: dropped like the rest
    offered = {entry[0] for offer in offers.values() for entry in offer["dbs"]}
    new: set[int] = set()
    kept, rest = [], []
    for msg in backlog:
        if msg.op == "attach" and msg.args["name"] not in offered:
            new.add(db_id(msg.args["name"]))
            kept.append(msg)
        elif msg.args.get("db") in new:
            kept.append(msg)
        else:
            rest.append(msg)
    return kept, rest
