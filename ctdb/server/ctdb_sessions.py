"""CTDB's own client protocol (Samba 4.17), served on a second Unix socket.

Samba's `ctdb` tool, CTDB's test programs and smbd speak CTDB's binary
protocol, not ours (`ctdb/protocol/ctdb_wire.py` decodes it, sans-IO). This
is the thin shell that serves it: one session per connection, each packet
answered at once or, when it needs the cluster, once that is done. What
each control does is in `ctdb.server.ctdb_handlers` (the `ctdb` commands
`pnn`, `ping`, `uptime`, `statistics`, `listvars`, `getvar`, `setvar`,
`status`, `nodestatus`, `getdbmap`, `getdbseqnum`, `attach`, `catdb`,
`getpid`, `getcapabilities`, `process-exists`, `recover`, and what smbd
asks at start-up and per connection); the leader's message
(CTDB_SRVID_LEADER) goes to its listeners at registration and every second.

A control for another node is forwarded to that node's door over the node
links (a `ctdb_control` node control) and answered as it answers there, as
ctdbd forwards it; those bound to the client's own connection (srvid
registrations, traverses) are not.

Messaging as ctdbd's: REGISTER_SRVID and DEREGISTER_SRVID (which fails for
a srvid the client did not register), REQ_MESSAGE to one node, this one or
every connected node (the sender's included), delivered to every client
registered there for the srvid or for CTDB_SRVID_ALL. The srvids are the
node's (`ctdb.server.messaging`), shared with the clients of our own
protocol.

REQ_CALL, which clients sharing the volatile TDB files send to have a
record migrated here, is served over tcp (`ctdb.server.ctdb_calls`) and
answered when the record is here, within CallTimeout.

Every other request gets what ctdbd gives a request it cannot serve: a
control reply with status -1 and no data, a call reply with status -1
(REQ_CALL on the vs transport or a persistent database), logged once per
kind, so a client probing many controls does not flood the log. A request
is never left unanswered, since Samba's clients wait for every reply; a
stream that cannot be framed (bad length, magic or version) is closed,
which they notice at once.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import Counter
from collections.abc import Awaitable, Coroutine
from pathlib import Path
from typing import Any, cast

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol.ctdb_opcodes import (
    BROADCAST_ACTIVE,
    BROADCAST_ALL,
    BROADCAST_CONNECTED,
    CURRENT_NODE,
    Control,
    Operation,
)
from ctdb.protocol.ctdb_wire import (
    BadPacket,
    Header,
    Packet,
    PacketDecoder,
    ReplyCall,
    ReplyControl,
    ReqCall,
    ReqControl,
    ReqMessage,
    UnknownPacket,
)
from ctdb.server import ctdb_calls, unixsocket
from ctdb.server.ctdb_door import FAILED
from ctdb.server.ctdb_handlers import SESSION_BOUND, Outcome, run_control
from ctdb.server.ctdb_seqnum import SeqnumWatch
from ctdb.server.ctdb_transactions import UnknownOutcome
from ctdb.server.node import Node
from ctdb.server.sessions import OUTPUT_CAP
from ctdb.server.state import control_handlers

log = logging.getLogger("ctdb.server.ctdb_sessions")

#: Where the leader says who it is, every second (protocol.h; ctdb_recoverd.c):
#: `ctdb status` and `recover` wait for it.
SRVID_LEADER = 0xF101000000000000
LEADER_INTERVAL = 1.0
#: Controls about the whole cluster, or that every pyctdb node answers alike
#: (no network interfaces): answered here whichever node they name. Other
#: controls for another node are forwarded to that node's door.
ANY_NODE = frozenset({Control.GET_NODEMAP, Control.GETVNNMAP, Control.GET_IFACES})
#: destnodes of a message for every connected node, this one included (ctdbd
#: sends to all, active or connected nodes; pyctdb's messages go to the connected)
BROADCASTS = frozenset({BROADCAST_ALL, BROADCAST_ACTIVE, BROADCAST_CONNECTED})


#: What a Samba client asks before it opens a database's file (its id, its
#: path, the flags to open it with): held back while records are owed back,
#: so that no client that comes meanwhile reaches our files. Nothing else
#: is: a client that holds a chain asks too (a g_lock holder's liveness),
#: and the record whose chain it holds must be able to go back.
TO_OPEN_A_FILE = frozenset(
    {
        Control.DB_ATTACH,
        Control.DB_ATTACH_PERSISTENT,
        Control.DB_ATTACH_REPLICATED,
        Control.GETDBPATH,
        Control.DB_OPEN_FLAGS,
    }
)


def _may_touch_files(packet: Packet | BadPacket) -> bool:
    """Whether answering `packet` may let its client on to our shared files."""
    return isinstance(packet, ReqControl) and packet.opcode in TO_OPEN_A_FILE


def _operation(packet: Packet | BadPacket) -> int:
    if isinstance(packet, BadPacket | UnknownPacket):
        return packet.operation
    return int(packet.OPERATION)


class CtdbSession(asyncio.Protocol):
    """One Samba client connection (`ctdb`, a test program, an smbd)."""

    def __init__(self, server: CtdbProtocolServer) -> None:
        self.server = server
        self.node = server.node
        self.decoder = PacketDecoder(int(self.node.tunable("MaxFrameSize")))
        self.transport: asyncio.Transport | None = None
        #: the client's process id (SO_PEERCRED), for PROCESS_EXISTS and CHECK_PID_SRVID
        self.pid: int | None = None
        #: how log lines name it
        self.who = "a CTDB-protocol client"
        #: message ids the client registered for, each as often as it did
        self.srvids: Counter[int] = Counter()
        #: requests still waiting for the cluster (attach, traverse, forwarded
        #: controls, record calls)
        self.tasks: set[asyncio.Task[None]] = set()
        #: what may wait to be sent to the client before it is dropped
        self.output_cap = max(OUTPUT_CAP, 2 * int(self.node.tunable("MaxFrameSize")))
        #: requests held back until records lent here went back (`_answer_held`)
        self.held: list[Packet | BadPacket] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.pid = unixsocket.peer_pid(transport)
        self.who = f"a CTDB-protocol client (pid {self.pid})"
        self.server.sessions.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.sessions.discard(self)
        for task in self.tasks:
            task.cancel()
        for srvid, times in self.srvids.items():
            for _ in range(times):
                self.node.messaging.deregister(srvid, self.on_message)
        self.srvids.clear()

    def on_message(self, srvid: int, src: int, data: bytes) -> None:
        """A message for a srvid this client registered (or CTDB_SRVID_ALL)."""
        if self.transport is None or self.transport.is_closing():
            return
        header = Header(0, CURRENT_NODE, self.node.pnn, self.node.generation)
        self._write(ReqMessage(header, srvid, data).encode())

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        try:
            packets = self.decoder.feed(data)
        except CtdbError as exc:
            log.warning("closing a CTDB-protocol client: %s", exc.message)
            self.transport.close()
            return
        for packet in packets:
            self.server.packets[_operation(packet)] += 1
            if self.held is None and _may_touch_files(packet) and self.server.owed_back():
                self.held = []
                self._spawn(self._answer_held())
            if self.held is not None:
                self.held.append(packet)
                continue
            self._respond(packet)

    async def _answer_held(self) -> None:
        """Answer what was held back, in order, once what is lent here went
        back (`SambaGrants.given_back`): before that, an answer could let
        the client work in place on a record the others moved past."""
        await self.server.given_back()
        held, self.held = self.held or [], None
        for packet in held:
            self._respond(packet)

    def _respond(self, packet: Packet | BadPacket) -> None:
        reply = self._answer(packet)
        if reply is not None:
            self._write(reply)

    def _write(self, data: bytes) -> None:
        """Queue `data` for the client, or drop a client that does not read
        (messages to its srvids arrive whether or not it reads)."""
        assert self.transport is not None
        if self.transport.is_closing():
            return
        if unixsocket.write_capped(self.transport, data, self.output_cap, self.who):
            self.server.sent += 1
        else:
            self.node.stats["clients_dropped"] += 1

    def _answer(self, packet: Packet | BadPacket) -> bytes | None:
        if isinstance(packet, BadPacket):
            self.server.once(f"bad {packet.operation}", f"malformed packet: {packet.message}")
            return self._failure(packet.header, packet.operation)
        if isinstance(packet, ReqControl):
            return self._control(packet)
        if isinstance(packet, ReqCall):
            return self._call(packet)
        if isinstance(packet, ReqMessage):
            self._message(packet)
            return None
        name = type(packet).__name__
        self.server.once(name, f"{name} is not served yet: dropped")
        return None

    def _message(self, msg: ReqMessage) -> None:
        """Send a client's message on: to one node's listeners, or every node's.

        As ctdbd: nobody answers a message, so one that cannot go anywhere
        (an unknown or disconnected node) is dropped, and logged once.
        """
        dest = msg.header.destnode
        target = None if dest in BROADCASTS else self.node.pnn if dest == CURRENT_NODE else dest
        try:
            self.node.messaging.send(target, msg.srvid, msg.data)
        except CtdbError as exc:
            self.server.once(f"message to {dest}", f"message dropped: {exc.message}")

    def _call(self, req: ReqCall) -> bytes | None:
        """REQ_CALL: -1 at once if it cannot be served, else answered once the record is here."""
        header = self._reply_header(req.header)
        outcome = ctdb_calls.answer(self.node, req, self.server.once)
        if not isinstance(outcome, Awaitable):
            return ReplyCall(header, *outcome).encode()

        async def reply(outcome: Awaitable[tuple[int, bytes]]) -> None:
            status, data = await outcome
            if self.transport is not None and not self.transport.is_closing():
                self._write(ReplyCall(header, status, data).encode())

        self._spawn(reply(outcome))
        return None

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run work for this client; cancelled if it goes away."""
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _reply_header(self, request: Header) -> Header:
        return Header(request.reqid, request.srcnode, self.node.pnn, self.node.generation)

    def _failure(self, request: Header, operation: int) -> bytes | None:
        header = self._reply_header(request)
        if operation == Operation.REQ_CONTROL:
            return ReplyControl(header, FAILED).encode()
        if operation == Operation.REQ_CALL:
            return ReplyCall(header, FAILED).encode()
        return None  # nobody waits for an answer to anything else

    def _control(self, req: ReqControl) -> bytes | None:
        header = self._reply_header(req.header)
        leader_now = False
        try:
            dest = req.header.destnode
            here = dest in (CURRENT_NODE, self.node.pnn) or req.opcode in ANY_NODE
            if req.opcode == Control.REGISTER_SRVID and here:
                self._register(req.srvid)
                # After the reply: a client installs its handler only then.
                leader_now = req.srvid == SRVID_LEADER
                status, data, after = 0, b"", b""
            elif req.opcode == Control.DEREGISTER_SRVID and here:
                self._deregister(req.srvid)
                status, data, after = 0, b"", b""
            elif here:
                outcome = run_control(self.server, req.opcode, req.data)
                if isinstance(outcome, Awaitable):
                    self._later(req, header, outcome)
                    return None
                status, data, after = outcome
            else:
                self._later(req, header, self.server.forward(dest, req))
                return None
        except Exception as exc:
            status, data, after = FAILED, b"", b""
            self._failed(req, exc)
        reply = b"" if req.noreply else ReplyControl(header, status, data).encode()
        if leader_now:
            reply += self.server.leader_message()
        return (reply + after) or None

    def _register(self, srvid: int) -> None:
        self.node.messaging.register_client(srvid, self.on_message)
        self.srvids[srvid] += 1

    def _deregister(self, srvid: int) -> None:
        if not self.srvids[srvid]:
            del self.srvids[srvid]
            raise CtdbError(ErrorCode.NOT_FOUND, f"srvid {srvid:#x} is not registered")
        self.srvids[srvid] -= 1
        if not self.srvids[srvid]:
            del self.srvids[srvid]
        self.node.messaging.deregister(srvid, self.on_message)

    def _failed(self, req: ReqControl, exc: Exception) -> None:
        """Log a control that failed (it answers -1 with no data, as ctdbd's do)."""
        self.server.failed(req.opcode, exc)

    def _later(self, req: ReqControl, header: Header, outcome: Awaitable[Outcome]) -> None:
        """Answer a control that waits for the cluster once it is done."""

        async def answer() -> None:
            try:
                status, data, after = await outcome
            except asyncio.CancelledError:
                raise
            except UnknownOutcome as exc:
                # Any answer would be misread (`ctdb_transactions`): the client
                # sees its daemon go away, an error it does not second-guess.
                log.warning("closing %s: %s", self.who, exc.message)
                if self.transport is not None:
                    self.transport.close()
                return
            except Exception as exc:
                status, data, after = FAILED, b"", b""
                self._failed(req, exc)
            if self.transport is None or self.transport.is_closing():
                return
            reply = b"" if req.noreply else ReplyControl(header, status, data).encode()
            if reply or after:
                self._write(reply + after)

        self._spawn(answer())

    def send_leader(self) -> None:
        if SRVID_LEADER in self.srvids and self.transport is not None:
            self._write(self.server.leader_message())


class CtdbProtocolServer:
    """Listens on the CTDB-protocol socket (`[server] ctdb socket`)."""

    def __init__(self, node: Node, path: Path, mode: int = 0o600) -> None:
        self.node = node
        self.path = path
        self.mode = mode
        self.sessions: set[CtdbSession] = set()
        self._server: asyncio.AbstractServer | None = None
        self._said: set[str] = set()
        #: packets clients sent, by operation, and packets sent to clients
        #: (for STATISTICS)
        self.packets: Counter[int] = Counter()
        self.sent = 0
        self._leader_task: asyncio.Task[None] | None = None
        self.seqnums = SeqnumWatch(node)
        #: forced recoveries asked for with SET_RECMODE (`ctdb recover`)
        self._recoveries: set[asyncio.Task[None]] = set()
        # Controls other nodes' doors forward to this one (ctl_ctdb_control).
        node.controls.handlers |= control_handlers(self)

    def owed_back(self) -> bool:
        """Our Samba clients must not go on yet (`Membership.owed_back`)."""
        return self.node.membership.owed_back()

    async def given_back(self) -> None:
        """Once they may, or CallTimeout passed (then answer anyway)."""
        await self.node.membership.given_back(self.node.now() + self.node.tunable("CallTimeout"))

    def failed(self, opcode: int, exc: Exception) -> None:
        """Log a control that failed: once per kind if it is not served, in
        full if it is a bug (which costs that request, not the connection)."""
        if isinstance(exc, CtdbError):
            self.once(f"control {opcode}", f"not served: {exc.message}")
        else:
            log.error("CTDB control %d failed", opcode, exc_info=exc)

    async def forward(self, dest: int, req: ReqControl) -> Outcome:
        """Run a client's control on node `dest`'s door, as ctdbd forwards it."""
        if req.opcode in SESSION_BOUND:
            raise CtdbError(ErrorCode.NOT_SUPPORTED, f"control {req.opcode} for another node")
        args = {"opcode": req.opcode, "srvid": req.srvid, "data": req.data}
        result = await self.node.control(dest, "ctdb_control", args)
        return int(result["status"]), bytes(result["data"]), b""

    def ctl_ctdb_control(
        self, src: int, args: dict[str, Any]
    ) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """A control a client of node `src` sent for this node: answered at
        once when its handler answers at once (a forwarded ping costs no
        task here), else once it is done."""
        opcode = int(args["opcode"])
        try:
            if opcode in SESSION_BOUND:
                raise CtdbError(ErrorCode.NOT_SUPPORTED, f"control {opcode} from another node")
            outcome = run_control(self, opcode, bytes(args["data"]))
        except Exception as exc:
            return self._forwarded_failure(opcode, exc)
        if isinstance(outcome, Awaitable):
            return self._forwarded_later(opcode, outcome)
        status, data, _ = outcome
        return {"status": status, "data": data}

    async def _forwarded_later(self, opcode: int, outcome: Awaitable[Outcome]) -> dict[str, Any]:
        try:
            status, data, _ = await outcome
        except Exception as exc:
            return self._forwarded_failure(opcode, exc)
        return {"status": status, "data": data}

    def _forwarded_failure(self, opcode: int, exc: Exception) -> dict[str, Any]:
        """A forwarded control that failed answers -1 with no data, as ctdbd's do."""
        self.failed(opcode, exc)
        return {"status": FAILED, "data": b""}

    def recover_later(self) -> None:
        node = self.node

        async def recover() -> None:
            try:
                await node.admin.ctl_recover(node.pnn, {})
            except CtdbError as exc:
                log.warning("recovery asked for by a CTDB client failed: %s", exc.message)

        task = asyncio.get_running_loop().create_task(recover())
        self._recoveries.add(task)
        task.add_done_callback(self._recoveries.discard)

    def once(self, kind: str, message: str) -> None:
        """Log what this daemon does not serve, once per kind of request."""
        if kind not in self._said:
            self._said.add(kind)
            log.info("CTDB protocol: %s", message)

    def leader_message(self) -> bytes:
        """Who leads, as CTDB's recovery daemon tells its clients (nothing while
        nobody does: the tool then waits, as it would for ctdbd)."""
        leader = self.node.leader
        if leader < 0:
            return b""
        header = Header(0, CURRENT_NODE, self.node.pnn, self.node.generation)
        return ReqMessage(header, SRVID_LEADER, struct.pack("<I", leader)).encode()

    async def _announce_leader(self) -> None:
        while True:
            await asyncio.sleep(LEADER_INTERVAL)
            for session in list(self.sessions):
                session.send_leader()

    async def start(self) -> None:
        self._leader_task = self.node.supervised(self._announce_leader())
        self.seqnums.start()
        self._server = await unixsocket.listen(self.path, self.mode, lambda: CtdbSession(self))

    async def stop(self) -> None:
        if self._leader_task is not None:
            self._leader_task.cancel()
            # (what it raised, if it ended by itself, stopped the node already)
            await asyncio.gather(self._leader_task, return_exceptions=True)
            self._leader_task = None
        await self.seqnums.stop()
        if self._server is not None:
            for session in list(self.sessions):
                if session.transport is not None:
                    session.transport.abort()
            await unixsocket.close(self._server, self.path)
            self._server = None
