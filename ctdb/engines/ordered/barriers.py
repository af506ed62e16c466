"""Read barriers: how a read over the ordered stream is made linearizable, cheaply.

A read that cannot be served from the local copy waits for a barrier: an
ordered `sync` message its node sends to itself after the read arrived.
Totem assigns sequence numbers on a circulating token, to a message for one
member as to a broadcast, so a write acknowledged anywhere before the read
began is ordered before the barrier, and applied here by the time the
barrier is delivered.

Readers share barriers: at most one is in flight and the readers that
arrive meanwhile ride the next one, sent when it is delivered, so any
number of concurrent reads costs two barriers. If a barrier fails (the node
left the group, lost quorum), the readers waiting for the next one fail
alike rather than wait for nothing.

No I/O and no event loop: a reader is known by a key, its answer goes to
an `Answers`, and `send` sends a barrier whose delivery answers this
object under the barrier's seq.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from ctdb.common.errors import CtdbError
from ctdb.engines.answers import Answers


class ReadBarriers:
    def __init__(self, send: Callable[[Answers], int], answers: Answers) -> None:
        """`send(self)` sends a barrier that answers `self` under its seq
        once delivered, and returns that seq; readers hear from `answers`."""
        self._send_one = send
        self._answers = answers
        #: the barrier in flight (its seq) and the readers riding it
        self._in_flight: int | None = None
        self._riding: dict[Hashable, None] = {}
        #: readers waiting for the next barrier
        self._next: dict[Hashable, None] = {}

    def join(self, reader: Hashable) -> None:
        """`reader` is answered (None) once a barrier sent after now is delivered."""
        if self._in_flight is None:
            self._riding[reader] = None
            self._in_flight = self._send_one(self)
        else:
            self._next[reader] = None

    def leave(self, reader: Hashable) -> None:
        """`reader` gave up (its deadline): nobody answers it."""
        self._riding.pop(reader, None)
        self._next.pop(reader, None)

    def answer(self, key: Hashable, result: Any) -> None:
        """Our barrier `key` was delivered: its readers go on, the next one goes out."""
        if key != self._in_flight:
            return
        riding, self._riding = self._riding, {}
        self._in_flight = None
        for reader in riding:
            self._answers.answer(reader, None)
        if self._next:
            self._riding, self._next = self._next, {}
            self._in_flight = self._send_one(self)

    def fail(self, key: Hashable, error: CtdbError) -> None:
        """Our barrier `key` failed: its readers and the next one's fail alike."""
        if key != self._in_flight:
            return
        readers = [*self._riding, *self._next]
        self._riding, self._next, self._in_flight = {}, {}, None
        for reader in readers:
            self._answers.fail(reader, error)
