"""The asyncio flavour of the client library (see `ctdb.client`)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from ctdb import protocol
from ctdb.client import Message, _b, default_socket
from ctdb.errors import CtdbError, ErrorCode


class _AsyncProtocol(asyncio.Protocol):
    def __init__(self, owner: AsyncClient) -> None:
        self.owner = owner
        self.decoder = protocol.ReplyDecoder()

    def data_received(self, data: bytes) -> None:
        for reply in self.decoder.feed(data):
            self.owner._on_reply(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._on_lost()


class AsyncClient:
    """asyncio client: many requests in flight on one connection."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self.pnn = -1

    @classmethod
    async def connect(cls, path: str | None = None) -> AsyncClient:
        self = cls()
        loop = asyncio.get_running_loop()
        target = path or default_socket()
        try:
            transport, _ = await loop.create_unix_connection(lambda: _AsyncProtocol(self), target)
        except OSError as exc:
            raise CtdbError(
                ErrorCode.DISCONNECTED, f"cannot connect to ctdbd at {target}: {exc.strerror}"
            ) from exc
        self._transport = transport  # type: ignore[assignment]
        hello = await self.call("hello", version=protocol.VERSION)
        self.pnn = hello["pnn"]
        return self

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def call(self, op: str, **args: Any) -> Any:
        if self._transport is None or self._transport.is_closing():
            raise CtdbError(ErrorCode.DISCONNECTED, "ctdbd connection is closed")
        reqid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[reqid] = fut
        self._transport.write(protocol.encode_request(reqid, op, args))
        try:
            return await fut
        finally:
            self._pending.pop(reqid, None)

    def _on_reply(self, reply: protocol.Reply) -> None:
        if reply.reqid == protocol.EVENT_REQID and reply.code:
            error = CtdbError(reply.code, str(reply.result))
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(error)
            return
        if reply.reqid == protocol.EVENT_REQID:
            self.messages.put_nowait(Message(**reply.result))
            return
        waiter = self._pending.get(reply.reqid)
        if waiter is None or waiter.done():
            return
        if reply.code:
            waiter.set_exception(CtdbError(reply.code, str(reply.result)))
        else:
            waiter.set_result(reply.result)

    def _on_lost(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(CtdbError(ErrorCode.DISCONNECTED, "ctdbd closed the connection"))

    async def fetch(self, db: str, key: bytes | str) -> bytes | None:
        result: bytes | None = await self.call("fetch", db=db, key=_b(key))
        return result

    async def store(self, db: str, key: bytes | str, value: bytes | str) -> None:
        await self.call("store", db=db, key=_b(key), value=_b(value))

    async def delete(self, db: str, key: bytes | str) -> None:
        await self.call("delete", db=db, key=_b(key))

    async def fetch_lock(self, db: str, key: bytes | str) -> bytes | None:
        result: bytes | None = await self.call("fetch_lock", db=db, key=_b(key))
        return result

    async def store_unlock(self, db: str, key: bytes | str, value: bytes | str) -> None:
        await self.call("store_unlock", db=db, key=_b(key), value=_b(value))

    async def unlock(self, db: str, key: bytes | str) -> None:
        await self.call("unlock", db=db, key=_b(key))
