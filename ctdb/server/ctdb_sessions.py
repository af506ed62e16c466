"""CTDB's own client protocol (Samba 4.17), served on a second Unix socket.

Samba's `ctdb` tool, CTDB's test programs and smbd speak CTDB's binary
protocol, not ours (`ctdb/protocol/ctdb_wire.py` decodes it, sans-IO). This
is the thin shell that serves it: one session per connection, each packet
answered at once. So far it answers what every `ctdb` command sends first
and the commands that need nothing else (`ctdb pnn`, `ping`, `uptime`,
`listvars`, `getvar`, `setvar`, `status`, `getdbmap`, `getdbseqnum`,
`attach`, `catdb`): GET_PNN, PING, UPTIME, GET_RECMODE, GET_RUNSTATE,
LIST_TUNABLES, GET_TUNABLE, SET_TUNABLE, GET_NODEMAP, GETVNNMAP,
GET_IFACES, GET_DBMAP, GET_DBNAME, GETDBPATH, DB_GET_HEALTH, GET_DB_SEQNUM,
DB_ATTACH, DB_ATTACH_PERSISTENT, DB_ATTACH_REPLICATED (answered once every
node attached), DB_OPEN_FLAGS (the flags the daemon's own handle has, which
a client opening the file uses verbatim), TRAVERSE_START and
TRAVERSE_START_EXT (`ctdb catdb`, smbd's traverses), and the leader's
message (CTDB_SRVID_LEADER, at registration and every second).

Messaging as ctdbd's: REGISTER_SRVID and DEREGISTER_SRVID (which fails for
a srvid the client did not register), REQ_MESSAGE to one node, this one or
every connected node (the sender's included), delivered to every client
registered there for the srvid or for CTDB_SRVID_ALL. The srvids are the
node's (`ctdb.server.messaging`), shared with the clients of our own
protocol. Controls for another node than this one are not forwarded yet
(they fail), except those every node answers alike.

Every other request gets what ctdbd gives a request it cannot serve: a
control reply with status -1 and no data, a call reply with status -1
(logged once per kind, so a client probing many controls does not flood the
log). A request is never left unanswered, since Samba's clients wait for
every reply; a stream that cannot be framed (bad length, magic or version)
is closed, which they notice at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from ctdb.common.config import TUNABLES
from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol.client import ENTRY_HEAD_SRVID
from ctdb.protocol.ctdb_control_structs import IfaceList, TraverseStart, TraverseStartExt
from ctdb.protocol.ctdb_controls import codec_for
from ctdb.protocol.ctdb_opcodes import (
    BROADCAST_ACTIVE,
    BROADCAST_ALL,
    BROADCAST_CONNECTED,
    CURRENT_NODE,
    Control,
    Operation,
)
from ctdb.protocol.ctdb_records import LtdbHeader, RecData
from ctdb.protocol.ctdb_types import (
    Dbid,
    DbidMap,
    NodeAndFlags,
    NodeMap,
    SockAddr,
    Tunable,
    Uptime,
    VarList,
    VnnMap,
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
)
from ctdb.server import unixsocket
from ctdb.server.node import Node
from ctdb.storage.database import DbKind

log = logging.getLogger("ctdb.server.ctdb_sessions")

#: CTDB's run state RUNNING (ctdb_protocol.h `enum ctdb_runstate`).
RUNSTATE_RUNNING = 5
#: Where the leader says who it is, every second (protocol.h; ctdb_recoverd.c):
#: `ctdb status` and `recover` wait for it.
SRVID_LEADER = 0xF101000000000000
LEADER_INTERVAL = 1.0
#: Controls about the whole cluster, or that every pyctdb node answers alike
#: (no network interfaces): answered here whichever node they name. Any other
#: control for another node fails: forwarding is not built yet.
ANY_NODE = frozenset({Control.GET_NODEMAP, Control.GETVNNMAP, Control.GET_IFACES})
#: What ctdbd answers a request it cannot serve.
FAILED = -1
#: destnodes of a message for every connected node, this one included (ctdbd
#: sends to all, active or connected nodes; pyctdb's messages go to the connected)
BROADCASTS = frozenset({BROADCAST_ALL, BROADCAST_ACTIVE, BROADCAST_CONNECTED})

#: (session, decoded request data) -> (status, reply value for the codec), or a
#: coroutine of it for a control that needs the cluster (attach, traverse),
#: which may add the bytes to send after the reply
Handler = Callable[["CtdbSession", Any], Any]


def _timeval(t: float) -> tuple[int, int]:
    sec = int(t)
    return sec, int((t - sec) * 1_000_000)


def _pnn(s: CtdbSession, _: None) -> tuple[int, Any]:
    return s.node.pnn, None


def _ping(s: CtdbSession, _: None) -> tuple[int, Any]:
    return len(s.server.sessions), None  # ctdbd answers its number of clients


def _uptime(s: CtdbSession, _: None) -> tuple[int, Any]:
    node = s.node
    last = node.last_recovery
    finished = float(last.get("finished", 0.0))
    started = finished - float(last.get("duration", 0.0)) if finished else 0.0
    up = Uptime(
        _timeval(time.time()), _timeval(node.started), _timeval(started), _timeval(finished)
    )
    return 0, up


def _recmode(s: CtdbSession, _: None) -> tuple[int, Any]:
    return int(s.node.recovery_mode), None


def _runstate(s: CtdbSession, _: None) -> tuple[int, Any]:
    return 0, RUNSTATE_RUNNING


def _nodemap(s: CtdbSession, _: None) -> tuple[int, Any]:
    node = s.node
    nodes = tuple(
        NodeAndFlags(p, node.node_flags(p), SockAddr(address))
        for p, address in enumerate(node.nodes)
    )
    return 0, NodeMap(nodes)


def _vnnmap(s: CtdbSession, _: None) -> tuple[int, Any]:
    return 0, VnnMap(s.node.generation, tuple(s.node.vnnmap))


def _ifaces(s: CtdbSession, _: None) -> tuple[int, Any]:
    return 0, IfaceList()  # pyctdb manages no public addresses


#: ctdb_dbid flags (protocol.h, struct ctdb_dbid)
DB_FLAGS = {DbKind.VOLATILE: 0x00, DbKind.PERSISTENT: 0x01, DbKind.REPLICATED: 0x08}


def _dbmap(s: CtdbSession, _: None) -> tuple[int, Any]:
    dbs = sorted(s.node.dbs.values(), key=lambda db: db.name)
    return 0, DbidMap(tuple(Dbid(db.id, DB_FLAGS[db.kind]) for db in dbs))


def _dbname(s: CtdbSession, db_id: int) -> tuple[int, Any]:
    return 0, s.node.db(db_id).name


def _dbpath(s: CtdbSession, db_id: int) -> tuple[int, Any]:
    return 0, str(s.node.db(db_id).path)


def _db_health(s: CtdbSession, db_id: int) -> tuple[int, Any]:
    s.node.db(db_id)  # NOT_FOUND for an unknown id
    return 0, None  # healthy: a failed write resyncs (vs) or recovers (tcp) the node


def _db_seqnum(s: CtdbSession, db_id: int) -> tuple[int, Any]:
    return 0, s.node.db(db_id).seqnum()


def _attach(kind: DbKind) -> Handler:
    """DB_ATTACH and kin: attach on every node; the database's id.

    As ctdbd: attaching a name already attached as another kind fails (-1).
    """

    async def handler(s: CtdbSession, name: str) -> tuple[int, Any]:
        node = s.node
        existing = next((db for db in node.dbs.values() if db.name == name), None)
        if existing is not None and existing.kind is not kind:
            raise CtdbError(
                ErrorCode.EXISTS, f"database {name} is {existing.kind.value}, not {kind.value}"
            )
        db = await node.records.attach(name, kind)
        return 0, db.id

    return handler


def _traverse(s: CtdbSession, start: TraverseStart | TraverseStartExt) -> Any:
    """TRAVERSE_START(_EXT): every live record of the database, from every node,
    as one message each to the client's srvid, then an empty record; after
    the control's reply, which smbd must read first. A traverse that cannot
    run (no quorum) fails the control instead of ending as if empty."""

    async def handler() -> tuple[int, Any, bytes]:
        node = s.node
        records = await node.records.traverse(node.db(start.db_id))
        header = Header(0, CURRENT_NODE, node.pnn, node.generation)
        messages = [
            RecData(start.reqid, key, LtdbHeader(rec.rsn, rec.dmaster).encode() + rec.value)
            for key, rec in records
        ]
        messages.append(RecData(start.reqid, b"", b""))  # the end
        after = b"".join(ReqMessage(header, start.srvid, m.encode()).encode() for m in messages)
        return 0, None, after

    return handler()


def _open_flags(s: CtdbSession, db_id: int) -> tuple[int, Any]:
    """The TDB flags a client must open the database's file with (it uses them verbatim)."""
    return 0, s.node.db(db_id).local.tdb_flags


def _u32_tunables(node: Node) -> dict[str, int]:
    """The tunables CTDB's protocol can carry: its values are u32, so ours
    with fractions (seconds as floats) are not offered rather than rounded."""
    return {
        name: int(value)
        for name, value in node.tunables.items()
        if TUNABLES[name].integral and 0 <= value <= 0xFFFFFFFF
    }


def _set_tunable(s: CtdbSession, tunable: Tunable) -> tuple[int, Any]:
    if tunable.name not in _u32_tunables(s.node):
        raise CtdbError(
            ErrorCode.NOT_FOUND, f"no tunable {tunable.name!r} CTDB's protocol can carry"
        )
    # As `ctdbtool setvar` on this node: checked against the tunable's range.
    s.node.admin.ctl_setvar(s.node.pnn, {"name": tunable.name, "value": tunable.value})
    return 0, None


def _list_tunables(s: CtdbSession, _: None) -> tuple[int, Any]:
    return 0, VarList(tuple(_u32_tunables(s.node)))


def _get_tunable(s: CtdbSession, name: str) -> tuple[int, Any]:
    value = _u32_tunables(s.node).get(name)
    if value is None:
        raise CtdbError(ErrorCode.NOT_FOUND, f"no tunable {name!r} CTDB's protocol can carry")
    return 0, value


HANDLERS: dict[Control, Handler] = {
    Control.GET_PNN: _pnn,
    Control.PING: _ping,
    Control.UPTIME: _uptime,
    Control.GET_RECMODE: _recmode,
    Control.GET_RUNSTATE: _runstate,
    Control.LIST_TUNABLES: _list_tunables,
    Control.GET_TUNABLE: _get_tunable,
    Control.SET_TUNABLE: _set_tunable,
    Control.GET_NODEMAP: _nodemap,
    Control.GETVNNMAP: _vnnmap,
    Control.GET_IFACES: _ifaces,
    Control.GET_DBMAP: _dbmap,
    Control.GET_DBNAME: _dbname,
    Control.GETDBPATH: _dbpath,
    Control.DB_GET_HEALTH: _db_health,
    Control.GET_DB_SEQNUM: _db_seqnum,
    Control.DB_ATTACH: _attach(DbKind.VOLATILE),
    Control.DB_ATTACH_PERSISTENT: _attach(DbKind.PERSISTENT),
    Control.DB_ATTACH_REPLICATED: _attach(DbKind.REPLICATED),
    Control.DB_OPEN_FLAGS: _open_flags,
    Control.TRAVERSE_START: _traverse,
    Control.TRAVERSE_START_EXT: _traverse,
}


class CtdbSession(asyncio.Protocol):
    """One Samba client connection (`ctdb`, a test program, an smbd)."""

    def __init__(self, server: CtdbProtocolServer) -> None:
        self.server = server
        self.node = server.node
        self.decoder = PacketDecoder(int(self.node.tunable("MaxFrameSize")))
        self.transport: asyncio.Transport | None = None
        #: message ids the client registered for, each as often as it did
        self.srvids: Counter[int] = Counter()
        #: controls still waiting for the cluster (attach)
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
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
        self.transport.write(ReqMessage(header, srvid, data).encode())

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        try:
            packets = self.decoder.feed(data)
        except CtdbError as exc:
            log.warning("closing a CTDB-protocol client: %s", exc.message)
            self.transport.close()
            return
        for packet in packets:
            reply = self._answer(packet)
            if reply is not None:
                self.transport.write(reply)

    def _answer(self, packet: Packet | BadPacket) -> bytes | None:
        if isinstance(packet, BadPacket):
            self.server.once(f"bad {packet.operation}", f"malformed packet: {packet.message}")
            return self._failure(packet.header, packet.operation)
        if isinstance(packet, ReqControl):
            return self._control(packet)
        if isinstance(packet, ReqCall):
            self.server.once("call", "record calls (REQ_CALL) are not served yet")
            return self._failure(packet.header, Operation.REQ_CALL)
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
            codec = codec_for(req.opcode)
            value = codec.request.decode(req.data)
            dest = req.header.destnode
            if dest not in (CURRENT_NODE, self.node.pnn) and req.opcode not in ANY_NODE:
                raise CtdbError(ErrorCode.NOT_SUPPORTED, f"controls for node {dest} (forwarding)")
            if req.opcode == Control.REGISTER_SRVID:
                self._register(req.srvid)
                # After the reply: a client installs its handler only then.
                leader_now = req.srvid == SRVID_LEADER
                status, result = 0, None
            elif req.opcode == Control.DEREGISTER_SRVID:
                self._deregister(req.srvid)
                status, result = 0, None
            else:
                handler = HANDLERS.get(Control(req.opcode))
                if handler is None:
                    name = Control(req.opcode).name
                    raise CtdbError(ErrorCode.NOT_SUPPORTED, f"CTDB control {name}")
                outcome = handler(self, value)
                if asyncio.iscoroutine(outcome):
                    self._later(req, header, outcome)
                    return None
                status, result = outcome
            data = b"" if codec.result_in_status else codec.reply.encode(result)
        except Exception as exc:
            status, data = self._failed(req, exc)
        reply = b"" if req.noreply else ReplyControl(header, status, data).encode()
        if leader_now:
            reply += self.server.leader_message()
        return reply or None

    def _register(self, srvid: int) -> None:
        if srvid == ENTRY_HEAD_SRVID:
            # Nodes tell each other whose entry came first there (ctdb.server.owners).
            raise CtdbError(ErrorCode.INVALID, f"srvid {srvid:#x} is reserved")
        self.srvids[srvid] += 1
        self.node.messaging.register(srvid, self.on_message)

    def _deregister(self, srvid: int) -> None:
        if not self.srvids[srvid]:
            del self.srvids[srvid]
            raise CtdbError(ErrorCode.NOT_FOUND, f"srvid {srvid:#x} is not registered")
        self.srvids[srvid] -= 1
        if not self.srvids[srvid]:
            del self.srvids[srvid]
        self.node.messaging.deregister(srvid, self.on_message)

    def _failed(self, req: ReqControl, exc: Exception) -> tuple[int, bytes]:
        """A control that failed answers -1 with no data, as ctdbd's do."""
        if isinstance(exc, CtdbError):
            self.server.once(f"control {req.opcode}", f"not served: {exc.message}")
        else:  # a bug must cost this request, not the connection
            log.error("CTDB control %d failed", req.opcode, exc_info=exc)
        return FAILED, b""

    def _later(self, req: ReqControl, header: Header, outcome: Any) -> None:
        """Answer a control that waits for the cluster once it is done."""

        async def answer() -> None:
            after = b""  # what follows the reply (a traverse's records)
            try:
                status, result, *rest = await outcome
                codec = codec_for(req.opcode)
                data = b"" if codec.result_in_status else codec.reply.encode(result)
                after = rest[0] if rest else b""
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                status, data = self._failed(req, exc)
            if self.transport is None or self.transport.is_closing():
                return
            reply = b"" if req.noreply else ReplyControl(header, status, data).encode()
            self.transport.write(reply + after)

        task = asyncio.get_running_loop().create_task(answer())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def send_leader(self) -> None:
        if SRVID_LEADER in self.srvids and self.transport is not None:
            self.transport.write(self.server.leader_message())


class CtdbProtocolServer:
    """Listens on the CTDB-protocol socket (`[server] ctdb socket`)."""

    def __init__(self, node: Node, path: Path, mode: int = 0o600) -> None:
        self.node = node
        self.path = path
        self.mode = mode
        self.sessions: set[CtdbSession] = set()
        self._server: asyncio.AbstractServer | None = None
        self._said: set[str] = set()
        self._leader_task: asyncio.Task[None] | None = None

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
        self._leader_task = asyncio.get_running_loop().create_task(self._announce_leader())
        self._server = await unixsocket.listen(self.path, self.mode, lambda: CtdbSession(self))

    async def stop(self) -> None:
        if self._leader_task is not None:
            self._leader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._leader_task
            self._leader_task = None
        if self._server is not None:
            for session in list(self.sessions):
                if session.transport is not None:
                    session.transport.abort()
            await unixsocket.close(self._server, self.path)
            self._server = None
