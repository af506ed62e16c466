"""This node's own operations in the stream: numbered when sent, answered when delivered.

Nobody replies in the ordered engine: a client's operation is answered when
the stream delivers it back to the node that sent it (`deliver`). So every
operation this node broadcasts carries the next number of one counter, and
an operation someone waits for has a future under that number until its
delivery, its deadline, or the end of this node's part in the stream
(`fail_all`: it left the group or resyncs; `drop`: a state transfer threw
away the backlog it sat in). Every way a waiting request can end is here.

The counter starts above every number an earlier run of this node used:
an `applied` message about that run, delivered late, must not make one of
this run's writes look stable.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.ordered.barriers import until
from ctdb.engines.ordered.stability import Stability
from ctdb.protocol.message_codec import encode
from ctdb.protocol.messages import Ordered

if TYPE_CHECKING:
    from ctdb.engines.host import Host


class Requests:
    def __init__(self, node: Host, stability: Stability) -> None:
        self.node = node
        self.stability = stability
        self.seq = itertools.count((node.epochs.incarnation << 32) + 1)
        #: futures of the operations waiting for their delivery here, by seq
        self.pending: dict[int, asyncio.Future[Any]] = {}

    async def submit(self, op: str, args: dict[str, Any], deadline: float) -> Any:
        """Broadcast `op` and wait for its result, at most until `deadline`.

        A request that times out may still be applied later (it is in the
        stream): the client hears TIMEOUT, which means "unknown outcome".
        """
        node = self.node
        seq = next(self.seq)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[seq] = fut
        node.stats["ordered_sent"] += 1
        try:
            node.transport.broadcast(encode(Ordered(node.pnn, seq, op, args)))
            return await until(fut, deadline, f"{op} was not delivered in time: outcome unknown")
        finally:
            self.pending.pop(seq, None)
            self.stability.unstable.pop(seq, None)

    def broadcast(self, op: str, args: dict[str, Any]) -> None:
        """An ordered operation nobody waits for."""
        self.node.transport.broadcast(encode(Ordered(self.node.pnn, next(self.seq), op, args)))

    def send_barrier(self, fut: asyncio.Future[Any]) -> int:
        """A read barrier (see barriers.py) that resolves `fut` when delivered.

        Sent to this node alone: it takes its place in the agreed order like
        a broadcast (the transport's total order covers sends), and nobody
        else has anything to do with it, so the other members do not decode
        and apply one message per read.
        """
        seq = next(self.seq)
        self.pending[seq] = fut
        node = self.node
        node.stats["read_barriers"] += 1
        node.transport.send(node.pnn, encode(Ordered(node.pnn, seq, "sync", {})))
        return seq

    def forget(self, seq: int) -> None:
        self.pending.pop(seq, None)

    def deliver(
        self, msg: Ordered, result: Any, error: CtdbError | None, members: frozenset[int] | None
    ) -> bool:
        """Our operation `msg` was applied here: answer whoever waits for it.

        A write that must be stable (`members`: the view it was applied in)
        waits on until every member holds it; returns True when it was put
        to wait, so that the caller checks whether it already is.
        """
        if msg.origin != self.node.pnn:
            return False
        fut = self.pending.get(msg.seq)
        if fut is None or fut.done():
            return False
        if error is not None:
            fut.set_exception(error)
        elif members is not None:
            self.stability.unstable[msg.seq] = (fut, result, members)
            return True
        else:
            fut.set_result(result)
        return False

    def fail_all(self, error: CtdbError) -> None:
        """This node left the stream: nothing it waits for will be delivered."""
        for seq, fut in list(self.pending.items()):
            if not fut.done():
                fut.set_exception(error)
            del self.pending[seq]
        self.stability.drop()

    def drop(self, backlog: Iterable[Ordered]) -> None:
        """Our operations in a backlog thrown away were never applied here."""
        for msg in backlog:
            if msg.origin != self.node.pnn:
                continue
            fut = self.pending.pop(msg.seq, None)
            if fut is not None and not fut.done():
                fut.set_exception(
                    CtdbError(ErrorCode.RETRY, "not applied: this node was out of sync")
                )
