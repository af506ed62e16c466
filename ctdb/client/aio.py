"""The asyncio front end: any number of requests in flight on one connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from ctdb.client import entry_locks
from ctdb.client import operations as ops
from ctdb.client.blocking import RecordLock
from ctdb.client.connection import Connection
from ctdb.client.entry_locks import Ticket
from ctdb.client.operations import Key, Listen, Message, Op, Plan, Sleep
from ctdb.common.client_socket import default_socket
from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol import client as protocol

if TYPE_CHECKING:  # imported when used: it loads libtdb
    from ctdb.client.in_place import InPlaceRecords

P = ParamSpec("P")
T = TypeVar("T")


def _awaitable(op: Callable[P, Op[T]]) -> Callable[Concatenate[Any, P], Awaitable[T]]:
    """A method of `AsyncClient` that runs the operation `op` builds."""

    def method(self: AsyncClient, *args: P.args, **kwargs: P.kwargs) -> Awaitable[T]:
        return self.run(op(*args, **kwargs))

    method.__name__, method.__doc__ = op.__name__, op.__doc__
    return method


def _awaitable_plan(plan: Callable[P, Plan[T]]) -> Callable[Concatenate[Any, P], Awaitable[T]]:
    """A method of `AsyncClient` that follows the plan `plan` makes."""

    def method(self: AsyncClient, *args: P.args, **kwargs: P.kwargs) -> Awaitable[T]:
        return self.follow(plan(*args, **kwargs))

    method.__name__, method.__doc__ = plan.__name__, plan.__doc__
    return method


def _in_transaction(
    op: Callable[Concatenate[int, P], Op[T]],
) -> Callable[Concatenate[Any, P], Awaitable[T]]:
    """A method of `AsyncTransaction`: the operation on its transaction."""

    def method(self: AsyncTransaction, *args: P.args, **kwargs: P.kwargs) -> Awaitable[T]:
        return self.client.run(op(self.id, *args, **kwargs))

    method.__name__, method.__doc__ = op.__name__, op.__doc__
    return method


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: AsyncClient) -> None:
        self.owner = owner

    def data_received(self, data: bytes) -> None:
        self.owner._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._fail_all(CtdbError(ErrorCode.DISCONNECTED, "ctdbd closed the connection"))


class AsyncClient:
    """asyncio client: `await AsyncClient.connect(path)`, then the same operations as `Client`."""

    def __init__(self, *, in_place: bool = False) -> None:
        self._in_place: InPlaceRecords | None = None
        if in_place:  # see `Client`
            from ctdb.client.in_place import InPlaceRecords

            self._in_place = InPlaceRecords()
        self._transport: asyncio.Transport | None = None
        self._conn = Connection()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        #: srvid -> the `_listen`s waiting for a message to it
        self._listeners: dict[int, list[asyncio.Future[Message]]] = {}
        self.pnn = -1

    @classmethod
    async def connect(cls, path: str | None = None, *, in_place: bool = False) -> AsyncClient:
        """Connect to the daemon at `path`; `in_place` as for `Client`."""
        self = cls(in_place=in_place)
        loop = asyncio.get_running_loop()
        target = path or default_socket()
        try:
            transport, _ = await loop.create_unix_connection(lambda: _Protocol(self), target)
        except OSError as exc:
            raise CtdbError(
                ErrorCode.DISCONNECTED, f"cannot connect to ctdbd at {target}: {exc.strerror}"
            ) from exc
        self._transport = transport  # type: ignore[assignment]
        hello = await self.call("hello", version=protocol.VERSION)
        self.pnn = hello["pnn"]
        return self

    async def close(self) -> None:
        if self._in_place is not None:
            self._in_place.release_all()
        if self._transport is not None:
            self._transport.close()

    async def call(self, op: str, **args: Any) -> Any:
        """Any operation the daemon offers, by name."""
        return await self.run(Op(op, args))

    async def run(self, op: Op[T]) -> T:
        here = self._in_place
        if here is not None and op.local is not None:
            db = op.args["db"]
            if not here.knows(db):
                here.learn(db, await self.run(ops.in_place(db)))
            done, result = op.local(here)
            if done:
                return result  # type: ignore[no-any-return]
        if self._transport is None or self._transport.is_closing():
            raise CtdbError(ErrorCode.DISCONNECTED, "ctdbd connection is closed")
        reqid, frame = self._conn.request(op)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[reqid] = fut
        self._transport.write(frame)
        try:
            return op.shape(await fut)
        finally:
            self._pending.pop(reqid, None)

    async def follow(self, plan: Plan[T]) -> T:
        """Run an operation made of several requests (see `operations.Plan`)."""
        result: Any = None
        error: CtdbError | None = None
        while True:
            try:
                step = plan.send(result) if error is None else plan.throw(error)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            result, error = None, None
            if isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
                continue
            try:
                result = await (self._listen(step) if isinstance(step, Listen) else self.run(step))
            except CtdbError as exc:
                error = exc

    async def _listen(self, step: Listen) -> Message | None:
        """The first message to `step.srvid` within `step.seconds`, or None.

        One that came before is taken from the queue (the others stay, in
        order). Then the wait is registered for the srvid: a message to it
        wakes every task listening for it (a hint to each to look again,
        `Listen`), so that tasks sharing the connection never take each
        other's (two tasks waiting for their turns on entry lists each
        waited out its re-read period when a sibling had taken its head
        message off the queue).
        """
        found: Message | None = None
        kept: list[Message] = []
        while not self.messages.empty():
            message = self.messages.get_nowait()
            if found is None and message.srvid == step.srvid:
                found = message
            else:
                kept.append(message)
        for message in kept:
            self.messages.put_nowait(message)
        if found is not None or step.seconds <= 0:
            return found
        heard: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        listeners = self._listeners.setdefault(step.srvid, [])
        listeners.append(heard)
        try:
            return await asyncio.wait_for(heard, step.seconds)
        except TimeoutError:
            return None
        finally:
            if heard in listeners:
                listeners.remove(heard)
            if not listeners and self._listeners.get(step.srvid) is listeners:
                del self._listeners[step.srvid]

    def _on_data(self, data: bytes) -> None:
        for event in self._conn.receive(data):
            if isinstance(event, CtdbError):
                self._fail_all(event)
            elif isinstance(event, Message):
                waiting = [f for f in self._listeners.pop(event.srvid, []) if not f.done()]
                for heard in waiting:
                    heard.set_result(event)
                if not waiting:
                    self.messages.put_nowait(event)
            else:
                waiter = self._pending.get(event.reqid)
                if waiter is None or waiter.done():
                    continue
                if event.error is not None:
                    waiter.set_exception(event.error)
                else:
                    waiter.set_result(event.result)

    def _fail_all(self, error: CtdbError) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(error)

    # -- the operations (ctdb.client.operations) ---------------------------------------

    attach = _awaitable(ops.attach)
    fetch = _awaitable(ops.fetch)
    store = _awaitable(ops.store)
    delete = _awaitable(ops.delete)
    fetch_lock = _awaitable(ops.fetch_lock)
    store_unlock = _awaitable(ops.store_unlock)
    unlock = _awaitable(ops.unlock)
    traverse = _awaitable(ops.traverse)
    getdbseqnum = _awaitable(ops.getdbseqnum)
    cond_append = _awaitable(ops.cond_append)
    entries = _awaitable(ops.entries)
    remove_entries = _awaitable(ops.remove_entries)
    register_srvid = _awaitable(ops.register_srvid)
    deregister_srvid = _awaitable(ops.deregister_srvid)
    send_message = _awaitable(ops.send_message)

    @asynccontextmanager
    async def locked(self, db: str, key: Key) -> AsyncIterator[RecordLock]:
        """`async with client.locked(db, key) as rec: rec.value = ...` stores on exit."""
        lock = RecordLock(await self.fetch_lock(db, key))
        try:
            yield lock
        except BaseException:
            await self.unlock(db, key)
            raise
        if lock.changed and lock.value is not None:
            await self.store_unlock(db, key, lock.value)
        else:
            await self.unlock(db, key)

    enqueue = _awaitable_plan(entry_locks.enqueue)
    wait_turn = _awaitable_plan(entry_locks.wait_turn)
    release = _awaitable(entry_locks.release)

    @asynccontextmanager
    async def lock(self, db: str, name: Key, timeout: float | None = 60.0) -> AsyncIterator[Ticket]:
        """`async with client.lock(db, name):` holds the exclusive lock `name`."""
        ticket = await self.follow(entry_locks.lock(db, name, timeout))
        try:
            yield ticket
        finally:
            await self.release(ticket)

    @asynccontextmanager
    async def queue_lock(
        self, db: str, name: Key, timeout: float | None = 60.0
    ) -> AsyncIterator[Ticket]:
        """`async with client.queue_lock(db, name):` holds the FIFO lock `name`."""
        ticket = await self.follow(entry_locks.queue_lock(db, name, timeout))
        try:
            yield ticket
        finally:
            await self.release(ticket)

    async def transaction(self, db: str) -> AsyncTransaction:
        return AsyncTransaction(self, await self.run(ops.trans_start(db)))

    transact = _awaitable_plan(ops.transact)

    async def wait_message(self, timeout: float = 10.0) -> Message:
        try:
            return await asyncio.wait_for(self.messages.get(), timeout)
        except TimeoutError:
            raise CtdbError(ErrorCode.TIMEOUT, f"no message within {timeout:g}s") from None


class AsyncTransaction:
    """`Transaction` for `AsyncClient`: `async with await client.transaction(db) as tx`."""

    def __init__(self, client: AsyncClient, txid: int) -> None:
        self.client, self.id = client, txid

    fetch = _in_transaction(ops.trans_fetch)
    store = _in_transaction(ops.trans_store)
    delete = _in_transaction(ops.trans_delete)
    commit = _in_transaction(ops.trans_commit)
    cancel = _in_transaction(ops.trans_cancel)

    async def __aenter__(self) -> AsyncTransaction:
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            await self.commit()
        else:
            await self.cancel()
