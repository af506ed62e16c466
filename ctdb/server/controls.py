"""Request/reply between daemons on top of one-way transport messages, both ends.

A control is sent with a fresh request id and completes when the matching
reply arrives, when its timeout expires, or when the target leaves the view
(a reply from a node that is gone will never come, so waiting would only
stall recovery).

A reply is matched by request id *and* sender: a reply from a node that was
not asked, or to a request that is no longer pending (it timed out), is
ignored. A reply whose result does not fit the op (`message_codec.check_reply`)
fails the call and raises `DecodeError`, so the node cuts that peer's link.

The answering end runs the handler a part of the daemon registered for the
op (`ctdb.server.state.control_handlers`) and replies with its result or
its error code; a control a node sends itself runs directly, bounded and
failing the same way as a remote one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ctdb.common.errors import CtdbError, ErrorCode, log_failure
from ctdb.protocol.message_codec import DecodeError, check_reply
from ctdb.protocol.messages import Control, ControlReply, Message
from ctdb.protocol.schema import Limits
from ctdb.server.state import ControlHandler

log = logging.getLogger("ctdb.server.controls")


#: Controls whose reply can be a whole database: sent once the links have room.
BULK_REPLIES = frozenset({"pull", "traverse"})


class ControlChannel:
    def __init__(
        self,
        pnn: int,
        send: Callable[[int, Message], None],
        limits: Limits,
        *,
        connected: Callable[[int], bool],
        drain: Callable[[], Awaitable[None]],
    ) -> None:
        """`send` a message to a node; whether a node is `connected` (in the
        transport's view); `drain` waits until the links have room (see
        transport.base.Transport.drain)."""
        self._pnn = pnn
        self._send = send
        self._limits = limits
        self._connected = connected
        self._drain = drain
        self._ids = itertools.count(1)
        #: answers to controls (other nodes' and our own) still being worked out
        self._answering: set[asyncio.Future[Any]] = set()
        #: reqid -> (target pnn, op, future)
        self._pending: dict[int, tuple[int, str, asyncio.Future[Any]]] = {}
        #: op -> the handler that answers it here
        self.handlers: dict[str, ControlHandler] = {}

    async def run(self, pnn: int, op: str, args: dict[str, Any] | None, timeout: float) -> Any:
        """Run a control on `pnn`: its result.

        A control this node sends itself runs here, bounded like a remote
        one (a recovery must never wait for ever on its own push) and
        failing the same way, with no coroutine of its own when its handler
        answers at once (a local ping is this one coroutine); one to a node
        not connected fails without being sent.

        A handler that has to wait runs to its end in a task of its own, as
        it does on a remote node, whatever becomes of the caller (cancelled
        with its client's connection, or timed out): cut in the middle, the
        leader's own `tx_commit` left every node's copy of the database
        prepared, refusing every later commit (BUSY) until a recovery.
        """
        if pnn != self._pnn:
            if not self._connected(pnn):
                raise CtdbError(ErrorCode.DISCONNECTED, f"node {pnn} is not connected")
            return await self.call(pnn, op, args, timeout)
        try:
            result = self._start(pnn, op, args or {})
            if _awaitable(result):  # only these need bounding (and a task)
                task = asyncio.ensure_future(result)
                self._answering.add(task)
                task.add_done_callback(self._answered_here)
                result = await asyncio.wait_for(asyncio.shield(task), timeout)
            return result
        except TimeoutError:
            raise CtdbError(
                ErrorCode.TIMEOUT, f"node {pnn} (this one) did not finish {op} in {timeout:g}s"
            ) from None
        except CtdbError:
            raise
        except Exception as exc:
            log_failure(log, exc, "control %s on this node", op)
            raise CtdbError(ErrorCode.IO, f"{type(exc).__name__}: {exc}") from exc

    def _answered_here(self, task: asyncio.Future[Any]) -> None:
        """A control of this node's own ended; what it raised reached its
        caller, or nobody waits for it any more (as for a remote caller's)."""
        self._answering.discard(task)
        if not task.cancelled():
            task.exception()

    def call(
        self, pnn: int, op: str, args: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> asyncio.Future[Any]:
        """Send the control now; the future has its result (or error) once the
        reply comes, the timeout passes or `pnn` leaves. A future, not a
        coroutine: every control (pings among them) saves a frame, and a
        caller may hand it on without a task. Cancelling it forgets the call."""
        reqid = next(self._ids)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending[reqid] = (pnn, op, fut)
        # A timer that fails the future, not asyncio.wait_for: the same bound
        # for a third of the cost, paid by every control (pings among them).
        timer = loop.call_later(timeout, _time_out, fut, pnn, op, timeout)

        def forget(_: asyncio.Future[Any]) -> None:
            timer.cancel()
            self._pending.pop(reqid, None)

        fut.add_done_callback(forget)
        try:
            self._send(pnn, Control(reqid, op, args or {}))
        except BaseException:
            fut.cancel()
            raise
        return fut

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

    # -- the answering end -------------------------------------------------------------

    def answer(self, src: int, msg: Control) -> None:
        """Work out the reply to a control `src` sent us, and send it: at once
        when its handler answers at once (a ping costs no task, and no extra
        turn of the loop for the task's done callback)."""
        outcome = self._outcome(src, msg)
        if isinstance(outcome, ControlReply) and msg.op not in BULK_REPLIES:
            self._deliver(src, outcome)
            return
        task = asyncio.get_running_loop().create_task(self._answer(src, msg, outcome))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _answer(self, src: int, msg: Control, outcome: ControlReply | Awaitable[Any]) -> None:
        reply = await self._settle(src, msg, outcome)
        if msg.op in BULK_REPLIES:
            await self._drain()
        self._deliver(src, reply)

    def _deliver(self, src: int, reply: ControlReply) -> None:
        if self._connected(src) or src == self._pnn:
            self._send(src, reply)

    async def reply_to(self, src: int, msg: Control) -> ControlReply:
        """The reply to a control `src` sent us: its handler's result or error code."""
        return await self._settle(src, msg, self._outcome(src, msg))

    def _outcome(self, src: int, msg: Control) -> ControlReply | Awaitable[Any]:
        """The reply, if the handler has it now; else the awaitable that will."""
        try:
            result = self._start(src, msg.op, msg.args)
        except Exception as exc:
            return _failed(src, msg, exc)
        return result if _awaitable(result) else ControlReply(msg.reqid, 0, result)

    async def _settle(
        self, src: int, msg: Control, outcome: ControlReply | Awaitable[Any]
    ) -> ControlReply:
        if isinstance(outcome, ControlReply):
            return outcome
        try:
            return ControlReply(msg.reqid, 0, await outcome)
        except Exception as exc:
            return _failed(src, msg, exc)

    def _start(self, src: int, op: str, args: dict[str, Any]) -> Any:
        """Run a control's handler: its result, or an awaitable of it."""
        handler = self.handlers.get(op)
        if handler is None:
            raise CtdbError(ErrorCode.NOT_SUPPORTED, f"unknown control {op!r}")
        return handler(src, args)


def _time_out(fut: asyncio.Future[Any], pnn: int, op: str, timeout: float) -> None:
    if not fut.done():
        fut.set_exception(
            CtdbError(ErrorCode.TIMEOUT, f"node {pnn} did not answer {op} within {timeout:g}s")
        )


def _failed(src: int, msg: Control, exc: Exception) -> ControlReply:
    """A failed control's reply: its error code, or IO for a bug (logged)."""
    if isinstance(exc, CtdbError):
        return ControlReply(msg.reqid, int(exc.code), exc.message)
    log_failure(log, exc, "control %s from node %d", msg.op, src)
    return ControlReply(msg.reqid, int(ErrorCode.IO), f"{type(exc).__name__}: {exc}")


def _awaitable(result: Any) -> bool:
    """isinstance(result, Awaitable) without the ABC machinery, which costs a
    microsecond on every plain result (most controls, pings among them)."""
    return hasattr(type(result), "__await__")
