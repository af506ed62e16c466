"""The library a Samba-like service uses to talk to its local ctdbd.

Two flavours with the same operations: `Client` (blocking, one request at a
time, what scripts and the admin tool want) and `AsyncClient` (asyncio, any
number of requests in flight on one connection, what a busy service wants).
Keys and values are bytes; `str` is accepted and encoded as UTF-8. Errors
arrive as `CtdbError` with the daemon's stable code.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ctdb import protocol
from ctdb.errors import CtdbError, ErrorCode

DEFAULT_SOCKET = "/var/run/ctdb/ctdbd.socket"


def default_socket() -> str:
    return os.environ.get("CTDB_SOCKET") or DEFAULT_SOCKET


def _b(data: bytes | str) -> bytes:
    return data.encode() if isinstance(data, str) else data


@dataclass(frozen=True)
class Message:
    """A message another client sent to a srvid this client registered."""

    srvid: int
    src: int
    data: bytes


class Client:
    """Blocking client. Not thread-safe: use one per thread."""

    def __init__(self, path: str | None = None, timeout: float | None = 60.0) -> None:
        self.path = path or default_socket()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(self.path)
        except OSError as exc:
            self._sock.close()
            raise CtdbError(
                ErrorCode.DISCONNECTED, f"cannot connect to ctdbd at {self.path}: {exc.strerror}"
            ) from exc
        self._decoder = protocol.ReplyDecoder()
        self._ids = itertools.count(1)
        self._replies: deque[protocol.Reply] = deque()
        self.messages: deque[Message] = deque()
        hello = self.call("hello", version=protocol.VERSION)
        self.pnn: int = hello["pnn"]

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, op: str, **args: Any) -> Any:
        reqid = next(self._ids)
        try:
            self._sock.sendall(protocol.encode_request(reqid, op, args))
        except OSError as exc:
            raise CtdbError(ErrorCode.DISCONNECTED, f"ctdbd connection lost: {exc}") from exc
        while True:
            reply = self._next_reply()
            if reply.reqid == reqid or reply.code:
                return protocol.raise_for(reply)
            if reply.reqid == protocol.EVENT_REQID:
                self.messages.append(Message(**reply.result))

    def _next_reply(self) -> protocol.Reply:
        while not self._replies:
            try:
                # 64 KiB: a 1 MiB buffer costs two page faults per reply.
                data = self._sock.recv(65536)
            except TimeoutError:
                raise CtdbError(ErrorCode.TIMEOUT, "ctdbd did not answer in time") from None
            except OSError as exc:
                raise CtdbError(ErrorCode.DISCONNECTED, f"ctdbd connection lost: {exc}") from exc
            if not data:
                raise CtdbError(ErrorCode.DISCONNECTED, "ctdbd closed the connection")
            self._replies.extend(self._decoder.feed(data))
        return self._replies.popleft()

    # -- records ---------------------------------------------------------------------

    def attach(self, name: str, kind: str = "volatile") -> dict[str, Any]:
        result: dict[str, Any] = self.call("attach", name=name, kind=kind)
        return result

    def fetch(self, db: str, key: bytes | str) -> bytes | None:
        result: bytes | None = self.call("fetch", db=db, key=_b(key))
        return result

    def store(self, db: str, key: bytes | str, value: bytes | str) -> None:
        self.call("store", db=db, key=_b(key), value=_b(value))

    def delete(self, db: str, key: bytes | str) -> None:
        self.call("delete", db=db, key=_b(key))

    def fetch_lock(self, db: str, key: bytes | str) -> bytes | None:
        result: bytes | None = self.call("fetch_lock", db=db, key=_b(key))
        return result

    def store_unlock(self, db: str, key: bytes | str, value: bytes | str) -> None:
        self.call("store_unlock", db=db, key=_b(key), value=_b(value))

    def unlock(self, db: str, key: bytes | str) -> None:
        self.call("unlock", db=db, key=_b(key))

    @contextmanager
    def locked(self, db: str, key: bytes | str) -> Iterator[RecordLock]:
        """`with client.locked(db, key) as rec: rec.value = ...` stores on exit."""
        lock = RecordLock(self.fetch_lock(db, key))
        try:
            yield lock
        except BaseException:
            self.unlock(db, key)
            raise
        if lock.changed and lock.value is not None:
            self.store_unlock(db, key, lock.value)
        else:
            self.unlock(db, key)

    def traverse(self, db: str) -> list[tuple[bytes, bytes]]:
        return [(k, v) for k, v in self.call("traverse", db=db)]

    def transaction(self, db: str) -> Transaction:
        return Transaction(self, db, self.call("trans_start", db=db))

    def transact(
        self, db: str, writes: Mapping[bytes | str, bytes | str | None], attempts: int = 50
    ) -> int:
        """Commit `writes` (None deletes) in one transaction, retried on conflict.

        BUSY (another commit got there first) and RETRY (a recovery cut the
        commit short) are safe to retry: the commit re-validates what the
        transaction read. After `attempts` the last error is raised. Returns
        the database's new sequence number.
        """
        for attempt in range(attempts):
            tx = self.transaction(db)
            for key, value in writes.items():
                if value is None:
                    tx.delete(key)
                else:
                    tx.store(key, value)
            try:
                return tx.commit()
            except CtdbError as exc:
                if exc.code not in (ErrorCode.BUSY, ErrorCode.RETRY) or attempt == attempts - 1:
                    raise
                time.sleep(min(0.05, 0.01 * (attempt + 1)))  # ~2.3 s in all: a recovery's length
        raise ValueError("attempts must be at least 1")

    # -- messaging ---------------------------------------------------------------------

    def register_srvid(self, srvid: int) -> None:
        self.call("register_srvid", srvid=srvid)

    def send_message(self, pnn: int | None, srvid: int, data: bytes | str) -> None:
        self.call("send_message", pnn=pnn, srvid=srvid, data=_b(data))

    def wait_message(self, timeout: float = 10.0) -> Message:
        old = self._sock.gettimeout()
        self._sock.settimeout(timeout)
        try:
            while not self.messages:
                reply = self._next_reply()
                if reply.code:
                    protocol.raise_for(reply)
                if reply.reqid == protocol.EVENT_REQID:
                    self.messages.append(Message(**reply.result))
        finally:
            self._sock.settimeout(old)
        return self.messages.popleft()


class RecordLock:
    def __init__(self, value: bytes | None) -> None:
        self._value = value
        self.changed = False

    @property
    def value(self) -> bytes | None:
        return self._value

    @value.setter
    def value(self, new: bytes | str) -> None:
        self._value = _b(new)
        self.changed = True


class Transaction:
    """A persistent-database transaction: all of it commits on every node, or none."""

    def __init__(self, client: Client, db: str, txid: int) -> None:
        self.client, self.db, self.id = client, db, txid

    def fetch(self, key: bytes | str) -> bytes | None:
        result: bytes | None = self.client.call("trans_fetch", tx=self.id, key=_b(key))
        return result

    def store(self, key: bytes | str, value: bytes | str) -> None:
        self.client.call("trans_store", tx=self.id, key=_b(key), value=_b(value))

    def delete(self, key: bytes | str) -> None:
        self.client.call("trans_delete", tx=self.id, key=_b(key))

    def commit(self) -> int:
        """Returns the database's new sequence number."""
        result: int = self.client.call("trans_commit", tx=self.id)
        return result

    def cancel(self) -> None:
        self.client.call("trans_cancel", tx=self.id)

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.cancel()


def __getattr__(name: str) -> object:
    """`AsyncClient` lives in its own module so that a one-shot script never
    pays for importing asyncio."""
    if name == "AsyncClient":
        from ctdb.client_async import AsyncClient

        return AsyncClient
    raise AttributeError(name)
