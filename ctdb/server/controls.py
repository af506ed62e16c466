"""Request/reply between daemons on top of one-way transport messages.

A control is sent with a fresh request id and completes when the matching
reply arrives, when its timeout expires, or when the target leaves the view
(a reply from a node that is gone will never come, so waiting would only
stall recovery).

A reply is matched by request id *and* sender: a reply from a node that was
not asked, or to a request that is no longer pending (it timed out), is
ignored. A reply whose result does not fit the op (`messages.check_reply`)
fails the call and raises `DecodeError`, so the node cuts that peer's link.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol.messages import Control, ControlReply, DecodeError, Message, check_reply
from ctdb.protocol.schema import Limits


class ControlChannel:
    def __init__(self, send: Callable[[int, Message], None], limits: Limits) -> None:
        self._send = send
        self._limits = limits
        self._ids = itertools.count(1)
        #: reqid -> (target pnn, op, future)
        self._pending: dict[int, tuple[int, str, asyncio.Future[Any]]] = {}

    async def call(
        self, pnn: int, op: str, args: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> Any:
        reqid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[reqid] = (pnn, op, fut)
        try:
            self._send(pnn, Control(reqid, op, args or {}))
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise CtdbError(
                ErrorCode.TIMEOUT, f"node {pnn} did not answer {op} within {timeout:g}s"
            ) from None
        finally:
            self._pending.pop(reqid, None)

    def on_reply(self, src: int, msg: ControlReply) -> None:
        entry = self._pending.get(msg.reqid)
        if entry is None or entry[0] != src or entry[2].done():
            return
        _, op, fut = entry
        try:
            result = check_reply(op, msg, self._limits)
        except DecodeError as exc:
            fut.set_exception(CtdbError(ErrorCode.PROTOCOL, f"node {src}: {exc.message}"))
            raise
        if msg.code:
            fut.set_exception(CtdbError(msg.code, result))
        else:
            fut.set_result(result)

    def fail_node(self, pnn: int) -> None:
        """`pnn` left the view: its pending controls fail with DISCONNECTED."""
        for target, _, fut in self._pending.values():
            if target == pnn and not fut.done():
                fut.set_exception(CtdbError(ErrorCode.DISCONNECTED, f"node {pnn} disconnected"))
