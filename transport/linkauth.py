"""Authenticating a node link: the handshake state machines and per-frame MACs (no I/O).

Why: the node port is reachable by any process that can reach the node's
address, and what arrives on it is trusted as coming from a cluster node
(controls can ban, wipe and stop a node). So every tcp connection between two
nodes starts with a mutual challenge-response, before any other frame is read:

    initiator -> responder  HELLO      magic, flags, initiator pnn, responder pnn, nonce_i
    responder -> initiator  CHALLENGE  magic, flags, nonce_r, HMAC(key, b"responder" + transcript)
    initiator -> responder  PROOF      HMAC(key, b"initiator" + transcript)

with ``transcript = magic + flags + both pnns + both nonces``. The magic is
``PYCTDB`` and two digits, the version of what the daemons say over the link
(`Settings.protocol`): a peer of another version is refused before it says
anything else, with both versions named (every revision from before the
numbers sent ``PYCTDB02``, which reads as version 2). Each side proves
it holds the cluster key over a nonce the *other* side just chose, so a
recorded handshake cannot be replayed; the two labels stop one side's proof
from being reflected back as the other's; the pnns bind the proofs to this
pair of nodes. The responder learns the initiator's pnn from the connection's
source address (the shell passes it in): the pnn in the hello must merely
agree with it.

Every handshake message is a fixed-size frame, and a side reads exactly the
message it expects next: a length field announcing any other size is refused
on its four bytes (nothing it announces is allocated), and nothing a peer
sends before proving itself is kept beyond one message.

Without a cluster key (single-host trials) the same exchange runs with an
empty key: it still checks pnns and settings, but proves nothing, and the
daemon says so at start-up. Both sides must agree on having a key and on
frame MACs; a mismatch is refused with a message that names it.

Frame MACs (`[cluster] authenticate frames`): after the handshake every frame
carries a 16-byte keyed BLAKE2b tag over an implicit 64-bit sequence number
and the payload, with a key derived from the handshake for this connection
alone. A frame injected, dropped, replayed or reordered on the stream fails
its tag and the connection is closed. (BLAKE2b because its keyed mode is a
MAC by design and costs a third of HMAC-SHA256 per small frame here.)
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass

from transport.framing import LENGTH

#: A handshake's magic: this, then the protocol version as two digits.
MAGIC_PREFIX = b"PYCTDB"
NONCE_SIZE = 32
PROOF_SIZE = 32  # HMAC-SHA256
TAG_SIZE = 16  # per-frame MAC

_HELLO = struct.Struct(f"!8sBII{NONCE_SIZE}s")
_CHALLENGE = struct.Struct(f"!8sB{NONCE_SIZE}s{PROOF_SIZE}s")
_PROOF = struct.Struct(f"!{PROOF_SIZE}s")
_SEQ = struct.Struct("!Q")

#: The largest frame a peer may send before it has authenticated.
MAX_PREAUTH_FRAME = max(_HELLO.size, _CHALLENGE.size, _PROOF.size)


class Flags(enum.IntFlag):
    """Settings both ends of a link must share; sent in the clear, covered by the proofs."""

    KEYED = 1  # this node has a cluster key
    FRAME_MACS = 2  # every frame carries a MAC


class HandshakeError(Exception):
    """The peer is refused; the message says why (it is logged with the peer's address)."""


class FrameAuthError(Exception):
    """A frame's MAC did not verify: the stream was tampered with."""


@dataclass(frozen=True)
class Settings:
    """What this node brings to every handshake."""

    key: bytes | None
    frame_macs: bool = False
    #: the version of what the daemons say over the link (`TransportOptions.protocol`)
    protocol: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.protocol < 100:
            raise ValueError(f"a link protocol version is 0..99, not {self.protocol}")

    @property
    def magic(self) -> bytes:
        return MAGIC_PREFIX + b"%02d" % self.protocol

    @property
    def flags(self) -> Flags:
        flags = Flags(0)
        if self.key:
            flags |= Flags.KEYED
        if self.frame_macs:
            flags |= Flags.FRAME_MACS
        return flags


@dataclass(frozen=True)
class Session:
    """An authenticated link: who is at the other end and, with frame MACs, their key."""

    peer: int
    frame_key: bytes | None


@dataclass(frozen=True)
class Step:
    """What the shell must do after feeding bytes: write `send`; if `session` is set the
    handshake is over and `rest` holds the bytes that followed it (ordinary frames)."""

    send: bytes = b""
    session: Session | None = None
    rest: bytes = b""


class _Expect:
    """Collects one fixed-size frame; refuses a length field that announces any other size."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self._buf = bytearray()

    def feed(self, data: bytes) -> tuple[bytes | None, bytes]:
        """(the message once complete, else None; the bytes beyond it)."""
        need = LENGTH.size + self.size - len(self._buf)
        self._buf += data[:need]
        if len(self._buf) >= LENGTH.size:
            (announced,) = LENGTH.unpack_from(self._buf)
            if announced != self.size:
                raise HandshakeError(
                    f"{self.name} of {announced} bytes refused (expected {self.size})"
                )
        if len(self._buf) < LENGTH.size + self.size:
            return None, b""
        return bytes(self._buf[LENGTH.size :]), data[need:]


def _frame(body: bytes) -> bytes:
    return LENGTH.pack(len(body)) + body


def _check_magic(ours: bytes, theirs: bytes, peer: str) -> None:
    if theirs == ours:
        return
    version = theirs[len(MAGIC_PREFIX) :]
    if theirs.startswith(MAGIC_PREFIX) and version.isdigit():
        raise HandshakeError(
            f"{peer} speaks node protocol {int(version)} and this node "
            f"{int(ours[len(MAGIC_PREFIX) :])}: every node must run the same revision "
            "(see Upgrading in the README)"
        )
    raise HandshakeError(f"{peer} is no node of this cluster software (bad magic)")


def _check_flags(ours: Flags, theirs: int) -> None:
    def yes(flags: int) -> str:
        return "yes" if flags & Flags.FRAME_MACS else "no"

    if theirs == ours:
        return
    if (theirs ^ ours) & Flags.KEYED:
        if theirs & Flags.KEYED:
            raise HandshakeError("the peer has a cluster key and this node has none")
        raise HandshakeError("the peer has no cluster key ([cluster] key file)")
    if (theirs ^ ours) & Flags.FRAME_MACS:
        raise HandshakeError(
            f"[cluster] authenticate frames differs: peer {yes(theirs)}, this node {yes(ours)}"
        )
    raise HandshakeError(f"unknown link flags {theirs:#x}")


class _Handshake:
    def __init__(self, settings: Settings, initiator: int, responder: int) -> None:
        self.settings = settings
        self.magic = settings.magic
        self.key = settings.key or b""
        self.flags = settings.flags
        self.initiator = initiator
        self.responder = responder

    def _transcript(self, nonce_i: bytes, nonce_r: bytes) -> bytes:
        return (
            self.magic
            + bytes([self.flags])
            + struct.pack("!II", self.initiator, self.responder)
            + nonce_i
            + nonce_r
        )

    def _proof(self, label: bytes, transcript: bytes) -> bytes:
        return hmac.digest(self.key, label + transcript, "sha256")

    def _session(self, peer: int, transcript: bytes) -> Session:
        frame_key = None
        if self.settings.frame_macs:
            frame_key = hmac.digest(self.key, b"frames" + transcript, "sha256")
        return Session(peer, frame_key)


class Initiator(_Handshake):
    """The connecting side: `hello()` first, then feed what the responder sends."""

    def __init__(self, settings: Settings, pnn: int, peer: int, nonce: bytes | None = None) -> None:
        super().__init__(settings, pnn, peer)
        self.nonce = nonce if nonce is not None else os.urandom(NONCE_SIZE)
        self._expect: _Expect | None = _Expect("challenge", _CHALLENGE.size)

    def hello(self) -> bytes:
        return _frame(
            _HELLO.pack(self.magic, self.flags, self.initiator, self.responder, self.nonce)
        )

    def receive(self, data: bytes) -> Step:
        if self._expect is None:
            raise HandshakeError(f"node {self.responder} sent data after its challenge")
        body, rest = self._expect.feed(data)
        if body is None:
            return Step()
        self._expect = None
        magic, flags, nonce_r, proof = _CHALLENGE.unpack(body)
        _check_magic(self.magic, magic, f"node {self.responder}")
        _check_flags(self.flags, flags)
        transcript = self._transcript(self.nonce, nonce_r)
        if not hmac.compare_digest(proof, self._proof(b"responder", transcript)):
            raise HandshakeError(
                f"node {self.responder} could not prove the cluster key (different key files?)"
            )
        if rest:
            raise HandshakeError(f"node {self.responder} sent data after its challenge")
        return Step(
            send=_frame(_PROOF.pack(self._proof(b"initiator", transcript))),
            session=self._session(self.responder, transcript),
        )


class Responder(_Handshake):
    """The accepting side; `peer` is the pnn of the connection's source address."""

    def __init__(self, settings: Settings, pnn: int, peer: int, nonce: bytes | None = None) -> None:
        super().__init__(settings, peer, pnn)
        self.nonce = nonce if nonce is not None else os.urandom(NONCE_SIZE)
        self._hello: _Expect | None = _Expect("hello", _HELLO.size)
        self._proof_msg: _Expect | None = None
        self._transcript_bytes = b""

    def receive(self, data: bytes) -> Step:
        if self._hello is not None:
            return self._receive_hello(data)
        if self._proof_msg is not None:
            return self._receive_proof(data)
        raise HandshakeError("handshake already finished")

    def _receive_hello(self, data: bytes) -> Step:
        assert self._hello is not None
        body, rest = self._hello.feed(data)
        if body is None:
            return Step()
        self._hello = None
        magic, flags, claimed, target, nonce_i = _HELLO.unpack(body)
        _check_magic(self.magic, magic, "the peer")
        if claimed != self.initiator:
            raise HandshakeError(
                f"claims pnn {claimed} but connects from the address of pnn {self.initiator}"
            )
        if target != self.responder:
            raise HandshakeError(f"addressed to pnn {target}, this is pnn {self.responder}")
        _check_flags(self.flags, flags)
        if rest:
            raise HandshakeError("sent data before the challenge")
        self._transcript_bytes = self._transcript(nonce_i, self.nonce)
        self._proof_msg = _Expect("proof", _PROOF.size)
        proof = self._proof(b"responder", self._transcript_bytes)
        return Step(send=_frame(_CHALLENGE.pack(self.magic, self.flags, self.nonce, proof)))

    def _receive_proof(self, data: bytes) -> Step:
        assert self._proof_msg is not None
        body, rest = self._proof_msg.feed(data)
        if body is None:
            return Step()
        self._proof_msg = None
        (proof,) = _PROOF.unpack(body)
        if not hmac.compare_digest(proof, self._proof(b"initiator", self._transcript_bytes)):
            raise HandshakeError("authentication failed (wrong or no cluster key)")
        return Step(session=self._session(self.initiator, self._transcript_bytes), rest=rest)


class FrameSealer:
    """Tags outgoing frames: the n-th frame's tag covers n and the payload."""

    def __init__(self, key: bytes) -> None:
        self._mac = hashlib.blake2b(key=key, digest_size=TAG_SIZE)
        self._seq = 0

    def seal(self, payload: bytes) -> bytes:
        """The tag to send after `payload` (the length field counts both)."""
        mac = self._mac.copy()
        mac.update(_SEQ.pack(self._seq))
        mac.update(payload)
        self._seq += 1
        return mac.digest()


class FrameOpener:
    """Checks incoming frames in order; raises FrameAuthError on the first bad one."""

    def __init__(self, key: bytes) -> None:
        self._mac = hashlib.blake2b(key=key, digest_size=TAG_SIZE)
        self._seq = 0

    def open(self, frame: bytes) -> bytes:
        """The payload of a sealed frame (payload followed by its tag)."""
        if len(frame) < TAG_SIZE:
            raise FrameAuthError(f"frame {self._seq} of {len(frame)} bytes has no MAC")
        with memoryview(frame) as view:
            mac = self._mac.copy()
            mac.update(_SEQ.pack(self._seq))
            mac.update(view[:-TAG_SIZE])
            if not hmac.compare_digest(mac.digest(), view[-TAG_SIZE:]):
                raise FrameAuthError(f"frame {self._seq} failed its MAC")
        self._seq += 1
        return frame[:-TAG_SIZE]
