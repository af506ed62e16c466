"""The replicated lock queues: one FIFO of owners per locked record.

Queues are replicated state, the same on every member: the head holds the
lock, plain writes to a held record wait in line behind it, and the bound
on waiters is decided at apply time against the bound the origin put in the
message (see the package docstring).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ctdb.common.config import TUNABLES
from ctdb.common.errors import CtdbError, ErrorCode

Owner = tuple[int, int]  # (pnn, session id)


#: A place in a queue: (owner, "lock" or "store", the value a queued store
#: writes, the lock request's id). The id tells one request of an owner from
#: another: a grant answers only the request it was for, and a withdrawal
#: takes only the request it names (its client may already have asked again).
Entry = tuple[Owner, str, bytes | None, int | None]
#: The request at the head: (owner, its request id)
Head = tuple[Owner, int | None]


@dataclass
class LockQueue:
    """Owners waiting for a record, head first; pending plain writes queue here too.

    Every transition is pure and the same on every member; the engine
    writes the records (a queued store is written before it leaves the
    queue, see `head_store`) and tells its own clients.
    """

    entries: deque[Entry] = field(default_factory=deque)

    @property
    def holder(self) -> Owner | None:
        if self.entries and self.entries[0][1] == "lock":
            return self.entries[0][0]
        return None

    @property
    def head(self) -> Head | None:
        """The lock request that holds: its owner and id."""
        if self.entries and self.entries[0][1] == "lock":
            return self.entries[0][0], self.entries[0][3]
        return None

    def queue(self, owner: Owner, value: bytes | None, args: dict[str, Any], key: bytes) -> None:
        """Join the queue: a lock request (`value` None) or a store behind a holder.

        Raises QueueFull past the bound the origin sent (`args["waiters"]`).
        """
        check_room(self, args, key)
        if value is None:
            req = args.get("req")
            self.entries.append((owner, "lock", None, None if req is None else int(req)))
        else:
            self.entries.append((owner, "store", value, None))

    def head_store(self) -> tuple[Owner, bytes] | None:
        """The store at the head, which the engine writes and then `pop`s."""
        if self.entries and self.entries[0][1] == "store":
            owner, _, value, _ = self.entries[0]
            assert value is not None
            return owner, value
        return None

    def pop(self) -> None:
        """The head leaves: an unlock, or a queued store that was written."""
        self.entries.popleft()

    def withdraw(self, owner: Owner, req: int | None = None) -> None:
        """`owner` gives up its lock request `req` (None: all of them); its
        queued stores stay."""
        self.entries = deque(
            e
            for e in self.entries
            if e[0] != owner or e[1] != "lock" or (req is not None and e[3] != req)
        )

    def purge(self, gone: Callable[[Owner], bool]) -> bool:
        """Drop the lock requests of owners `gone` (their stores stay); whether any went."""
        before = len(self.entries)
        self.entries = deque(e for e in self.entries if not gone(e[0]) or e[1] == "store")
        return len(self.entries) != before

    def to_wire(self) -> list[list[Any]]:
        """The queue as a state transfer carries it (see `from_wire`)."""
        return [[o[0], o[1], kind, value, req] for o, kind, value, req in self.entries]

    @classmethod
    def from_wire(cls, entries: list[list[Any]]) -> LockQueue:
        return cls(
            deque(
                ((int(e[0]), int(e[1])), str(e[2]), e[3], None if e[4] is None else int(e[4]))
                for e in entries
            )
        )


_DEFAULT_WAITERS = TUNABLES["MaxLockWaiters"].default


class QueueFull(CtdbError):
    """A record's lock queue is at its bound: the request was not queued."""


def check_room(q: LockQueue, args: dict[str, Any], key: bytes) -> None:
    """Refuse to queue past the bound the origin sent (the same on every member).

    The holder does not count: `waiters` requests may wait behind it.
    """
    limit = int(args.get("waiters") or _DEFAULT_WAITERS)
    if len(q.entries) > limit:
        raise QueueFull(
            ErrorCode.BUSY, f"record {key!r} is busy: {limit} requests already wait for it"
        )
