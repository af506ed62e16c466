"""Locks built on conditional append: an exclusive lock and a fair FIFO queue (no I/O).

A lock named KEY in database DB is the entry list of record KEY. Taking it
appends an entry owned by this client's connection; releasing it removes
that entry. Nothing else is needed to clean up: the daemon removes a
connection's entries when it closes, and a node's when the node leaves.

* `lock`: append under the condition `empty`. The record holds at most one
  entry, its owner holds the lock; the others retry with a growing pause.
  Not fair: whoever retries at the right moment wins.
* `queue_lock`: append under `always`, so every request queues in the
  order the record's home applies them; the first entry holds. A waiter
  is told by a message (`ENTRY_HEAD_SRVID`, data `[db id, key]`) when its
  entry becomes the first, so it need not poll. The message is a hint: it
  may come late, or not at all if its sender died, so a waiter also
  re-reads the list every `recheck` seconds. If its entry vanished (on tcp
  a volatile list lives at its dmaster and dies with that node, like any
  volatile record; a persistent one does not), it queues again, at the end.

The lock helpers consume the head messages this connection receives
(`Client.messages`): a caller that also waits for them itself should use
a connection of its own for that.

Each acquisition appends its own payload (`token()` unless given), so two
acquisitions on one connection (tasks of one `AsyncClient`) are two
entries and exclude each other; with equal payloads they would be one
entry (appends are idempotent) and both would think they hold.

The plans run on both front ends (`Client.lock`/`queue_lock` and the
`AsyncClient` ones), which release on leaving their `with` block.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, replace

import msgpack

from ctdb.client import operations as ops
from ctdb.client.operations import (
    Appended,
    Entries,
    Key,
    Listen,
    Message,
    Op,
    Plan,
    Sleep,
    to_bytes,
)
from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol.client import ENTRY_HEAD_SRVID

#: Errors after which a lock request is simply tried again: a recovery is
#: running, the cluster lost quorum for a moment, the record is locked
#: with fetch_lock, or the record's node did not answer in time.
TRANSIENT = frozenset({ErrorCode.RETRY, ErrorCode.NO_QUORUM, ErrorCode.BUSY, ErrorCode.TIMEOUT})

_tokens = itertools.count(1)


def token() -> bytes:
    """A payload no other acquisition of this process uses."""
    return b"lock %d" % next(_tokens)


@dataclass(frozen=True, slots=True)
class Ticket:
    """This client's entry in a lock's list, and where it stood at the last look.

    `position` 0 means it holds the lock. `told` says whether it learnt
    that from a head message (False: from its own append or a re-read).
    """

    db: str
    key: bytes
    payload: bytes
    owner: tuple[int, int]
    position: int
    told: bool = False

    @property
    def holds(self) -> bool:
        return self.position == 0


def release(ticket: Ticket) -> Op[int]:
    """Remove the ticket's entry (1 if it was there, 0 if it had gone already)."""
    return ops.remove_entries(ticket.db, ticket.key, match=ticket.payload)


def _deadline(timeout: float | None) -> float:
    return float("inf") if timeout is None else time.monotonic() + timeout


def _append(db: str, key: bytes, payload: bytes, condition: str, deadline: float) -> Plan[Appended]:
    """One conditional append, retried through transient errors until `deadline`."""
    pause = 0.01
    while True:
        try:
            answer: Appended = yield ops.cond_append(db, key, payload, condition)
            return answer
        except CtdbError as exc:
            left = deadline - time.monotonic()
            if exc.code not in TRANSIENT or left <= 0:
                raise
        yield Sleep(min(pause, left))
        pause = min(pause * 2, 0.5)


def lock(
    db: str, name: Key, timeout: float | None = 60.0, payload: Key | None = None
) -> Plan[Ticket]:
    """Hold the exclusive lock `name`: append under `empty`, retried until it holds.

    TIMEOUT after `timeout` seconds (None: wait for ever).
    """
    key, mine = to_bytes(name), to_bytes(payload) if payload is not None else token()
    deadline = _deadline(timeout)
    pause = 0.005
    yield from _forget_notices()
    while True:
        answer = yield from _append(db, key, mine, "empty", deadline)
        if answer.appended:
            assert answer.index is not None
            return Ticket(db, key, mine, answer.owner, answer.index)
        left = deadline - time.monotonic()
        if left <= 0:
            raise CtdbError(ErrorCode.TIMEOUT, f"lock {key!r} not taken in time")
        yield Sleep(min(pause, left))
        pause = min(pause * 2, 0.2)


def enqueue(db: str, name: Key, payload: Key | None = None) -> Plan[Ticket]:
    """Join the FIFO queue of lock `name` (append under `always`); the ticket says where."""
    key, mine = to_bytes(name), to_bytes(payload) if payload is not None else token()
    yield from _forget_notices()
    answer = yield from _append(db, key, mine, "always", _deadline(None))
    assert answer.index is not None
    return Ticket(db, key, mine, answer.owner, answer.index)


def wait_turn(ticket: Ticket, timeout: float | None = 60.0, recheck: float = 0.5) -> Plan[Ticket]:
    """Wait until the ticket's entry is the first of its list: the lock is held.

    Woken by a head message for the ticket's key, or every `recheck`
    seconds, it re-reads the list; if the entry is gone (the list died
    with its tcp dmaster) it queues again. After `timeout` seconds (None:
    never) it raises TIMEOUT; on that or any other error it first leaves
    the queue, so that it blocks nobody.
    """
    try:
        return (yield from _wait_turn(ticket, _deadline(timeout), recheck))
    except CtdbError as exc:
        if exc.code != ErrorCode.DISCONNECTED:
            try:
                yield release(ticket)
            except CtdbError:
                pass  # the entry goes with the connection in the end
        raise


def _wait_turn(ticket: Ticket, deadline: float, recheck: float) -> Plan[Ticket]:
    told = False
    while not ticket.holds:
        left = deadline - time.monotonic()
        if left <= 0:
            raise CtdbError(ErrorCode.TIMEOUT, f"lock {ticket.key!r} not held in time")
        notice: Message | None = yield Listen(ENTRY_HEAD_SRVID, min(recheck, left))
        told = notice is not None and _names(notice, ticket.key)
        try:
            view: Entries = yield ops.entries(ticket.db, ticket.key)
        except CtdbError as exc:
            if exc.code not in TRANSIENT:
                raise
            continue
        mine = (ticket.owner, ticket.payload)
        found = [i for i, e in enumerate(view.entries) if (e.owner, e.payload) == mine]
        if found:
            ticket = replace(ticket, position=found[0])
            continue
        answer = yield from _append(ticket.db, ticket.key, ticket.payload, "always", deadline)
        assert answer.index is not None
        ticket, told = replace(ticket, position=answer.index), False
    return replace(ticket, told=told)


def queue_lock(
    db: str,
    name: Key,
    timeout: float | None = 60.0,
    payload: Key | None = None,
    recheck: float = 0.5,
) -> Plan[Ticket]:
    """Hold the FIFO lock `name`: `enqueue`, then `wait_turn`."""
    ticket = yield from enqueue(db, name, payload)
    return (yield from wait_turn(ticket, timeout, recheck))


def _forget_notices() -> Plan[None]:
    """Drop the head messages this client has received so far.

    The daemon also tells an appender whose entry starts a list, which its
    append's answer said already; unread, those would pile up in the
    client's messages, one per lock taken. Dropped at each acquisition,
    they stay few, and a waiter is not woken by one about an old turn.
    """
    while (yield Listen(ENTRY_HEAD_SRVID, 0)) is not None:
        pass


def _names(notice: Message, key: bytes) -> bool:
    """Whether a head message is about `key` (its data: msgpack [db id, key])."""
    try:
        _dbid, about = msgpack.unpackb(notice.data)
    except (ValueError, TypeError, msgpack.UnpackException):
        return False
    return bool(about == key)
