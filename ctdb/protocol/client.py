"""The client protocol spoken on `ctdbd.socket` (sans-IO).

Frames are length-prefixed msgpack arrays:

* request  `[reqid, op, args]`  (reqid > 0, op a string, args a map)
* reply    `[reqid, 0, result]` or `[reqid, code, message]` on error
* event    `[0, "message", {"srvid", "src", "data"}]` pushed to clients that
  registered a srvid.

The first request must be `hello` with the client's protocol `version`; the
daemon answers with its own version and pnn or refuses with `PROTOCOL`.

Decoding checks the frame's shape only; each operation's arguments are
checked against its schema by the server (`ctdb.server.client_ops.op`). Whatever bytes
arrive, the decoders return requests or raise/return `CtdbError`, nothing
else, and allocate nothing a peer announces (a length is checked against
the maximum before a byte of the frame is buffered).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol import packing
from ctdb.protocol.bounded_msgpack import unpack
from transport.framing import FrameReader, FrameTooLarge, frame

VERSION = 1
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
EVENT_REQID = 0
#: Operation names are short words; a longer one is refused before it is looked up.
MAX_OP_LENGTH = 64
#: The srvid of the message a client gets when its entry becomes the first of
#: a record's entry list (a FIFO lock's next holder): data is the msgpack of
#: `[db id, key]`. A hint, not a promise: a recovery can lose one, so a
#: waiter also re-reads the list now and then. Its top byte, 0xE1, is in no
#: range CTDB or Samba use (ctdb_protocol.h: 0xF1..0xFE for the daemon's
#: own, where 0xF3 is RELEASE_IP that smbd registers; 0xEE, 0xDE, 0xCE,
#: 0xBE, 0xAE for services, tests and traverses; 0x00 for process ids),
#: so that a Samba client registered for one of those never receives it.
ENTRY_HEAD_SRVID = 0xE100_0000_0000_0000


@dataclass(slots=True)
class Request:
    reqid: int
    op: str
    args: dict[str, Any]


@dataclass(slots=True)
class Reply:
    reqid: int
    code: int
    result: Any


def pack(obj: Any) -> bytes:
    return frame(packing.pack(obj))


def encode_request(reqid: int, op: str, args: dict[str, Any]) -> bytes:
    return pack([reqid, op, args])


def encode_reply(reqid: int, result: Any) -> bytes:
    return pack([reqid, 0, result])


def encode_error(reqid: int, error: CtdbError) -> bytes:
    return pack([reqid, int(error.code), error.message])


def encode_event(srvid: int, src: int, data: bytes) -> bytes:
    return pack([EVENT_REQID, "message", {"srvid": srvid, "src": src, "data": data}])


class RequestDecoder:
    """Server side: bytes in, `Request`s out.

    A malformed frame raises `CtdbError(PROTOCOL)` carrying the request id
    when one could be read, so the server can answer before it hangs up.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._frames = FrameReader(max_frame)

    def feed(self, data: bytes) -> list[Request | CtdbError]:
        """Whole requests, or an error in place of each request that was malformed.

        A frame above the maximum raises instead: the stream cannot be
        resynchronised after it, so the connection must close.
        """
        try:
            frames = self._frames.feed(data)
        except FrameTooLarge as exc:
            raise CtdbError(ErrorCode.TOO_BIG, str(exc)) from exc
        out: list[Request | CtdbError] = []
        for raw in frames:
            out.append(_parse_request(raw))
        return out


class BadRequest(CtdbError):
    """A malformed request whose id could still be read, so it can be answered."""

    def __init__(self, reqid: int, message: str) -> None:
        super().__init__(ErrorCode.PROTOCOL, message)
        self.reqid = reqid


def _parse_request(raw: bytes) -> Request | CtdbError:
    try:
        obj = unpack(raw)
    except Exception as exc:
        return CtdbError(ErrorCode.PROTOCOL, f"frame is not valid msgpack: {exc}")
    if not (type(obj) is list and len(obj) == 3):
        return CtdbError(ErrorCode.PROTOCOL, "request must be a 3-element array [reqid, op, args]")
    reqid, op, args = obj
    if type(reqid) is not int or reqid <= 0:
        return CtdbError(ErrorCode.PROTOCOL, "request id must be a positive integer")
    if type(op) is not str or not 0 < len(op) <= MAX_OP_LENGTH:
        return BadRequest(reqid, f"operation must be a name of 1..{MAX_OP_LENGTH} characters")
    if type(args) is not dict:
        return BadRequest(reqid, "arguments must be a map")
    return Request(reqid, op, args)


class ReplyDecoder:
    """Client side: bytes in, `Reply`s (and pushed events, reqid 0) out."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._frames = FrameReader(max_frame)

    def feed(self, data: bytes) -> list[Reply]:
        try:
            frames = self._frames.feed(data)
        except FrameTooLarge as exc:
            raise CtdbError(ErrorCode.TOO_BIG, str(exc)) from exc
        replies = []
        for raw in frames:
            try:
                obj = unpack(raw)
            except Exception as exc:
                raise CtdbError(
                    ErrorCode.PROTOCOL, f"daemon sent undecodable bytes: {exc}"
                ) from None
            if not (type(obj) is list and len(obj) == 3 and type(obj[0]) is int):
                raise CtdbError(ErrorCode.PROTOCOL, "daemon sent a malformed reply")
            reqid, code, result = obj
            if reqid == EVENT_REQID and not isinstance(code, int):
                replies.append(Reply(EVENT_REQID, 0, result))  # a pushed message
            elif type(code) is not int:
                raise CtdbError(ErrorCode.PROTOCOL, "daemon sent a reply without a status code")
            else:
                # reqid 0 with an error code: the daemon is hanging up on us.
                replies.append(Reply(reqid, code, result))
        return replies


def raise_for(reply: Reply) -> Any:
    """The result of a reply, or the `CtdbError` it carries."""
    if reply.code:
        raise CtdbError(reply.code, str(reply.result))
    return reply.result
