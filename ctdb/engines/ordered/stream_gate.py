"""The ordered stream, applied only under the chains it touches in files Samba's clients share.

Samba's clients lock a record's hash chain in this node's volatile file to
look at its header, and write the record in place while it is lent to this
node (`ctdb.engines.ordered.samba_grants`). Applying the stream reads and
writes those files, and libtdb would wait for a chain a client holds on the
event loop, holding the GIL, while the client may be waiting for this very
daemon (a g_lock holder asks PROCESS_EXISTS under the record's chain): a
deadlock. So each event of the stream (an ordered message or a view
change) is handled only once this node holds, without waiting, what it may
touch in shared files (`needs`): the record's chain for an operation on one
record, every chain of every shared file for anything that may touch many
(a state transfer, a view change's purge). A chain a client holds stalls
the stream here: that event and every later one wait, in their order, and
are tried again every `chains.RETRY`, as the tcp engine requeues work.

Stalling changes nothing the other members can tell apart from a slow
member: every member still handles the same events in the same order, only
later. Files no Samba client uses (`Database.shared`) are never locked, so
our own clients' databases see no difference at all; the simulator shares
the files in half its schedules and holds chains in them
(`tools.sim.faults`).
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ctdb.common.errors import CtdbError
from ctdb.engines.chains import RETRY
from ctdb.engines.host import Cancellable, Clock
from ctdb.engines.ordered.locks import LockQueue
from ctdb.protocol.messages import Ordered
from ctdb.storage.database import Database

log = logging.getLogger("ctdb.engines.ordered")

#: operations on the one record their `db` and `key` name
RECORD_OPS = frozenset({"store", "lock", "unlock", "withdraw", "call"})
#: operations that read or write no record
NO_RECORDS = frozenset({"applied", "sync", "attach", "flags", "recover"})

Ref = tuple[int, bytes]
T = TypeVar("T")
#: what an event needs held: (file, key) for one chain, (file, None) for all of them
Need = tuple[Database, bytes | None]


def needs(
    event: object, dbs: Mapping[int, Database], locked: Mapping[Ref, LockQueue]
) -> list[Need]:
    """The chains of shared files that handling `event` may touch.

    `locked`: the replicated lock queues by (db id, key); a release purges
    its owner from them, so it touches those records only.
    """
    if isinstance(event, Ordered):
        if event.op in NO_RECORDS:
            return []
        args = event.args
        if event.op in RECORD_OPS:
            db = _shared(dbs, args.get("db"))
            key = args.get("key")
            if db is None or not isinstance(key, bytes):
                return []  # nothing shared (an unknown one fails alike everywhere)
            q = locked.get((db.id, key))
            holder = q.holder if q is not None else None
            if holder is not None and holder != _owner(args) and event.op != "unlock":
                # It only queues behind the holder (or fails BUSY): the file
                # is not touched, so another node asking for a record lent
                # here does not wait for our clients to let go of its chain.
                return []
            return [(db, key)]
        if event.op == "release":
            # Only a record whose holder goes changes hands (and is read).
            owner = _owner(args)
            return [
                (db, key)
                for (dbid, key), q in locked.items()
                if q.holder in (None, owner) and (db := dbs.get(dbid)) is not None and db.shared
            ]
        if event.op == "vacuum":
            db = _shared(dbs, args.get("db"))
            if db is None:
                return []
            return [(db, bytes(key)) for key, _ in args.get("records", [])]
        if "db" in args:  # a commit, a wipe: that database, whole
            db = _shared(dbs, args["db"])
            return [] if db is None else [(db, None)]
    # A view change or a round's message (offers, snapshots, the backlog
    # applied after them): anything, anywhere.
    return [(db, None) for db in dbs.values() if db.shared]


def _shared(dbs: Mapping[int, Database], dbid: object) -> Database | None:
    db = dbs.get(dbid) if isinstance(dbid, int) else None
    return db if db is not None and db.shared else None


def _owner(args: Mapping[str, Any]) -> tuple[int, int] | None:
    owner = args.get("owner")
    if isinstance(owner, list | tuple) and len(owner) == 2:
        return (owner[0], owner[1])
    return None


def try_take(held: list[Need]) -> list[Need] | None:
    """Take every chain in `held` without waiting: the ones taken, or None
    (and none kept) if a client holds one."""
    taken: list[Need] = []
    try:
        for db, key in held:
            ok = db.local.try_lock_all() if key is None else db.local.try_lock_chain(key)
            if not ok:
                give_back(taken)
                return None
            taken.append((db, key))
    except BaseException:
        give_back(taken)  # (a lock call failed: keep none)
        raise
    return taken


def give_back(taken: list[Need]) -> None:
    """Release what `try_take` took: every lock, even when one release fails."""
    failure: BaseException | None = None
    for db, key in reversed(taken):
        try:
            if key is None:
                db.local.unlock_all()
            else:
                db.local.unlock_chain(key)
        except Exception as exc:
            failure = failure or exc
    if failure is not None:
        raise failure


class StreamGate:
    """Hands the stream's events on in order, each under the chains it needs."""

    def __init__(
        self,
        dbs: Mapping[int, Database],
        locked: Mapping[Ref, LockQueue],
        stats: Counter[str],
        limit: Callable[[], float],
        resync: Callable[[str, bool], None],
        clock: Clock,
    ) -> None:
        self.dbs = dbs
        self.locked = locked
        #: the node's counters: "stream_stalls" counts events a client's chain held up
        self.stats = stats
        #: how long (seconds) the stream may stall before the node resyncs (and
        #: what waits is dropped): it must then leave the group, whose other
        #: members wait for it to apply what they send
        self.limit = limit
        #: leave the group and rejoin for a state transfer: (why, whether our
        #: copy may be damaged)
        self.resync = resync
        #: events waiting behind one that found a chain held, with their handlers
        self._waiting: deque[tuple[object, Callable[[Any], None]]] = deque()
        self.clock = clock
        self._since = 0.0
        self._timer: Cancellable | None = None

    @property
    def stalled(self) -> bool:
        return bool(self._waiting)

    def enter(self, event: object, handle: Callable[[Any], None]) -> None:
        """Handle `event` now if nothing waits and its chains are free, else queue it."""
        if not self._waiting and type(event) is Ordered and event.op in RECORD_OPS:
            # The usual case, first: one record in a file no Samba client
            # shares (what `needs` says of it, without its other cases).
            db = self.dbs.get(event.args["db"])  # (decoding checked it is there)
            if db is None or not db.shared:
                handle(event)
                return
        if self._waiting or not self._run(event, handle):
            if not self._waiting:
                self.stats["stream_stalls"] += 1
                self._since = self.clock.now()
            self._waiting.append((event, handle))
            self._arm()

    def files_free(self) -> bool:
        """No client holds a chain in a shared file right now."""
        return self.try_whole(lambda: True) is True

    def try_whole(self, read: Callable[[], T]) -> T | None:
        """`read()` now, with every shared file held whole; None if a client
        holds a chain or the stream is stalled."""
        if self._waiting:
            return None
        taken = try_take([(db, None) for db in self.dbs.values() if db.shared])
        if taken is None:
            return None
        try:
            return read()
        finally:
            give_back(taken)

    def _run(self, event: object, handle: Callable[[Any], None]) -> bool:
        need = needs(event, self.dbs, self.locked)
        if not need:  # the usual case: no Samba client shares what it touches
            handle(event)
            return True
        try:
            taken = try_take(need)
        except CtdbError as exc:
            self._locking_failed(exc)  # (the event is dropped, with what waits)
            return True
        if taken is None:
            return False
        try:
            handle(event)
        finally:
            try:
                give_back(taken)
            except CtdbError as exc:
                self._locking_failed(exc)
        return True

    def _locking_failed(self, exc: CtdbError) -> None:
        """libtdb failed a lock call (not a held chain): this node cannot
        apply the stream to its shared files any more; it resyncs."""
        log.error("chain locks of a shared file failed: %s", exc.message)
        self.clear()
        self.resync(f"chain locks of a shared file failed: {exc.message}", False)

    def _handling_failed(self, exc: Exception) -> None:
        """An event let through failed half-way (a local write: `LocalDb`
        raises OSError for an I/O error): our copies lack it, so the
        node resyncs with them marked damaged, as `NodeMessages.handle` has
        it do for an event handled at once. Raised from this timer instead,
        it would leave the node out of sync for good (simulator, vs seed
        21003767: in RECOVERY until the end)."""
        log.error(
            "handling a held-back event failed: %r", exc, exc_info=not isinstance(exc, OSError)
        )
        self.clear()
        self.resync(f"a local write failed: {exc}", True)

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = self.clock.call_later(RETRY, self._retry)

    def _retry(self) -> None:
        self._timer = None
        now = self.clock.now()
        while self._waiting:
            event, handle = self._waiting.popleft()
            try:
                ran = self._run(event, handle)
            except Exception as exc:
                self._handling_failed(exc)
                return
            if ran:
                self._since = now  # the next one's stall starts now
                continue
            self._waiting.appendleft((event, handle))
            if now - self._since > self.limit():
                self.stats["stream_stuck"] += 1
                self.clear()
                names = sorted(db.name for db, _ in needs(event, self.dbs, self.locked))
                self.resync(f"a client has held a chain in {', '.join(names)} too long", False)
                return
            self._arm()
            return

    def clear(self) -> None:
        """Forget what waits (the node stops)."""
        self._waiting.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
