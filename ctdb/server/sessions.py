"""The daemon's client socket: connections, flow control, and running requests.

The thin I/O shell around `ctdb.protocol.client` (framing and parsing) and
the operation table of `ctdb.server.clients` (what each request does). A
handler either returns its result at once (the fast path: a record this
node holds, a status query) or returns a coroutine that the session runs as
a task, so one slow request (a record migrating from another node) never
holds up the others.

A client that sends garbage gets an error reply (or, when the stream cannot
be resynchronised, a closed connection) and nobody else notices. A client
that disconnects loses its record locks, open transactions and message
registrations.

A client that does not read its replies cannot make the daemon's memory grow
(see `Session`): reading from it pauses while its replies pile up or while
too many of its requests wait, and one whose queued output still passes a
hard cap is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from pathlib import Path
from typing import Any, cast

from ctdb.common.errors import CtdbError, ErrorCode, log_failure
from ctdb.engines.base import pending
from ctdb.engines.record_calls import Owner
from ctdb.engines.transactions import Transaction
from ctdb.protocol import client as protocol
from ctdb.protocol import schema
from ctdb.protocol.schema import Limits
from ctdb.server import unixsocket
from ctdb.server.clients import OPS
from ctdb.server.node import Node
from ctdb.storage.database import Database

log = logging.getLogger("ctdb.server.sessions")

MiB = 1024 * 1024
#: Reading from a client pauses while more than HIGH_WATER bytes of its
#: replies wait to be sent, and resumes below LOW_WATER.
HIGH_WATER = 1 * MiB
LOW_WATER = 256 * 1024
#: Requests of one client running at once (waiting for a record, a lock or
#: the cluster); past this, reading from it pauses until some finish.
MAX_IN_FLIGHT = 32
#: Output queued for one client past which it is dropped (at least two of
#: the largest replies, MaxFrameSize).
OUTPUT_CAP = 64 * MiB
#: Requests that may change an entry list: a client's disconnection waits
#: for them before removing its entries (`Session.close`).
ENTRY_CHANGES = frozenset({"cond_append", "remove_entries"})


class Session:
    """One connected client, and the bounds on what it can make us hold.

    Back-pressure, not errors: requests are taken from the socket only
    while the client's queued replies are below HIGH_WATER and fewer than
    MAX_IN_FLIGHT of its requests are running; otherwise the socket is not
    read (the client's own writes block) until it reads or requests finish.
    So a client that never reads makes us hold at most HIGH_WATER plus the
    replies of its running requests, plus one socket read of decoded requests.

    What cannot wait is capped instead. A reply larger than MaxFrameSize
    becomes a TOO_BIG error (no client could read it). Replies of requests
    already running and messages pushed to registered srvids arrive whether
    or not the client reads; when they would take its queued output past
    the cap (`output_cap`), the client is dropped with a log line, as CTDB
    drops a client whose queue passes MaxQueueDropMsg. Dropping messages
    instead would leave a client waiting for ever for a message it will
    never get, and not knowing it; a dropped client notices, reconnects and
    registers again.
    """

    def __init__(self, server: ClientServer, transport: asyncio.Transport) -> None:
        self.server = server
        self.node = server.node
        self.transport = transport
        self.greeted = False
        self.tasks: set[asyncio.Task[None]] = set()
        #: the running requests that may change an entry list (see `close`)
        self.entry_changes: set[asyncio.Task[None]] = set()
        self.transactions: dict[int, Transaction] = {}
        self.srvids: set[int] = set()
        self.entry_owner: Owner | None = None
        self.appended: set[tuple[int, bytes]] = set()
        self.closed = False
        #: requests read from the socket and not yet run (the rest of one read)
        self.backlog: deque[protocol.Request | CtdbError] = deque()
        self.writing_paused = False
        self.reading = True
        self.max_reply = int(self.node.tunable("MaxFrameSize"))
        self.output_cap = max(OUTPUT_CAP, 2 * self.max_reply)
        self.pid = unixsocket.peer_pid(transport)
        #: how log lines name it
        self.who = f"client (pid {self.pid})"
        transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)

    # -- helpers used by the handlers ---------------------------------------------

    def database(self, args: dict[str, Any]) -> Database:
        ref = args["db"]
        return self.node.dbs.by_id(ref) if type(ref) is int else self.node.dbs.by_name(ref)

    def transaction(self, args: dict[str, Any]) -> Transaction:
        txid = args["tx"]
        try:
            return self.transactions[txid]
        except KeyError:
            raise CtdbError(ErrorCode.NOT_FOUND, f"no open transaction {txid}") from None

    def on_message(self, srvid: int, src: int, data: bytes) -> None:
        self.write(protocol.encode_event(srvid, src, data))

    def fence(self, why: str) -> None:
        """Close the connection, telling the client why (`Owners.fence_all`)."""
        self.write(protocol.encode_error(0, CtdbError(ErrorCode.DISCONNECTED, why)))
        self.transport.close()

    # -- output and flow control ------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue `data` for the client, or drop the client if that passes the cap."""
        if self.closed or self.transport.is_closing():
            return
        if not unixsocket.write_capped(self.transport, data, self.output_cap, self.who):
            self.node.stats["clients_dropped"] += 1

    def _reply(self, reqid: int, result: Any) -> bytes:
        data = protocol.encode_reply(reqid, result)
        if len(data) > self.max_reply:
            error = CtdbError(
                ErrorCode.TOO_BIG,
                f"reply of {len(data)} bytes exceeds MaxFrameSize ({self.max_reply})",
            )
            return protocol.encode_error(reqid, error)
        return data

    def pause_writing(self) -> None:
        self.writing_paused = True
        self._set_reading(False)

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.pump()

    def _busy(self) -> bool:
        return self.writing_paused or len(self.tasks) >= MAX_IN_FLIGHT

    def _set_reading(self, on: bool) -> None:
        if on == self.reading or self.transport.is_closing():
            return
        self.reading = on
        if on:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    # -- request handling ---------------------------------------------------------

    def handle(self, requests: list[protocol.Request | CtdbError]) -> None:
        self.backlog.extend(requests)
        self.pump()

    def pump(self) -> None:
        """Run the requests read so far while the client's bounds allow, then read more."""
        out: list[bytes] = []
        size = 0
        while self.backlog and not self.closed and not self._busy():
            if size >= HIGH_WATER:  # let the transport say whether the client keeps up
                self.write(b"".join(out))
                out, size = [], 0
                continue
            req = self.backlog.popleft()
            if isinstance(req, protocol.Request):
                data = self._run(req)
                if not data:  # it went async: `_finish` writes its reply
                    continue
            else:
                reqid = getattr(req, "reqid", 0)
                if not reqid:
                    # No request id to answer: the client is broken; tell it why and hang up.
                    self.write(b"".join(out) + protocol.encode_error(0, req))
                    self.backlog.clear()
                    self.transport.close()
                    return
                data = protocol.encode_error(reqid, req)
            out.append(data)
            size += len(data)
        if out:
            self.write(b"".join(out))  # one reply: join returns it as it is
        self._set_reading(not self.backlog and not self._busy())

    def _run(self, req: protocol.Request) -> bytes:
        """Run one request; returns the reply bytes now, or b"" if it went async."""
        self.node.stats["client_requests"] += 1
        try:
            if not self.greeted and req.op != "hello":
                raise CtdbError(ErrorCode.PROTOCOL, "the first request must be 'hello'")
            entry = OPS.get(req.op)
            if entry is None:
                raise CtdbError(
                    ErrorCode.NOT_SUPPORTED, f"unknown operation {schema.short(req.op)}"
                )
            handler, check = entry
            check(req.args, self.server.limits)
            result = handler(self, req.args)
            if pending(result):
                task = asyncio.get_running_loop().create_task(self._finish(req.reqid, result))
                self.tasks.add(task)
                if req.op in ENTRY_CHANGES:
                    self.entry_changes.add(task)
                task.add_done_callback(self._finished)
                return b""
            return self._reply(req.reqid, result)
        except CtdbError as exc:
            return protocol.encode_error(req.reqid, exc)
        except Exception as exc:
            log_failure(log, exc, "operation %s", req.op)
            return protocol.encode_error(req.reqid, _internal(exc))

    async def _finish(self, reqid: int, coro: Any) -> None:
        try:
            data = self._reply(reqid, await coro)
        except CtdbError as exc:
            data = protocol.encode_error(reqid, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log_failure(log, exc, "operation")
            data = protocol.encode_error(reqid, _internal(exc))
        if self.closed:
            # The client left while this ran, and the cancellation did not
            # stop it (asyncio.wait_for in 3.11 may return a result it had
            # just received instead of raising): a lock granted now would
            # have no holder to release it.
            self.node.records.release_all(self)
            return
        self.write(data)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.entry_changes.discard(task)
        if not self.closed and (self.backlog or not self.reading):
            self.pump()  # requests that waited for this one's slot, or reading stopped

    def close(self) -> None:
        """The client went away: release everything it held."""
        if self.closed:
            return
        self.closed = True
        self.backlog.clear()
        # A change of an entry list runs to its end: cancelled, it could
        # still take effect (a call on its way to the dmaster, a commit at
        # the leader) after the removal of the client's entries, and leave
        # one behind for good. The removal waits for them.
        for task in list(self.tasks - self.entry_changes):
            task.cancel()
        self.node.records.release_all(self)
        if self.entry_owner is not None:
            self.node.owners.gone(self.entry_owner, self.appended, set(self.entry_changes))
        self.transactions.clear()
        for srvid in self.srvids:
            self.node.messaging.deregister(srvid, self.on_message)
        self.server.sessions.discard(self)


def _internal(exc: Exception) -> CtdbError:
    """What the client is told of a failure that is not a refusal: a disk's, or a bug."""
    if isinstance(exc, OSError):
        return CtdbError(ErrorCode.IO, str(exc))
    return CtdbError(ErrorCode.IO, f"internal error: {type(exc).__name__}: {exc}")


class _Protocol(asyncio.Protocol):
    def __init__(self, server: ClientServer) -> None:
        self.server = server
        self.decoder = protocol.RequestDecoder(int(server.node.tunable("MaxFrameSize")))
        self.session: Session | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.session = Session(self.server, cast(asyncio.Transport, transport))
        self.server.sessions.add(self.session)

    def data_received(self, data: bytes) -> None:
        assert self.session is not None
        try:
            requests = self.decoder.feed(data)
        except CtdbError as exc:
            log.warning("closing client connection: %s", exc)
            self.session.write(protocol.encode_error(0, exc))
            self.session.transport.close()
            return
        self.session.handle(requests)

    def pause_writing(self) -> None:
        assert self.session is not None
        self.session.pause_writing()

    def resume_writing(self) -> None:
        assert self.session is not None
        self.session.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is not None:
            self.session.close()


class ClientServer:
    def __init__(self, node: Node, path: Path, mode: int = 0o600) -> None:
        self.node = node
        self.path = path
        self.mode = mode
        self.sessions: set[Session] = set()
        #: what client arguments are checked against: this node's current tunables
        self.limits = Limits(node.nodes, node.tunables)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await unixsocket.listen(self.path, self.mode, lambda: _Protocol(self))

    async def stop(self) -> None:
        if self._server is not None:
            for session in list(self.sessions):
                session.transport.abort()
                session.close()
            await unixsocket.close(self._server, self.path)
            self._server = None
