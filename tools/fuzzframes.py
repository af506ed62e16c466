"""Frames for the fuzzer: valid ones of every kind, mutations of them, noise (no I/O).

Random bytes alone rarely get past msgpack, so most frames start as a valid
request or node message (generated from the daemon's own schema tables, see
`tools.wiregen`) and are then damaged in one way: a field replaced by
something of another type or range, an argument dropped or added, the op
swapped, bytes flipped, cut or inserted, the length prefix lied about.

Every frame comes with the fuzzer's own verdict, worked out with the very
decoders the daemon runs: whether the daemon must accept it, answer it with
an error, or hang up. The live fuzzer compares that with what the daemon
does. A valid frame that would change what the witness relies on (shut the
node down, wipe the witness's database, change a tunable) is not sent:
those are authorised actions, not bugs.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from ctdb.common.config import parse_tunable, tunable_defaults
from ctdb.common.errors import CtdbError
from ctdb.protocol import client as protocol
from ctdb.protocol import compact_ops, message_codec, messages
from ctdb.protocol.op_schemas import CONTROLS, ORDERED
from ctdb.protocol.schema import Limits
from ctdb.server import clients as server
from ctdb.storage.placement import db_id
from tools import wiregen
from transport.framing import frame

#: NodeFlags.STOPPED: the fuzzer's node says it is stopped, so recovery leaves it out.
STOPPED = 0x20


@dataclass(frozen=True)
class Frame:
    data: bytes  # what goes on the stream, length prefix included
    how: str  # how it was made: "valid", "mutated:<what>", "noise"


# -- damage that applies to any msgpack frame -------------------------------------------------


def _plain(rng: random.Random, depth: int = 0) -> Any:
    """Any msgpack-able value, biased to the kinds and edges checks look at."""
    pick = rng.randrange(14 if depth < 3 else 10)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice([True, False])
    if pick == 2:
        return rng.choice([0, -1, 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, -(2**63), 2**64 - 1])
    if pick == 3:
        return rng.randint(-1000, 1000)
    if pick == 4:
        return rng.choice([0.0, -0.0, 1.5, -1.0, float("nan"), float("inf"), float("-inf"), 1e300])
    if pick == 5:
        return rng.randbytes(rng.choice([0, 1, 8, 24, 100]))
    if pick == 6:
        return rng.choice(["", "x", "volatile", "persistent", "\u00e9\u4e2d", "a" * 300])
    if pick == 7:
        return b"\0" * rng.choice([0, 65536, 65537, 1 << 20, (1 << 20) + 1])
    if pick == 8:
        return msgpack.ExtType(rng.randrange(128), rng.randbytes(rng.randrange(4)))
    if pick == 9:
        return rng.randint(-(2**63), 2**64 - 1)
    if pick == 10:
        return [_plain(rng, depth + 1) for _ in range(rng.randrange(4))]
    if pick == 11:
        return {_plain_key(rng): _plain(rng, depth + 1) for _ in range(rng.randrange(4))}
    if pick == 12:
        return [[_plain(rng, depth + 2)] * 4 for _ in range(rng.randrange(3))]
    return "x" * rng.randrange(2000)


def _plain_key(rng: random.Random) -> Any:
    return rng.choice(["db", "key", "value", "pnn", "x", "", 0, -1, b"k", None, 1.5])


def _pack(obj: Any) -> bytes | None:
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return None


def _damage_bytes(rng: random.Random, payload: bytes) -> tuple[str, bytes]:
    data = bytearray(payload)
    pick = rng.randrange(6)
    if pick == 0 and data:
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return "flip", bytes(data)
    if pick == 1 and data:
        return "cut", bytes(data[: rng.randrange(len(data))])
    if pick == 2:
        at = rng.randrange(len(data) + 1)
        return "insert", bytes(data[:at] + rng.randbytes(rng.randint(1, 8)) + data[at:])
    if pick == 3 and data:
        at = rng.randrange(len(data))
        return "delete", bytes(data[:at] + data[at + rng.randint(1, 4) :])
    if pick == 4 and data:
        a, b = sorted(rng.randrange(len(data)) for _ in range(2))
        return "repeat", bytes(data[:b] + data[a:b] + data[b:])
    return "trail", bytes(data) + (_pack(_plain(rng)) or b"")


def _damage_structure(rng: random.Random, items: list[Any], ops: list[str]) -> str:
    """Change one thing in a decoded frame (an array), in place; says what."""
    pick = rng.randrange(7)
    if pick == 0:
        where = rng.randrange(len(items))
        items[where] = _plain(rng)
        return f"field{where}"
    maps = [i for i, v in enumerate(items) if isinstance(v, dict)]
    if pick <= 3 and maps:
        args = items[rng.choice(maps)]
        if pick == 1 and args:
            args[rng.choice(sorted(args, key=repr))] = _plain(rng)
            return "arg"
        if pick == 2 and args:
            del args[rng.choice(sorted(args, key=repr))]
            return "drop-arg"
        args[rng.choice(["x", "pnn", "db", "key", "value", "seconds", 7])] = _plain(rng)
        return "add-arg"
    strings = [i for i, v in enumerate(items) if isinstance(v, str)]
    if pick == 4 and strings:
        items[rng.choice(strings)] = rng.choice([*ops, "nope", "", "x" * 70])
        return "op"
    if pick == 5:
        if rng.randrange(2) and len(items) > 1:
            del items[rng.randrange(len(items))]
            return "drop-field"
        items.insert(rng.randrange(len(items) + 1), _plain(rng))
        return "add-field"
    # a list somewhere inside: its rows are where bulk checks live
    for v in items:
        if isinstance(v, dict):
            for name, inner in v.items():
                if isinstance(inner, list) and inner:
                    row = inner[rng.randrange(len(inner))]
                    if isinstance(row, list) and row:
                        row[rng.randrange(len(row))] = _plain(rng)
                        return f"row:{name}"
    items[0] = _plain(rng)
    return "field0"


def _mutate(rng: random.Random, payload: bytes, ops: list[str]) -> tuple[str, bytes]:
    # A compact ordered operation (`compact_ops`) has no structure to damage but its bytes.
    if rng.randrange(3) == 0 or payload[:1] == compact_ops.PREFIX:
        return _damage_bytes(rng, payload)
    items = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    what = _damage_structure(rng, items, ops)
    packed = _pack(items)
    return (what, packed) if packed is not None else _damage_bytes(rng, payload)


def _noise(rng: random.Random) -> bytes:
    pick = rng.randrange(5)
    if pick == 0:
        return rng.randbytes(rng.randrange(64))
    if pick == 1:
        return _pack(_plain(rng)) or b""
    if pick == 2:  # msgpack headers announcing far more than follows
        return rng.choice([b"\xdd\xff\xff\xff\xff", b"\xc6\x7f\xff\xff\xff", b"\xdf\0\xff\xff\xff"])
    if pick == 3:  # many one-byte containers: cheap to send, 64 bytes each to decode
        n = rng.randrange(1, 65536)
        return b"\xdc" + struct.pack(">H", n) + rng.choice([b"\x90", b"\x80"]) * n
    return b"\x91" * rng.randrange(2, 3000)  # nesting


# -- the client socket ------------------------------------------------------------------------


#: Valid requests with these ops change what the witness relies on.
CLIENT_PRIVILEGED = {"shutdown", "stop", "disable", "ban", "recover", "setvar"}


@dataclass(frozen=True)
class ClientVerdict:
    """What the daemon must do with a frame, by the decoders it runs."""

    reqid: int | None  # the request it must answer (None: it must hang up)
    request: protocol.Request | None  # a well-formed request (its args may still be wrong)


class ClientFrames:
    """Frames for one client connection; `protected` names databases not to touch."""

    def __init__(
        self,
        rng: random.Random,
        nodes: list[str],
        fuzz_db: str,
        protected: set[str | int],
    ) -> None:
        self.rng = rng
        self.limits = Limits(nodes, tunable_defaults())
        self.fuzz_db = fuzz_db
        self.fuzz_db_id = db_id(fuzz_db)
        self.protected = protected
        self.ops = sorted(server.OPS)
        self.src = wiregen.RandomSource(rng)

    def _valid_request(self, reqid: int) -> bytes:
        op = self.rng.choice(self.ops)
        _, check = server.OPS[op]
        args = wiregen.value(check, self.src, self.limits)
        if "db" in args:
            args["db"] = self.rng.choice([self.fuzz_db, self.fuzz_db_id, args["db"]])
        if op == "attach" and self.rng.randrange(4):
            args["name"] = self.fuzz_db
        if op == "hello":
            args["version"] = self.rng.choice([protocol.VERSION, args["version"]])
        return msgpack.packb([reqid, op, args], use_bin_type=True)

    def harmful(self, req: protocol.Request) -> bool:
        """Would the daemon, accepting this request, change what the witness relies on?"""
        entry = server.OPS.get(req.op)
        if entry is None:
            return False
        try:
            entry[1](req.args, self.limits)
        except CtdbError:
            return False  # refused before anything happens
        if req.op in CLIENT_PRIVILEGED:
            if req.op == "setvar":
                try:
                    parse_tunable(req.args["name"], req.args["value"])
                except CtdbError:
                    return False  # a refused value: exactly what we want to send
            return True
        if req.op == "attach":
            return bool(req.args["name"] != self.fuzz_db)  # every new name is a file
        return req.args.get("db") in self.protected

    def next(self, reqid: int) -> tuple[Frame, ClientVerdict]:
        while True:
            pick = self.rng.randrange(10)
            if pick < 3:
                how, payload = "valid", self._valid_request(reqid)
            elif pick < 9:
                what, payload = _mutate(self.rng, self._valid_request(reqid), self.ops)
                how = f"mutated:{what}"
            else:
                how, payload = "noise", _noise(self.rng)
            if len(payload) > protocol.DEFAULT_MAX_FRAME:
                continue
            verdict = self.verdict(payload)
            if verdict.reqid is None and self.rng.randrange(3):
                continue  # a hang-up ends the connection: keep them a minority
            if verdict.request is not None and self.harmful(verdict.request):
                continue
            return Frame(frame(payload), how), verdict

    def verdict(self, payload: bytes) -> ClientVerdict:
        (out,) = protocol.RequestDecoder().feed(frame(payload))
        if isinstance(out, protocol.Request):
            return ClientVerdict(out.reqid, out)
        return ClientVerdict(getattr(out, "reqid", None), None)

    def broken_stream(self) -> Frame:
        """A frame after which the stream cannot be read: the daemon must hang up."""
        pick = self.rng.randrange(3)
        if pick == 0:  # announces more than the daemon accepts
            size = self.rng.choice([protocol.DEFAULT_MAX_FRAME + 1, 2**31, 2**32 - 1])
            return Frame(struct.pack("!I", size), "too-big")
        if pick == 1:  # no request id to answer
            bad_id = self.rng.choice([0, -5, "x", None])
            return Frame(frame(msgpack.packb([bad_id, "pnn", {}])), "no-reqid")
        return Frame(frame(b"\xc1" + self.rng.randbytes(8)), "not-msgpack")


# -- node links ---------------------------------------------------------------------------------

#: Valid controls with these ops are a cluster member's authority (stop, wipe, freeze...).
NODE_PRIVILEGED = {
    "shutdown",
    "setflags",
    "ban",
    "setvar",
    "recover",
    "freeze",
    "push",
    "set_vnnmap",
    "thaw",
    "wipe",
    "tx_prepare",
    "tx_finish",
    "tx_commit",
    "attach",
    "reloadnodes",
    "ctdb_control",
}


class NodeFrames:
    """Frames a fake node `pnn` sends a daemon over a point-to-point link."""

    def __init__(
        self, rng: random.Random, nodes: list[str], pnn: int, protected_dbs: set[int]
    ) -> None:
        self.rng = rng
        self.limits = message_codec.wire_limits(nodes)
        self.pnn = pnn
        self.protected_dbs = protected_dbs
        self.src = wiregen.RandomSource(rng)
        self.ops = sorted(set(CONTROLS) | set(ORDERED))

    def state(self) -> bytes:
        """The fake node's NodeState: stopped, so recovery never waits for it."""
        return frame(
            message_codec.encode(messages.NodeState(self.pnn, STOPPED, 1, 0, -1, 0.0, {}, 4.0))
        )

    def ping(self, reqid: int) -> bytes:
        return frame(message_codec.encode(messages.Control(reqid, "ping", {})))

    def _valid(self) -> bytes:
        return message_codec.encode(wiregen.any_message(self.src, self.limits, self.pnn))

    def valid_on_tcp(self, msg: messages.Message) -> bool:
        """The node's rules beyond decoding (an ordered op has no place on tcp)."""
        return not isinstance(msg, messages.Ordered)

    def harmful(self, msg: messages.Message) -> bool:
        if isinstance(msg, messages.Control):
            return msg.op in NODE_PRIVILEGED
        if isinstance(msg, messages.NodeState):
            return not msg.flags & STOPPED
        if isinstance(msg, messages.Call | messages.DmasterRequest | messages.DmasterReply):
            return msg.db_id in self.protected_dbs
        return False

    def next(self, accepted: bool) -> Frame:
        """A frame the daemon must accept, or one for which it must cut the link."""
        while True:
            pick = self.rng.randrange(10)
            if pick < 4:
                how, payload = "valid", self._valid()
            elif pick < 9:
                what, payload = _mutate(self.rng, self._valid(), self.ops)
                how = f"mutated:{what}"
            else:
                how, payload = "noise", _noise(self.rng)
            if not payload:
                ok = True  # an empty frame is the link's keepalive: never decoded
            else:
                try:
                    msg = message_codec.decode(payload, self.limits, self.pnn)
                except message_codec.DecodeError:
                    ok = False
                else:
                    if self.harmful(msg):
                        continue
                    ok = self.valid_on_tcp(msg)
            if ok == accepted:
                return Frame(frame(payload), how)
