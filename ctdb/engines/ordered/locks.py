"""The replicated lock queues: one FIFO of owners per locked record.

Queues are replicated state, the same on every member: the head holds the
lock, plain writes to a held record wait in line behind it, and the bound
on waiters is decided at apply time against the bound the origin put in the
message (see the package docstring).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ctdb.common.config import TUNABLES
from ctdb.common.errors import CtdbError, ErrorCode

Owner = tuple[int, int]  # (pnn, session id)


@dataclass
class LockQueue:
    """Owners waiting for a record, head first; pending plain writes queue here too."""

    entries: deque[tuple[Owner, str, bytes | None]] = field(default_factory=deque)

    @property
    def holder(self) -> Owner | None:
        if self.entries and self.entries[0][1] == "lock":
            return self.entries[0][0]
        return None


class QueueFull(CtdbError):
    """A record's lock queue is at its bound: the request was not queued."""


def check_room(q: LockQueue, args: dict[str, Any], key: bytes) -> None:
    """Refuse to queue past the bound the origin sent (the same on every member).

    The holder does not count: `waiters` requests may wait behind it.
    """
    limit = int(args.get("waiters") or TUNABLES["MaxLockWaiters"].default)
    if len(q.entries) > limit:
        raise QueueFull(
            ErrorCode.BUSY, f"record {key!r} is busy: {limit} requests already wait for it"
        )
