"""The record operations every engine offers the client server.

Two engines implement them with the same client-visible semantics:
`ctdb.engines.migration.MigrationEngine` (point-to-point transports: dmaster
migration, leader-driven recovery, two-phase commit) and
`ctdb.engines.ordered.engine.OrderedEngine` (virtually synchronous transports: every node
applies the same totally ordered stream of operations). The node picks one
from its transport's capabilities.

A method returns either its result or a coroutine of it (`pending`): the
fast path (a local read) answers without creating a task.
"""

from __future__ import annotations

from collections.abc import Awaitable, Coroutine
from types import CoroutineType
from typing import Any, Protocol, TypeGuard

from ctdb.engines.record_calls import RecordCall
from ctdb.engines.transactions import Transaction
from ctdb.storage.database import Database, DbKind
from ctdb.storage.ltdb import Record


class RecordEngine(Protocol):
    def fetch(self, db: Database, key: bytes, session: object) -> Any:
        """The record's value (None if missing); waits while another client holds it."""

    def settled(self, db: Database, key: bytes) -> bool:
        """Whether a local read of the key may be answered now.

        A write this node applied may not yet be held where it would survive
        a failure (vs: by every member); reading it then is a dirty read.
        """

    def settle(self, db: Database, key: bytes, deadline: float) -> Awaitable[None]:
        """Wait until this node serves and the key is settled; TIMEOUT at `deadline`.

        Returns in the loop turn that found it settled, so a read right
        after it sees no newer write.
        """

    def store(self, db: Database, key: bytes, value: bytes, session: object) -> Any:
        """Write a volatile record (an empty value deletes it)."""

    def lock(self, db: Database, key: bytes, session: object) -> Awaitable[bytes | None]:
        """Lock the record for `session` and return its value."""

    def unlock(self, db: Database, key: bytes, session: object, value: bytes | None) -> Any:
        """Release `session`'s lock, first storing `value` unless it is None."""

    def release_all(self, session: object) -> None:
        """`session` disconnected: drop its locks and queued lock requests."""

    def call(self, db: Database, key: bytes, call: RecordCall) -> Any:
        """Run `call` (append, remove, read entries) where the record lives; its answer.

        The record does not move (tcp: it runs at the dmaster; vs: on every
        member at one position of the stream). See ctdb.engines.record_calls.
        """

    def commit(self, tx: Transaction) -> Awaitable[int]:
        """Commit a persistent transaction everywhere; returns the new sequence number."""

    def attach(self, name: str, kind: DbKind) -> Awaitable[Database]:
        """Attach a database on every node."""

    def traverse(self, db: Database) -> Awaitable[list[tuple[bytes, Record]]]:
        """Every live record with its header (RSN, dmaster), sorted by key."""

    def wipe(self, db: Database) -> Awaitable[None]:
        """Remove every record of `db` on every node."""


def pending(result: object) -> TypeGuard[Coroutine[Any, Any, Any]]:
    """Whether an engine method's `result` is a coroutine, to be run for the
    result (the one test every caller makes: a type check, no more)."""
    return type(result) is CoroutineType


async def resolved(result: Any) -> Any:
    """The result of an engine method, awaited if it is `pending`."""
    if pending(result):
        return await result
    return result
