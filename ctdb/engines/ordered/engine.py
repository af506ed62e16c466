"""The ordered engine: what clients ask of it (the design is in the package
docstring; the stream's side, applying what is delivered, is in applier.py;
view changes and state-transfer rounds are in rounds.py)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines import flows, record_calls
from ctdb.engines.answers import Answers
from ctdb.engines.effects import Serving
from ctdb.engines.flows import Flow
from ctdb.engines.ordered import samba_views, waits
from ctdb.engines.ordered.applier import StreamApplier
from ctdb.engines.ordered.local_clients import LocalClients, withdrawal
from ctdb.engines.ordered.locks import QueueFull
from ctdb.engines.ordered.reads import Reads
from ctdb.engines.ordered.replica import Replica
from ctdb.engines.ordered.requests import Requests
from ctdb.engines.ordered.rounds import Rounds, StreamListener
from ctdb.engines.ordered.samba_grants import SambaGrants
from ctdb.engines.ordered.stability import Stability
from ctdb.engines.ordered.stream_gate import StreamGate
from ctdb.engines.ordered.waits import Effect
from ctdb.engines.record_calls import RecordCall
from ctdb.engines.transactions import Transaction
from ctdb.engines.waiting import Answer, Waiting
from ctdb.protocol.messages import Ordered
from ctdb.storage.database import Database, DbKind
from ctdb.storage.ltdb import Record
from ctdb.storage.placement import db_id
from transport.base import View

if TYPE_CHECKING:
    from ctdb.engines.host import Host

log = logging.getLogger("ctdb.engines.ordered")

T = TypeVar("T")

#: Markers proposed per database in one vacuum message.
VACUUM_BATCH = 1000


class OrderedEngine(StreamApplier):
    def __init__(self, node: Host, listener: StreamListener) -> None:
        self.node = node
        self.listener = listener
        #: the replicated state: records, lock queues, entry lists, markers
        self.replica = Replica(node.pnn, node, node.stats)
        #: who waits for an answer of the parts below, until when
        self.waiting = Waiting()
        #: what our clients hold and wait for in the lock queues
        self.clients = LocalClients(node.pnn, self.replica, self.broadcast, self.waiting)
        #: records lent to Samba's clients here, for writes in place (REQ_CALL)
        self.samba = SambaGrants(self)
        #: the stream's events, each handled once the shared chains it touches are free
        self.gate = StreamGate(
            node.dbs,
            self.replica.locks,
            node.stats,
            lambda: node.tunable("RecoverTimeout"),
            lambda why, damaged: self.resync(why, damaged=damaged),
            node,
        )
        self.synced = False
        #: a local write failed since our copies were last in sync: they may
        #: lack or have lost anything (see `freshest_copy` in engines.merge)
        self.damaged = False
        #: operations applied in sync since our epoch began: members of one
        #: epoch applied prefixes of one order, so the longest holds every
        #: write any of them applied (see `freshest_copy` in engines.merge)
        self.position = 0
        self.view: View = node.transport.view
        #: view changes and state-transfer rounds
        self.rounds = Rounds(self)
        #: operations delivered while this node waits for its snapshot
        self.backlog: list[Ordered] = []
        #: configuration events (forced recoveries, node flag changes) applied
        #: in the current view: part of the agreed generation
        self.recoveries = 0
        #: every member's administrative flags, as agreed in the stream
        self.flags: dict[int, int] = {node.pnn: 0}
        #: which writes every member holds (see stability.py)
        self.stability = Stability(
            node.pnn,
            self._send,
            lambda: len(node.nodes),
            self.waiting,
            node,
        )
        #: our own operations in the stream, until they are delivered
        self.requests = Requests(
            node.pnn, node.epochs.incarnation, self.stability, self.waiting, node.stats
        )
        #: reads: local where that is linearizable, else after a read barrier
        self.reads = Reads(self)
        self._carry_out = functools.partial(waits.carry_out, node)

    # -- serving state ---------------------------------------------------------------

    @property
    def quorate(self) -> bool:
        return 2 * len(self.members) > len(self.node.nodes)

    @property
    def serving(self) -> bool:
        return self.synced and self.quorate and self.rounds.round is None

    # -- client operations -------------------------------------------------------------

    def deadline(self) -> float:
        return self.node.now() + self.node.tunable("CallTimeout")

    def run(self, flow: Flow[Effect, T]) -> Awaitable[T]:
        """Carry out a client's flow (see waits.py) on the event loop."""
        return flows.drive(flow, self._carry_out)

    def submitting(
        self, op: str, args: dict[str, Any], deadline: float | None = None, *, serving: bool = True
    ) -> Flow[Effect, Any]:
        """`op` in the stream once this node serves (`serving`: else at once);
        its result (see `Requests.deliver`)."""
        if deadline is None:
            deadline = self.deadline()
        if serving and not self.node.serving:
            yield Serving(deadline)
        msg = self.requests.message(op, args)
        wait = self.waiting.expect(msg.seq)
        try:
            self._send(msg)
            return (
                yield Answer(wait, deadline, f"{op} was not delivered in time: outcome unknown")
            )
        finally:
            self.waiting.forget(msg.seq, wait)
            self.requests.forget(msg.seq)

    def send_barrier(self, to: Answers) -> int:
        """A read barrier (see barriers.py) that answers `to` when delivered: its seq."""
        msg = self.requests.barrier(to)
        self.node.broadcast(msg, to=self.node.pnn)
        return msg.seq

    def fetch(self, db: Database, key: bytes, session: object) -> Any:
        return self.reads.fetch(db, key, session)

    def _apply_sync(self, origin: int, args: dict[str, Any]) -> None:
        """A read barrier: its origin's readers go on once it is delivered."""

    def store(self, db: Database, key: bytes, value: bytes, session: object) -> Any:
        return self.run(self.storing(db, key, value, session))

    def storing(self, db: Database, key: bytes, value: bytes, session: object) -> Flow[Effect, Any]:
        owner = self.clients.owner(session)
        args = {"db": db.id, "key": key, "value": value, "owner": owner, "waiters": self._waiters()}
        return (yield from self.submitting("store", self._volatile_write(args)))

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

    def lock(
        self, db: Database, key: bytes, session: object, deadline: float | None = None
    ) -> Awaitable[bytes | None]:
        return self.run(self.locking(db, key, session, deadline))

    def locking(
        self, db: Database, key: bytes, session: object, deadline: float | None = None
    ) -> Flow[Effect, bytes | None]:
        """Our client's place in the record's lock queue, then the lock: the value."""
        if deadline is None:
            deadline = self.deadline()
        owner = self.clients.owner(session)
        if self.clients.holds(owner, db.id, key):
            return (yield from waits.read(db, key, deadline))
        claim = (owner, db.id, key)
        wait = self.waiting.expect(claim)
        req = self.clients.new_request(claim)
        args = {"db": db.id, "key": key, "owner": owner, "waiters": self._waiters(), "req": req}
        try:
            yield from self.submitting("lock", args, deadline)
            result: bytes | None = yield Answer(
                wait, deadline, f"record {key!r} stayed locked by another client"
            )
            self.clients.granted[claim] = req
            return result
        except QueueFull:
            raise  # never queued: nothing to withdraw
        except CtdbError:
            # Our place in the queue (or the lock itself, granted a moment
            # too late) must not outlive the request: withdraw it, in order.
            self.broadcast("withdraw", withdrawal(claim, req))
            raise
        finally:
            self.waiting.forget(claim, wait)
            self.clients.done_waiting(claim)

    def unlock(
        self,
        db: Database,
        key: bytes,
        session: object,
        value: bytes | None,
        *,
        serving: bool = True,
        deadline: float | None = None,
    ) -> Awaitable[None]:
        return self.run(self.unlocking(db, key, session, value, serving=serving, deadline=deadline))

    def unlocking(
        self,
        db: Database,
        key: bytes,
        session: object,
        value: bytes | None,
        *,
        serving: bool = True,
        deadline: float | None = None,
    ) -> Flow[Effect, None]:
        """The unlock (with `value` written, unless None) in the stream.

        `serving` False: sent without waiting for this node to serve (a
        stopped node gives back what its Samba clients held)."""
        owner = self.clients.owner(session)
        q = self.replica.locks.get((db.id, key))
        if q is None or q.holder != owner:
            self.clients.granted.pop((owner, db.id, key), None)  # a grant a state transfer undid
            raise CtdbError(ErrorCode.NOT_LOCKED, f"record {key!r} is not locked by this client")
        args = {"db": db.id, "key": key, "owner": owner, "value": value}
        yield from self.submitting("unlock", self._volatile_write(args), deadline, serving=serving)
        self.clients.granted.pop((owner, db.id, key), None)

    def release_all(self, session: object) -> None:
        self.clients.release_all(session)

    def broadcast(self, op: str, args: dict[str, Any]) -> None:
        """An ordered operation nobody waits for."""
        self._send(self.requests.unanswered(op, args))

    def call(self, db: Database, key: bytes, call: RecordCall) -> Any:
        """One ordered operation; every member runs the call at its position.

        On a replicated database it is a commit, acknowledged once stable.
        """
        record_calls.check(call)
        args: dict[str, Any] = {"db": db.id, "key": key, "call": record_calls.to_wire(call)}
        if db.replicated:
            args["stable"] = True
            return self.run(self.submitting("call", args))
        return self.run(self.submitting("call", self._volatile_write(args)))

    def commit(self, tx: Transaction) -> Awaitable[int]:
        return self.run(self.committing(tx))

    def committing(self, tx: Transaction) -> Flow[Effect, int]:
        """The transaction in the stream, validated where it is delivered:
        the new sequence number (nothing to write: nothing sent)."""
        earlier = tx.drop_unchanged()
        if not tx.writes:
            tx.check_reads(earlier)
            return tx.db.seqnum()
        reads = [[k, rsn] for k, rsn in tx.reads.items()]
        writes = [[k, v] for k, v in tx.writes.items()]
        args = {"db": tx.db.id, "reads": reads, "writes": writes}
        result: int = yield from self.submitting("commit", args)
        return result

    def attach(self, name: str, kind: DbKind) -> Awaitable[Database]:
        return self.run(self.attaching(name, kind))

    def attaching(self, name: str, kind: DbKind) -> Flow[Effect, Database]:
        """A database every member attaches at one position of the stream."""
        if self.node.dbs.get(db_id(name)) is None:
            yield from self.submitting("attach", {"name": name, "kind": kind.value})
        return self.node.attach(name, kind)

    async def wipe(self, db: Database) -> None:
        await self.run(self.submitting("wipe", {"db": db.id}))

    def recover(self) -> Awaitable[None]:
        return self.run(self.recovering())

    def recovering(self) -> Flow[Effect, None]:
        """A marker in the stream: a new generation where it is delivered. It is
        applied by members out of sync too (`applier.CONFIGURATION`), so it may
        land in a round: return once this node serves again, as `ctdb recover`
        returns once the recovery is over."""
        deadline = self.deadline()
        yield from self.submitting("recover", {}, deadline)
        if not self.node.serving:
            yield Serving(deadline)

    def _apply_recover(self, origin: int, args: dict[str, Any]) -> None:
        self.recoveries += 1
        self.listener.on_ordered_state()

    def announce_flags(self, flags: int) -> None:
        """Our flags changed (stop, ban, ...): every member learns it at one position.

        Sent without waiting for quorum or sync: a stopped node must still
        be able to say it continues.
        """
        self.broadcast("flags", {"flags": flags})

    def _apply_flags(self, origin: int, args: dict[str, Any]) -> None:
        self.flags[origin] = int(args["flags"])
        self.recoveries += 1  # a new generation, as a CTDB recovery would give
        self.listener.on_ordered_state()

    def traverse(self, db: Database) -> Awaitable[list[tuple[bytes, Record]]]:
        return self.run(self.traversing(db))

    def traversing(self, db: Database) -> Flow[Effect, list[tuple[bytes, Record]]]:
        """Every node holds every record: a local traverse is the whole database."""
        deadline = self.deadline()
        if not self.node.serving:
            yield Serving(deadline)
        if not db.shared:
            return sorted(db.live_items())
        return (yield from samba_views.traversing(self.samba, db, deadline))

    # -- reads wait for stable writes ------------------------------------------------

    def settled(self, db: Database, key: bytes) -> bool:
        """The key holds only stable writes here.

        We apply a write before every member has: until they all have, a
        failure can still take it back (a round after a lost quorum may take
        a copy without it), so a local read must not return it: that would
        be a dirty read.
        """
        return (db.id, key) not in self.stability.dirty

    async def settle(self, db: Database, key: bytes, deadline: float) -> None:
        await self.run(self.settling(db, key, deadline))

    def settling(self, db: Database, key: bytes, deadline: float) -> Flow[Effect, None]:
        """Return once this node serves and the key holds only stable writes
        (TIMEOUT at `deadline`), in the loop turn that found it so: a read
        right after sees no newer write."""
        ref = (db.id, key)
        while True:
            if not self.node.serving:
                yield Serving(deadline)
            if ref not in self.stability.dirty:
                return
            yield from self.waiting.registered(
                lambda waiter: self.stability.wait(waiter, ref),
                self.stability.unwait,
                deadline,
                f"a write to {key!r} did not become stable in time",
            )

    # -- vacuuming: every replica drops the same markers at the same position ----------

    def vacuum(self) -> None:
        """The first member proposes markers to remove; the stream applies it everywhere.

        Every member holds every record and applies the same stream, so a
        marker removed at one position is removed on every replica and no
        node is left with a copy it could bring back.
        """
        if not self.serving or self.members[0] != self.node.pnn:
            return
        # Proposals read the markers' records: in shared files, only while
        # no Samba client holds a chain (the next pass tries again).
        proposals = self.gate.try_whole(lambda: self.replica.vacuum_proposals(VACUUM_BATCH))
        for dbid, records in proposals or []:
            self.broadcast("vacuum", {"db": dbid, "records": records})
