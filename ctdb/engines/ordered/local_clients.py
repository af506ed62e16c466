"""What this node's clients hold, and wait for, in the replicated lock queues.

The lock queues are replicated state (`replica.py`): every member holds the
same queue of owners (pnn, client id) per record. Which of those owners are
clients connected here, which of them wait for a `fetch_lock` to be
answered and which were told they hold a lock is this node's alone, and it
decides what this node must do when the stream grants a lock or a state
transfer replaces the queues: answer the waiting client, or give back a
lock that nobody here wants any more (it would stay locked for good).
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from ctdb.engines.answers import Answers
from ctdb.engines.flows import Flow
from ctdb.engines.host import Host
from ctdb.engines.ordered.locks import Owner
from ctdb.engines.ordered.replica import Granted, Replica
from ctdb.engines.ordered.waits import Effect
from ctdb.storage.database import Database

#: (owner, db id, key): one client's claim on one record
Claim = tuple[Owner, int, bytes]

T = TypeVar("T")


class LocalClients:
    def __init__(
        self,
        pnn: int,
        replica: Replica,
        broadcast: Callable[[str, dict[str, Any]], None],
        answers: Answers,
    ) -> None:
        self.pnn = pnn
        self.replica = replica
        #: sends an ordered operation nobody waits for (a release, a withdrawal)
        self.broadcast = broadcast
        #: hears a waiting fetch_lock's grant, under its claim, with the record's value
        self.answers = answers
        #: connected clients, by their id
        self.sessions: dict[int, object] = {}
        self._ids = itertools.count(1)
        #: the id of each waiting fetch_lock's request (see `locks.Entry`)
        self.waiting_req: dict[Claim, int] = {}
        #: waiting fetch_locks whose grant was answered, not yet told to
        #: their client (`granted` once it was)
        self.answered: dict[Claim, int] = {}
        self._reqs = itertools.count(1)
        #: locks our clients were told they hold (fetch_lock answered, not
        #: yet unlocked), with the id of the request that was granted
        self.granted: dict[Claim, int | None] = {}

    def new_request(self, claim: Claim) -> int:
        """An id for a new lock request of `claim`, which now waits for it:
        its grant is answered under `claim`."""
        req = self.waiting_req[claim] = next(self._reqs)
        return req

    def done_waiting(self, claim: Claim) -> None:
        """`claim`'s fetch_lock ended (told it holds the lock, or failed)."""
        self.waiting_req.pop(claim, None)
        self.answered.pop(claim, None)

    def owner(self, session: object) -> Owner:
        """Who `session` is in the lock queues (an id given at its first request)."""
        sid = getattr(session, "_ordered_id", None)
        if sid is None:
            sid = next(self._ids)
            session._ordered_id = sid  # type: ignore[attr-defined]
            self.sessions[sid] = session
        return (self.pnn, sid)

    def holds(self, owner: Owner, dbid: int, key: bytes) -> bool:
        """`owner` holds the record and was told so: locking it again needs no stream.

        Heading the queue is not enough: a grant nobody here was told of (a
        fetch_lock that gave up, a lock a state transfer gave back) has a
        withdrawal on its way, and a new request must be ordered after it,
        or the withdrawal would take the lock from a client that was just
        told it holds it.
        """
        q = self.replica.locks.get((dbid, key))
        if q is None or q.holder != owner:
            return False
        claim = (owner, dbid, key)
        # (or granted a moment ago: its fetch_lock has yet to record it)
        return claim in self.granted or claim in self.answered

    def release_all(self, session: object) -> None:
        """A client left: whatever it holds or waits for is released, in order."""
        sid = getattr(session, "_ordered_id", None)
        if sid is None:
            return
        self.sessions.pop(sid, None)
        owner = (self.pnn, sid)
        self.granted = {g: r for g, r in self.granted.items() if g[0] != owner}
        if any(e[0] == owner for q in self.replica.locks.values() for e in q.entries):
            self.broadcast("release", {"owner": owner})

    def on_granted(self, grant: Granted) -> None:
        """One of our clients now holds a lock: answer its fetch_lock, or give it back."""
        dbid, key = grant.ref
        mine = (grant.owner, dbid, key)
        if mine in self.waiting_req and self.waiting_req[mine] == grant.req:
            if mine not in self.answered:
                self.answered[mine] = grant.req
                self.answers.answer(mine, grant.value)
        elif mine not in self.granted or self.granted[mine] != grant.req:
            # Nobody here wants this request any more: a fetch_lock that
            # failed (its client may have asked again since: the grant is
            # not for that newer request), or one whose grant a state
            # transfer undid. Held, it would stay locked for good.
            self.broadcast("withdraw", withdrawal(mine, grant.req))

    def release_orphans(self) -> None:
        """Release what our clients hold or wait for in the queues but no longer want.

        While we were out of sync our releases and withdrawals were dropped
        with the backlog (or never delivered), but the lock queues we are
        now in sync with may still hold them: the locks of clients that
        disconnected, and the places in line of fetch_locks that failed
        (a lock nobody waits for and nobody was told they hold would stay
        locked for good once it reaches the head).
        """
        locks = self.replica.locks
        # Grants the state we took over does not show were never stable: the
        # client hears NOT_LOCKED at its unlock.
        self.granted = {
            g: r
            for g, r in self.granted.items()
            if (q := locks.get(g[1:])) is not None and q.head == (g[0], r)
        }
        gone: set[Owner] = set()
        unwanted: set[tuple[Claim, int | None]] = set()
        for (dbid, key), q in locks.items():
            for owner, kind, _, req in q.entries:
                if owner[0] != self.pnn:
                    continue
                if owner[1] not in self.sessions:
                    gone.add(owner)
                elif kind == "lock":
                    mine = (owner, dbid, key)
                    waited = mine in self.waiting_req and self.waiting_req[mine] == req
                    held = mine in self.granted and self.granted[mine] == req
                    if not waited and not held:
                        unwanted.add((mine, req))
        for owner in sorted(gone):
            self.broadcast("release", {"owner": owner})
        for mine, req in sorted(unwanted, key=lambda u: (u[0], u[1] or 0)):
            self.broadcast("withdraw", withdrawal(mine, req))


def withdrawal(claim: Claim, req: int | None) -> dict[str, Any]:
    """A withdrawal of `claim`'s request `req` (None: all of them)."""
    owner, dbid, key = claim
    args: dict[str, Any] = {"db": dbid, "key": key, "owner": owner}
    if req is not None:
        args["req"] = req
    return args


class LockingEngine(Protocol):
    """The ordered engine as the parts that lock records for this node's
    clients see it (`reads`, `samba_grants`): the flows of
    `OrderedEngine.locking`/`unlocking`, and their driver."""

    node: Host
    replica: Replica
    clients: LocalClients

    def locking(
        self, db: Database, key: bytes, session: object, deadline: float | None = None
    ) -> Flow[Effect, bytes | None]: ...

    def unlocking(
        self,
        db: Database,
        key: bytes,
        session: object,
        value: bytes | None,
        *,
        serving: bool = True,
        deadline: float | None = None,
    ) -> Flow[Effect, None]: ...

    def run(self, flow: Flow[Effect, T]) -> Awaitable[T]: ...
