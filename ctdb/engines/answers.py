"""Where an engine's pure parts put the answers someone waits for.

The parts of an engine that decide decide *that* a waiter is answered,
and with what; they hold no futures and no timers. Over vs: `Requests` (an
operation delivered, or failed), `Stability` (a write now stable; a key
whose writes settled), the read barriers and the lock grants of
`LocalClients`; over tcp: a record arriving, or freed by its holder
(`migration_messages`), a record call's reply (`dmaster_calls`), a commit
made on every node (`transactions`). Each waiter is known by a key (an operation's seq,
a claim, or a token its waiter chose), and its answer goes to an
`Answers`: on the daemon's event loop that is `waiting.Waiting`, which owns
the futures and the deadlines; a test records the answers in a list.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Protocol

from ctdb.common.errors import CtdbError


class Answers(Protocol):
    def answer(self, key: Hashable, result: Any) -> None:
        """`key`'s waiter gets `result` (nothing happens if none waits any more)."""

    def fail(self, key: Hashable, error: CtdbError) -> None:
        """`key`'s waiter gets `error` (nothing happens if none waits any more)."""
