"""The blocking front end: one request at a time, what scripts and the admin tool want."""

from __future__ import annotations

import select
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from ctdb.client import entry_locks
from ctdb.client import operations as ops
from ctdb.client.connection import Connection, Event
from ctdb.client.entry_locks import Ticket
from ctdb.client.operations import Key, Listen, Message, Op, Plan, Sleep, to_bytes
from ctdb.common.client_socket import default_socket
from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol import client as protocol

if TYPE_CHECKING:  # imported when used: it loads libtdb, a tenth of ctdbtool's start-up
    from ctdb.client.in_place import InPlaceRecords

P = ParamSpec("P")
T = TypeVar("T")


def _blocking(op: Callable[P, Op[T]]) -> Callable[Concatenate[Any, P], T]:
    """A method of `Client` that runs the operation `op` builds."""

    def method(self: Client, *args: P.args, **kwargs: P.kwargs) -> T:
        return self.run(op(*args, **kwargs))

    method.__name__, method.__doc__ = op.__name__, op.__doc__
    return method


def _blocking_plan(plan: Callable[P, Plan[T]]) -> Callable[Concatenate[Any, P], T]:
    """A method of `Client` that follows the plan `plan` makes."""

    def method(self: Client, *args: P.args, **kwargs: P.kwargs) -> T:
        return self.follow(plan(*args, **kwargs))

    method.__name__, method.__doc__ = plan.__name__, plan.__doc__
    return method


def _in_transaction(op: Callable[Concatenate[int, P], Op[T]]) -> Callable[Concatenate[Any, P], T]:
    """A method of `Transaction`: the operation on its transaction."""

    def method(self: Transaction, *args: P.args, **kwargs: P.kwargs) -> T:
        return self.client.run(op(self.id, *args, **kwargs))

    method.__name__, method.__doc__ = op.__name__, op.__doc__
    return method


def _set_kernel_timeout(sock: socket.socket, seconds: float | None) -> None:
    """Bound each send on `sock` with SO_SNDTIMEO (and a receive with SO_RCVTIMEO).

    Rather than Python's socket timeouts, which put the socket in
    non-blocking mode and poll() before every send as well: a system call
    more per request. A kernel timeout that expires makes the call fail
    with EAGAIN.
    """
    if seconds is None:
        sec, usec = 0, 0  # a zero timeval: no timeout
    else:
        micros = max(1, int(seconds * 1e6))  # never zero, which would mean "no timeout"
        sec, usec = divmod(micros, 1_000_000)
    timeval = struct.pack("@ll", sec, usec)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


class Client:
    """Blocking client. Not thread-safe: use one per thread."""

    def __init__(
        self, path: str | None = None, timeout: float | None = 60.0, *, in_place: bool = False
    ) -> None:
        """Connect to the daemon at `path` (default: $CTDB_SOCKET).

        `in_place`: use the records of volatile databases that this node is
        dmaster of in this process, as Samba's clients do
        (`ctdb.client.in_place`); tcp clusters only, elsewhere it changes nothing.
        """
        self.path = path or default_socket()
        self._in_place: InPlaceRecords | None = None
        if in_place:
            from ctdb.client.in_place import InPlaceRecords

            self._in_place = InPlaceRecords()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(self.path)
        except OSError as exc:
            self._sock.close()
            raise CtdbError(
                ErrorCode.DISCONNECTED, f"cannot connect to ctdbd at {self.path}: {exc.strerror}"
            ) from exc
        self._timeout = timeout
        self._sock.settimeout(None)
        # Replies are waited for in poll(), not asleep in recv(): the kernel
        # wakes a Unix socket's sleepers whenever the peer reads what it was
        # sent, so a client asleep in recv() is woken for nothing each time
        # the daemon reads its request, and sleeps again (the wake-up costs
        # the daemon about 5 us per request); poll() sleeps for data only.
        self._readable = select.poll()
        self._readable.register(self._sock, select.POLLIN)
        self._wait_ms = -1
        self._bound(timeout)
        self._conn = Connection()
        self._events: deque[Event] = deque()
        self.messages: deque[Message] = deque()
        hello = self.call("hello", version=protocol.VERSION)
        self.pnn: int = hello["pnn"]

    def close(self) -> None:
        if self._in_place is not None:
            self._in_place.release_all()
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, op: str, **args: Any) -> Any:
        """Any operation the daemon offers, by name (the admin tool uses this)."""
        return self.run(Op(op, args))

    def run(self, op: Op[T]) -> T:
        here = self._in_place
        if here is not None and op.local is not None:
            db = op.args["db"]
            if not here.knows(db):
                here.learn(db, self.run(ops.in_place(db)))
            done, result = op.local(here)
            if done:
                return result  # type: ignore[no-any-return]
        reqid, frame = self._conn.request(op)
        try:
            self._sock.sendall(frame)
        except OSError as exc:
            raise CtdbError(ErrorCode.DISCONNECTED, f"ctdbd connection lost: {exc}") from exc
        while True:
            event = self._next_event()
            if isinstance(event, CtdbError):
                raise event
            if isinstance(event, Message):
                self.messages.append(event)
            elif event.reqid == reqid:
                if event.error is not None:
                    raise event.error
                return op.shape(event.result)

    def follow(self, plan: Plan[T]) -> T:
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
                time.sleep(step.seconds)
                continue
            try:
                result = self._listen(step) if isinstance(step, Listen) else self.run(step)
            except CtdbError as exc:
                error = exc

    def _listen(self, step: Listen) -> Message | None:
        for message in self.messages:
            if message.srvid == step.srvid:
                self.messages.remove(message)
                return message
        deadline = time.monotonic() + step.seconds
        try:
            while (left := deadline - time.monotonic()) > 0:
                self._bound(left)
                try:
                    event = self._next_event()
                except CtdbError as exc:
                    if exc.code == ErrorCode.TIMEOUT:
                        return None
                    raise
                if isinstance(event, CtdbError):
                    raise event
                if isinstance(event, Message):
                    if event.srvid == step.srvid:
                        return event
                    self.messages.append(event)
            return None
        finally:
            self._bound(self._timeout)

    def _bound(self, seconds: float | None) -> None:
        """How long a send, and the wait for what the daemon sends, may take."""
        _set_kernel_timeout(self._sock, seconds)
        # (poll() takes a C int of milliseconds: some 24 days at most)
        self._wait_ms = -1 if seconds is None else min(max(1, int(seconds * 1000)), 2**31 - 1)

    def _next_event(self) -> Event:
        while not self._events:
            if not self._readable.poll(self._wait_ms):
                raise CtdbError(ErrorCode.TIMEOUT, "ctdbd did not answer in time")
            try:
                # 64 KiB: a 1 MiB buffer costs two page faults per reply.
                data = self._sock.recv(65536)
            except (TimeoutError, BlockingIOError):
                raise CtdbError(ErrorCode.TIMEOUT, "ctdbd did not answer in time") from None
            except OSError as exc:
                raise CtdbError(ErrorCode.DISCONNECTED, f"ctdbd connection lost: {exc}") from exc
            if not data:
                raise CtdbError(ErrorCode.DISCONNECTED, "ctdbd closed the connection")
            self._events.extend(self._conn.receive(data))
        return self._events.popleft()

    # -- the operations (ctdb.client.operations) ---------------------------------------

    attach = _blocking(ops.attach)
    fetch = _blocking(ops.fetch)
    store = _blocking(ops.store)
    delete = _blocking(ops.delete)
    fetch_lock = _blocking(ops.fetch_lock)
    store_unlock = _blocking(ops.store_unlock)
    unlock = _blocking(ops.unlock)
    traverse = _blocking(ops.traverse)
    getdbseqnum = _blocking(ops.getdbseqnum)
    cond_append = _blocking(ops.cond_append)
    entries = _blocking(ops.entries)
    remove_entries = _blocking(ops.remove_entries)
    register_srvid = _blocking(ops.register_srvid)
    deregister_srvid = _blocking(ops.deregister_srvid)
    send_message = _blocking(ops.send_message)

    @contextmanager
    def locked(self, db: str, key: Key) -> Iterator[RecordLock]:
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

    enqueue = _blocking_plan(entry_locks.enqueue)
    wait_turn = _blocking_plan(entry_locks.wait_turn)
    release = _blocking(entry_locks.release)

    @contextmanager
    def lock(self, db: str, name: Key, timeout: float | None = 60.0) -> Iterator[Ticket]:
        """`with client.lock(db, name):` holds the exclusive lock `name` (`entry_locks.lock`)."""
        ticket = self.follow(entry_locks.lock(db, name, timeout))
        try:
            yield ticket
        finally:
            self.release(ticket)

    @contextmanager
    def queue_lock(self, db: str, name: Key, timeout: float | None = 60.0) -> Iterator[Ticket]:
        """`with client.queue_lock(db, name):` holds the FIFO lock `name`, fairly
        (`entry_locks.queue_lock`)."""
        ticket = self.follow(entry_locks.queue_lock(db, name, timeout))
        try:
            yield ticket
        finally:
            self.release(ticket)

    def transaction(self, db: str) -> Transaction:
        return Transaction(self, self.run(ops.trans_start(db)))

    transact = _blocking_plan(ops.transact)

    def wait_message(self, timeout: float = 10.0) -> Message:
        self._bound(timeout)
        try:
            while not self.messages:
                event = self._next_event()
                if isinstance(event, CtdbError):
                    raise event
                if isinstance(event, Message):
                    self.messages.append(event)
        finally:
            self._bound(self._timeout)
        return self.messages.popleft()


class RecordLock:
    """The value of a record locked by `Client.locked`; assigning it stores on exit."""

    def __init__(self, value: bytes | None) -> None:
        self._value = value
        self.changed = False

    @property
    def value(self) -> bytes | None:
        return self._value

    @value.setter
    def value(self, new: Key) -> None:
        self._value = to_bytes(new)
        self.changed = True


class Transaction:
    """A persistent-database transaction: all of it commits on every node, or none."""

    def __init__(self, client: Client, txid: int) -> None:
        self.client, self.id = client, txid

    fetch = _in_transaction(ops.trans_fetch)
    store = _in_transaction(ops.trans_store)
    delete = _in_transaction(ops.trans_delete)
    commit = _in_transaction(ops.trans_commit)
    cancel = _in_transaction(ops.trans_cancel)

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.cancel()
