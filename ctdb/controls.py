"""Request/reply between daemons on top of one-way transport messages.

A control is sent with a fresh request id and completes when the matching
reply arrives, when its timeout expires, or when the target leaves the view
(a reply from a node that is gone will never come, so waiting would only
stall recovery).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from ctdb.errors import CtdbError, ErrorCode
from ctdb.messages import Control, ControlReply, Message


class ControlChannel:
    def __init__(self, send: Callable[[int, Message], None]) -> None:
        self._send = send
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[int, asyncio.Future[Any]]] = {}

    async def call(
        self, pnn: int, op: str, args: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> Any:
        reqid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[reqid] = (pnn, fut)
        try:
            self._send(pnn, Control(reqid, op, args or {}))
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise CtdbError(
                ErrorCode.TIMEOUT, f"node {pnn} did not answer {op} within {timeout:g}s"
            ) from None
        finally:
            self._pending.pop(reqid, None)

    def on_reply(self, msg: ControlReply) -> None:
        entry = self._pending.get(msg.reqid)
        if entry is None or entry[1].done():
            return
        if msg.code:
            entry[1].set_exception(CtdbError(msg.code, str(msg.result)))
        else:
            entry[1].set_result(msg.result)

    def fail_node(self, pnn: int) -> None:
        """`pnn` left the view: its pending controls fail with DISCONNECTED."""
        for target, fut in self._pending.values():
            if target == pnn and not fut.done():
                fut.set_exception(CtdbError(ErrorCode.DISCONNECTED, f"node {pnn} disconnected"))
