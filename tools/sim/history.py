"""What the simulated clients did: one record per operation on one key.

Times are virtual (the loop's clock). An operation whose outcome the client
never learned (it failed with an error, or its node crashed under it) gets
`response = inf`: it may or may not have taken effect, at any time after its
invocation. A transaction touching two keys is recorded once per key.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from dataclasses import dataclass, field
from enum import StrEnum


class Kind(StrEnum):
    #: a linearizable read: returns the current value
    READ = "read"
    #: a local read that may lag behind (persistent `fetch` reads the local
    #: copy): returns the current value or any earlier one, never one that
    #: was not written
    READ_ANY = "read-any"
    #: a blind write (None: a delete)
    WRITE = "write"
    #: read `old`, write `value`, atomically (under a record lock, or a
    #: transaction validated against what it read)
    RMW = "rmw"
    #: not a client's: a window in which a fault may reset the key to a value
    #: it had before (or to missing), as CTDB loses a volatile record whose
    #: dmaster crashed or was cut off
    LOSS = "loss"
    #: entry lists (conditional append): append `value` if the condition `arg`
    #: holds; `answer` is "appended <index>" or "conflict <entries>"
    APPEND = "append"
    #: remove the entries of client `arg`; `answer` is "removed <n>"
    REMOVE = "remove"
    #: read the entry list; `answer` is the entries
    ENTRIES = "entries"
    #: not a client's: a window in which the entries of node `arg`'s clients
    #: may be purged (the node left the view, or recovery excluded it)
    PURGE = "purge"


#: Operations that change a record; one that failed may still have taken effect.
WRITES = (Kind.WRITE, Kind.RMW, Kind.APPEND, Kind.REMOVE)
#: Reads; one that failed is forgotten.
READS = (Kind.READ, Kind.READ_ANY, Kind.ENTRIES)
#: The model's windows, not the clients' operations.
WINDOWS = (Kind.LOSS, Kind.PURGE)


@dataclass
class Op:
    id: int
    client: str
    key: str
    kind: Kind
    #: written (WRITE, RMW) or read (READ, READ_ANY) value; None is "missing"
    value: str | None
    invoke: float
    response: float = math.inf
    #: RMW: the value it read
    old: str | None = None
    note: str = ""
    #: APPEND: (condition, argument); REMOVE: the client; PURGE: the node
    arg: object = None
    #: what an entry-list operation answered (see Kind)
    answer: str | None = None
    #: RMW under a record lock: from when `fetch_lock` returned to when
    #: `store_unlock` was sent (`tools.sim.split_brain`)
    held: tuple[float, float] | None = None

    @property
    def known(self) -> bool:
        """The outcome is known (it completed); otherwise it is optional."""
        return self.response != math.inf

    def describe(self) -> str:
        end = "?" if not self.known else f"{self.response:.4f}"
        if self.kind is Kind.RMW:
            what = f"rmw {self.old!r} -> {self.value!r}"
        elif self.kind is Kind.LOSS:
            what = "loss (may reset to an earlier value)"
        elif self.kind is Kind.PURGE:
            what = f"purge (node {self.arg}'s clients' entries may go)"
        elif self.kind in (Kind.APPEND, Kind.REMOVE, Kind.ENTRIES):
            detail = f" {self.value!r} if {self.arg}" if self.kind is Kind.APPEND else ""
            if self.kind is Kind.REMOVE:
                detail = f" of {self.arg}"
            what = f"{self.kind.value}{detail} -> {self.answer!r}"
        else:
            what = f"{self.kind.value} {self.value!r}"
        note = f"  ({self.note})" if self.note else ""
        return f"[{self.invoke:.4f}, {end}] {self.client:>8} {self.key} {what}{note}"


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()

    def invoke(
        self, client: str, key: str, kind: Kind, value: str | None = None, old: str | None = None
    ) -> Op:
        op = Op(next(self._ids), client, key, kind, value, self.now(), old=old)
        self.ops.append(op)
        return op

    def ok(self, op: Op, value: str | None = None, answer: str | None = None) -> None:
        """The operation completed; for a read, with the value it returned."""
        op.response = self.now()
        if op.kind in (Kind.READ, Kind.READ_ANY):
            op.value = value
        op.answer = answer

    def failed(self, op: Op, note: str) -> None:
        """An error: a read is forgotten, a write may or may not have happened."""
        if op.kind in READS:
            self.ops.remove(op)
            return
        op.note = note

    def loss(self, key: str, start: float, end: float, cause: str) -> Op:
        op = Op(next(self._ids), "fault", key, Kind.LOSS, None, start, end, note=cause)
        self.ops.append(op)
        return op

    def purge(self, key: str, pnn: int, start: float, end: float, cause: str) -> Op:
        op = Op(next(self._ids), "fault", key, Kind.PURGE, None, start, end, note=cause, arg=pnn)
        self.ops.append(op)
        return op

    def by_key(self) -> dict[str, list[Op]]:
        keys: dict[str, list[Op]] = {}
        for op in self.ops:
            keys.setdefault(op.key, []).append(op)
        return dict(sorted(keys.items()))
