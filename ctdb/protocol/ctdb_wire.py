"""CTDB's own client packets, as Samba 4.17 speaks them on `ctdbd.socket` (sans-IO).

This is the codec for the front door that lets Samba's unmodified `ctdb`
tool, CTDB's test programs and smbd talk to pyctdb (issue 12). The layouts
follow `/work/shared/reference/ctdb-wire-protocol.md` (§1, "the spec"),
checked against Samba's marshalling code (ctdb/protocol/protocol_header.c,
protocol_call.c, protocol_message.c, protocol_control.c).

Every packet is a 32-byte header of eight uint32 followed by a body (the
numbers the header and bodies carry are named in `ctdb_opcodes`). All
integers are in host byte order, which is little endian on the x86_64
machines this runs on: Samba's marshalling is plain `memcpy` and smbd casts C
structs onto the bytes (spec §1, protocol_basic.c).

Samba's receivers are lenient about what follows a body (the new client pads
every packet to 8 bytes, smbd does not pad at all, the daemon pads up to the
size of its old C struct), so decoding accepts any bytes after the declared
body, as they do. What it does not accept is a body whose declared lengths
run past the packet, a length the stream cannot be framed by, or a packet
that is not CTDB protocol 1.

Decoding never raises for a malformed *body*: the stream is still in step,
and the daemon must answer the request with a failing status rather than
leave the client waiting, so the decoder returns a `BadPacket` carrying the
header in the packet's place. An operation this codec does not model comes
out as an `UnknownPacket`, for the same reason.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol.ctdb_opcodes import CTRL_FLAG_NOREPLY, CURRENT_NODE, Operation

MAGIC = 0x43544442  # "CTDB" as a little-endian uint32: bytes 42 44 54 43 (protocol.h:25)
VERSION = 1  # CTDB_PROTOCOL (protocol.h:26)
HEADER = struct.Struct(
    "<8I"
)  # length, magic, version, generation, operation, destnode, srcnode, reqid
ALIGNMENT = 8  # CTDB_DS_ALIGNMENT (protocol_packet.c)
#: Large enough for a TRANS3_COMMIT of a big persistent transaction, small
#: enough that a lying length cannot make the daemon buffer without bound.
DEFAULT_MAX_PACKET = 16 * 1024 * 1024


@dataclass(slots=True)
class Header:
    """The header fields a packet chooses; length, magic, version and
    operation follow from the packet itself."""

    reqid: int
    destnode: int = CURRENT_NODE
    srcnode: int = 0
    generation: int = 0


def pad8(n: int) -> int:
    return (n + ALIGNMENT - 1) & ~(ALIGNMENT - 1)


class _Packet:
    """What every modelled packet shares: its operation, the size of the old
    C struct the real daemon allocates at least (`_ctdbd_allocate_pkt`,
    server/ctdb_client.c:47-76), and framing."""

    __slots__ = ()
    OPERATION: ClassVar[Operation]
    #: sizeof(struct ctdb_*_old), the smallest packet the real daemon sends.
    OLD_SIZE: ClassVar[int]
    header: Header

    def body(self) -> bytes:
        raise NotImplementedError

    def encode(self) -> bytes:
        """The packet as the real daemon frames it: at least the old struct's
        size, then rounded up to 8 and zero-filled (`ctdb_queue_send`,
        common/ctdb_io.c:334-357). Clients accept any length that holds the
        body, so one rule serves both directions."""
        body = self.body()
        length = pad8(max(HEADER.size + len(body), self.OLD_SIZE))
        h = self.header
        head = HEADER.pack(
            length, MAGIC, VERSION, h.generation, self.OPERATION, h.destnode, h.srcnode, h.reqid
        )
        return head + body + bytes(length - HEADER.size - len(body))


_REQ_CALL = struct.Struct("<6I")


@dataclass(slots=True)
class ReqCall(_Packet):
    """Client → daemon: run `callid` on a record (`ctdb_req_call_old`,
    ctdb_protocol.h:61-70; protocol_call.c). Body: flags, db_id, callid,
    hopcount, keylen, calldatalen, then key and calldata."""

    OPERATION = Operation.REQ_CALL
    OLD_SIZE = 60
    header: Header
    flags: int
    db_id: int
    callid: int
    key: bytes
    calldata: bytes = b""
    hopcount: int = 0

    def body(self) -> bytes:
        fixed = _REQ_CALL.pack(
            self.flags, self.db_id, self.callid, self.hopcount, len(self.key), len(self.calldata)
        )
        return fixed + self.key + self.calldata

    @classmethod
    def _decode(cls, header: Header, body: bytes) -> ReqCall:
        flags, db_id, callid, hopcount, keylen, calldatalen = _fixed(_REQ_CALL, body, "REQ_CALL")
        key, calldata = _payloads(body, _REQ_CALL.size, (keylen, calldatalen), "REQ_CALL")
        return cls(header, flags, db_id, callid, key, calldata, hopcount)


_REPLY_CALL = struct.Struct("<iI")


@dataclass(slots=True)
class ReplyCall(_Packet):
    """Daemon → client: the result of a REQ_CALL (`ctdb_reply_call_old`,
    ctdb_protocol.h:72-77). smbd reads empty `data` as "no such record"."""

    OPERATION = Operation.REPLY_CALL
    OLD_SIZE = 44
    header: Header
    status: int
    data: bytes = b""

    def body(self) -> bytes:
        return _REPLY_CALL.pack(self.status, len(self.data)) + self.data

    @classmethod
    def _decode(cls, header: Header, body: bytes) -> ReplyCall:
        status, datalen = _fixed(_REPLY_CALL, body, "REPLY_CALL")
        (data,) = _payloads(body, _REPLY_CALL.size, (datalen,), "REPLY_CALL")
        return cls(header, status, data)


_REQ_MESSAGE = struct.Struct("<QI")


@dataclass(slots=True)
class ReqMessage(_Packet):
    """A message to a srvid, in both directions (`ctdb_req_message_old`,
    ctdb_protocol.h:105-110). The data is opaque to the daemon."""

    OPERATION = Operation.REQ_MESSAGE
    OLD_SIZE = 48
    header: Header
    srvid: int
    data: bytes = b""

    def body(self) -> bytes:
        return _REQ_MESSAGE.pack(self.srvid, len(self.data)) + self.data

    @classmethod
    def _decode(cls, header: Header, body: bytes) -> ReqMessage:
        srvid, datalen = _fixed(_REQ_MESSAGE, body, "REQ_MESSAGE")
        (data,) = _payloads(body, _REQ_MESSAGE.size, (datalen,), "REQ_MESSAGE")
        return cls(header, srvid, data)


_REQ_CONTROL = struct.Struct("<IIQIII")


@dataclass(slots=True)
class ReqControl(_Packet):
    """Client → daemon: a control (`ctdb_req_control_old`,
    ctdb_protocol.h:112-121). Body: opcode, pad, srvid, client_id, flags,
    datalen, data. The client_id a client sends is ignored by the daemon
    (it uses the connection's own), so it is not kept."""

    OPERATION = Operation.REQ_CONTROL
    OLD_SIZE = 64
    header: Header
    opcode: int
    data: bytes = b""
    srvid: int = 0
    flags: int = 0

    def body(self) -> bytes:
        fixed = _REQ_CONTROL.pack(self.opcode, 0, self.srvid, 0, self.flags, len(self.data))
        return fixed + self.data

    @property
    def noreply(self) -> bool:
        return bool(self.flags & CTRL_FLAG_NOREPLY)

    @classmethod
    def _decode(cls, header: Header, body: bytes) -> ReqControl:
        opcode, _pad, srvid, _client_id, flags, datalen = _fixed(_REQ_CONTROL, body, "REQ_CONTROL")
        (data,) = _payloads(body, _REQ_CONTROL.size, (datalen,), "REQ_CONTROL")
        return cls(header, opcode, data, srvid, flags)


_REPLY_CONTROL = struct.Struct("<iII")


@dataclass(slots=True)
class ReplyControl(_Packet):
    """Daemon → client: a control's result (`ctdb_reply_control_old`,
    ctdb_protocol.h:123-129). Body: status, datalen, errorlen, data, errmsg.

    The new client reads the error message at the start of the data area
    when status != 0 (protocol_control.c `ctdb_reply_control_pull`), so a
    failing reply must carry no data; encoding refuses one that does. The
    message goes without a NUL, as the real daemon sends it."""

    OPERATION = Operation.REPLY_CONTROL
    OLD_SIZE = 48
    header: Header
    status: int
    data: bytes = b""
    errmsg: bytes = b""

    def body(self) -> bytes:
        if self.status != 0 and self.data:
            raise CtdbError(ErrorCode.INVALID, "a failing control reply must carry no data")
        fixed = _REPLY_CONTROL.pack(self.status, len(self.data), len(self.errmsg))
        return fixed + self.data + self.errmsg

    @classmethod
    def _decode(cls, header: Header, body: bytes) -> ReplyControl:
        status, datalen, errorlen = _fixed(_REPLY_CONTROL, body, "REPLY_CONTROL")
        sizes = (datalen, errorlen)
        data, errmsg = _payloads(body, _REPLY_CONTROL.size, sizes, "REPLY_CONTROL")
        return cls(header, status, data, errmsg)


@dataclass(slots=True)
class UnknownPacket:
    """A well-framed packet of an operation this codec does not model
    (REQ_DMASTER, REPLY_ERROR, a tunnel, a number never assigned...). The
    daemon answers or drops it; the stream goes on."""

    header: Header
    operation: int
    body: bytes


class BadPacket(CtdbError):
    """A well-framed packet whose body contradicts itself. The header is
    kept so the daemon can answer the request with a failing status."""

    def __init__(self, header: Header, operation: int, message: str) -> None:
        super().__init__(ErrorCode.PROTOCOL, message)
        self.header = header
        self.operation = operation


Packet = ReqCall | ReplyCall | ReqMessage | ReqControl | ReplyControl | UnknownPacket

_DECODERS: dict[int, Callable[[Header, bytes], Packet]] = {
    Operation.REQ_CALL: ReqCall._decode,
    Operation.REPLY_CALL: ReplyCall._decode,
    Operation.REQ_MESSAGE: ReqMessage._decode,
    Operation.REQ_CONTROL: ReqControl._decode,
    Operation.REPLY_CONTROL: ReplyControl._decode,
}


class _BodyError(Exception):
    """Raised inside a body decoder; becomes a `BadPacket` with the header."""


def _fixed(layout: struct.Struct, body: bytes, name: str) -> tuple[int, ...]:
    if len(body) < layout.size:
        raise _BodyError(f"{name} body of {len(body)} bytes is shorter than its {layout.size}")
    return layout.unpack_from(body)


def _payloads(body: bytes, offset: int, sizes: tuple[int, ...], name: str) -> list[bytes]:
    """The variable parts after a fixed prefix, each as long as its length field says."""
    if offset + sum(sizes) > len(body):
        raise _BodyError(
            f"{name} declares {sum(sizes)} bytes of payload, the packet holds {len(body) - offset}"
        )
    out = []
    for size in sizes:
        out.append(body[offset : offset + size])
        offset += size
    return out


def decode_packet(packet: bytes) -> Packet | BadPacket:
    """One whole packet, exactly as long as its length field says."""
    if len(packet) < HEADER.size:
        raise CtdbError(ErrorCode.PROTOCOL, f"{len(packet)} bytes are shorter than a header")
    length, magic, version = struct.unpack_from("<3I", packet)
    _check_identity(magic, version)
    if length != len(packet):
        raise CtdbError(ErrorCode.PROTOCOL, f"length field says {length}, packet has {len(packet)}")
    return _decode_framed(bytes(packet))


def _decode_framed(packet: bytes) -> Packet | BadPacket:
    """`decode_packet` of a packet whose length, magic and version are checked."""
    _, _, _, generation, operation, destnode, srcnode, reqid = HEADER.unpack_from(packet)
    header = Header(reqid, destnode, srcnode, generation)
    body = packet[HEADER.size :]
    decoder = _DECODERS.get(operation)
    if decoder is None:
        return UnknownPacket(header, operation, body)
    try:
        return decoder(header, body)
    except _BodyError as exc:
        return BadPacket(header, operation, str(exc))


def _check_length(length: int, max_packet: int) -> None:
    if length < HEADER.size:
        raise CtdbError(ErrorCode.PROTOCOL, f"packet length {length} is below the 32-byte header")
    if length > max_packet:
        raise CtdbError(
            ErrorCode.TOO_BIG, f"packet of {length} bytes exceeds the maximum of {max_packet}"
        )


def _check_identity(magic: int, version: int) -> None:
    if magic != MAGIC:
        raise CtdbError(ErrorCode.PROTOCOL, f"bad magic 0x{magic:08x}, not a CTDB packet")
    if version != VERSION:
        raise CtdbError(ErrorCode.PROTOCOL, f"CTDB protocol version {version}, expected {VERSION}")


class PacketDecoder:
    """Splits a byte stream into packets: bytes in, packets out.

    A length below the header or above `max_packet`, a bad magic or a wrong
    version raises `CtdbError` (TOO_BIG for the size, PROTOCOL otherwise) as
    soon as the 12 bytes that tell are in, before the packet is buffered:
    the stream cannot be trusted after it, so the connection must close (a
    request silently dropped, as ctdbd does, would leave its client hanging).
    The decoder then stays failed. A body error does not stop the stream;
    it comes out as a `BadPacket` in the packet's place.
    """

    def __init__(self, max_packet: int = DEFAULT_MAX_PACKET) -> None:
        self.max_packet = max_packet
        self._buf = bytearray()
        self._failed: CtdbError | None = None

    def feed(self, data: bytes) -> list[Packet | BadPacket]:
        if self._failed is not None:
            raise self._failed
        buf = self._buf
        if not buf and len(data) >= 12:
            # The usual case, one whole packet in one read: no buffering.
            length, magic, version = struct.unpack_from("<3I", data)
            if length == len(data) and HEADER.size <= length <= self.max_packet:
                try:
                    _check_identity(magic, version)
                except CtdbError as exc:
                    self._failed = exc
                    raise
                return [_decode_framed(bytes(data))]
        buf += data
        out: list[Packet | BadPacket] = []
        pos = 0
        try:
            while len(buf) - pos >= 12:
                length, magic, version = struct.unpack_from("<3I", buf, pos)
                _check_length(length, self.max_packet)
                _check_identity(magic, version)
                if len(buf) - pos < length:
                    break
                out.append(_decode_framed(bytes(buf[pos : pos + length])))
                pos += length
            if 4 <= len(buf) - pos < 12:  # the length alone can already be refused
                (length,) = struct.unpack_from("<I", buf, pos)
                _check_length(length, self.max_packet)
        except CtdbError as exc:
            self._failed = exc
            del buf[:]
            raise
        del buf[:pos]
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)
