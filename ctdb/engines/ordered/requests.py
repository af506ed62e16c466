"""This node's own operations in the stream: numbered when sent, answered when delivered.

Nobody replies in the ordered engine: a client's operation is answered when
the stream delivers it back to the node that sent it (`deliver`). So every
operation this node sends carries the next number of one counter, and an
operation someone waits for stays `pending` under that number until its
delivery, the waiter gives up (`forget`: its deadline), or this node's part
in the stream ends (`fail_all`: it left the group or resyncs; `drop`: a
state transfer threw away the backlog it sat in). Every way a waiting
request can end is here.

No I/O and no event loop: the answers go to an `Answers` (the engine's
`Waiting`, which holds the waiters' futures and deadlines), the messages
to whoever asked for them, to send.

The counter starts above every number an earlier run of this node used:
an `applied` message about that run, delivered late, must not make one of
this run's writes look stable.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable
from typing import Any

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.answers import Answers
from ctdb.engines.ordered.stability import Stability
from ctdb.protocol.messages import Ordered


class Requests:
    def __init__(
        self,
        pnn: int,
        incarnation: int,
        stability: Stability,
        answers: Answers,
        stats: Counter[str],
    ) -> None:
        self.pnn = pnn
        self.stability = stability
        self.answers = answers
        self.stats = stats
        self.seq = itertools.count((incarnation << 32) + 1)
        #: our operations someone waits for that were not delivered yet,
        #: with who hears the answer (`answers`, or a read barrier's own)
        self.pending: dict[int, Answers] = {}

    def message(self, op: str, args: dict[str, Any], to: Answers | None = None) -> Ordered:
        """An operation whose delivery someone waits for, under its `seq`:
        `to` (default `answers`) hears the answer.

        A request whose waiter gives up may still be applied later (it is
        in the stream): its client hears TIMEOUT, which means "unknown
        outcome".
        """
        seq = next(self.seq)
        self.pending[seq] = to or self.answers
        self.stats["ordered_sent"] += 1
        return Ordered(self.pnn, seq, op, args)

    def unanswered(self, op: str, args: dict[str, Any]) -> Ordered:
        """An operation nobody waits for."""
        return Ordered(self.pnn, next(self.seq), op, args)

    def barrier(self, to: Answers) -> Ordered:
        """A read barrier (see barriers.py): `to` hears None when it is delivered.

        For this node alone: it takes its place in the agreed order like a
        broadcast (the transport's total order covers sends), and nobody
        else has anything to do with it, so the other members do not decode
        and apply one message per read.
        """
        self.stats["read_barriers"] += 1
        return self.message("sync", {}, to)

    def forget(self, seq: int) -> None:
        """Nobody waits for `seq` any more (answered, or its waiter gave up)."""
        self.pending.pop(seq, None)
        self.stability.unstable.pop(seq, None)

    def deliver(
        self, msg: Ordered, result: Any, error: CtdbError | None, members: frozenset[int] | None
    ) -> bool:
        """Our operation `msg` was applied here: answer whoever waits for it.

        A write that must be stable (`members`: the view it was applied in)
        waits on until every member holds it; returns True when it was put
        to wait, so that the caller checks whether it already is.
        """
        if msg.origin != self.pnn:
            return False
        to = self.pending.pop(msg.seq, None)
        if to is None:
            return False
        if error is not None:
            to.fail(msg.seq, error)
        elif members is not None:
            self.stability.unstable[msg.seq] = (result, members)
            return True
        else:
            to.answer(msg.seq, result)
        return False

    def fail_all(self, error: CtdbError) -> None:
        """This node left the stream: nothing it waits for will be delivered,
        or become stable."""
        pending, self.pending = self.pending, {}
        for seq in sorted(pending.keys() | self.stability.unstable.keys()):
            pending.get(seq, self.answers).fail(seq, error)
        self.stability.drop()

    def drop(self, backlog: Iterable[Ordered]) -> None:
        """Our operations in a backlog thrown away were never applied here."""
        error = CtdbError(ErrorCode.RETRY, "not applied: this node was out of sync")
        for msg in backlog:
            to = self.pending.pop(msg.seq, None) if msg.origin == self.pnn else None
            if to is not None:
                to.fail(msg.seq, error)
