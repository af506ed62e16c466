"""The node-link handshake and frame MACs, sans-IO: every message, split, flip and mismatch.

No sockets: `Initiator` and `Responder` are driven by hand, so each test says
exactly which bytes a peer sent and what came back.
"""

from __future__ import annotations

import hmac
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transport.linkauth import (
    MAX_PREAUTH_FRAME,
    TAG_SIZE,
    FrameAuthError,
    FrameOpener,
    FrameSealer,
    HandshakeError,
    Initiator,
    Responder,
    Session,
    Settings,
)

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
NONCE_I = b"i" * 32
NONCE_R = b"r" * 32
KEYED = Settings(KEY)


def pair(
    ours: Settings = KEYED,
    theirs: Settings | None = None,
    *,
    initiator: int = 1,
    responder: int = 0,
    address_pnn: int | None = None,
) -> tuple[Initiator, Responder]:
    """An initiator (pnn `initiator`) and the responder it connects to.

    `address_pnn`: the pnn the responder derives from the source address
    (defaults to the initiator's own).
    """
    init = Initiator(ours, initiator, responder, nonce=NONCE_I)
    resp = Responder(
        theirs if theirs is not None else ours,
        responder,
        initiator if address_pnn is None else address_pnn,
        nonce=NONCE_R,
    )
    return init, resp


def run(init: Initiator, resp: Responder, trailing: bytes = b"") -> tuple[Session, Session, bytes]:
    """A whole handshake, each message in one piece; returns both sessions and `rest`."""
    hello = init.hello()
    challenge = resp.receive(hello)
    assert challenge.session is None and challenge.send
    done = init.receive(challenge.send)
    assert done.session is not None and done.send
    accepted = resp.receive(done.send + trailing)
    assert accepted.session is not None and not accepted.send
    return done.session, accepted.session, accepted.rest


def transcript(init: Initiator, resp: Responder) -> tuple[bytes, bytes, bytes]:
    """The three messages of a successful handshake."""
    hello = init.hello()
    challenge = resp.receive(hello).send
    proof = init.receive(challenge).send
    return hello, challenge, proof


# -- success -------------------------------------------------------------------------------


@pytest.mark.parametrize("frame_macs", [False, True])
def test_keyed_handshake_agrees_on_peers_and_frame_key(frame_macs: bool) -> None:
    init, resp = pair(Settings(KEY, frame_macs))
    at_initiator, at_responder, rest = run(init, resp)
    assert at_initiator.peer == 0 and at_responder.peer == 1
    assert rest == b""
    if frame_macs:
        assert at_initiator.frame_key is not None
        assert at_initiator.frame_key == at_responder.frame_key
        assert KEY not in at_initiator.frame_key
    else:
        assert at_initiator.frame_key is None and at_responder.frame_key is None


def test_frame_keys_differ_per_connection() -> None:
    """Fresh nonces, fresh key: a frame sealed for one connection fails on another."""
    keys = set()
    for _ in range(3):
        init = Initiator(Settings(KEY, True), 1, 0)
        resp = Responder(Settings(KEY, True), 0, 1)
        a, b, _ = run(init, resp)
        assert a.frame_key == b.frame_key
        keys.add(a.frame_key)
    assert len(keys) == 3


def test_keyless_handshake_still_checks_identity() -> None:
    init, resp = pair(Settings(None))
    a, b, _ = run(init, resp)
    assert (a.peer, b.peer) == (0, 1)
    init, resp = pair(Settings(None), address_pnn=2)
    with pytest.raises(HandshakeError, match="claims pnn 1 but connects from the address of pnn 2"):
        resp.receive(init.hello())


def test_frames_right_after_the_proof_come_out_as_rest() -> None:
    """The initiator may write frames at once; they arrive glued to its proof."""
    init, resp = pair()
    frames = struct.pack("!I", 3) + b"abc" + struct.pack("!I", 0)
    _, _, rest = run(init, resp, trailing=frames)
    assert rest == frames


def test_every_split_of_the_byte_stream() -> None:
    """Feeding a message in two pieces at any position, or byte by byte, changes nothing."""
    for split_hello in range(0, 53):
        for split_proof in (0, 1, 4, 5, 20, 35):
            init, resp = pair()
            hello = init.hello()
            assert resp.receive(hello[:split_hello]).send == b""
            challenge = resp.receive(hello[split_hello:]).send
            assert challenge
            for i, byte in enumerate(challenge):
                step = init.receive(bytes([byte]))
                assert (step.session is not None) == (i == len(challenge) - 1)
            proof = step.send
            assert resp.receive(proof[:split_proof]).session is None
            last = resp.receive(proof[split_proof:] + b"tail")
            assert last.session is not None and last.rest == b"tail"


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_random_chunking(data: st.DataObject) -> None:
    init, resp = pair(Settings(KEY, True))
    challenge = b"".join(resp.receive(c).send for c in _chunks(init.hello(), data))
    steps = [init.receive(c) for c in _chunks(challenge, data)]
    assert [s.session is not None for s in steps] == [False] * (len(steps) - 1) + [True]
    tail = os.urandom(data.draw(st.integers(0, 40)))
    chunks = _chunks(steps[-1].send + tail, data)
    for i, chunk in enumerate(chunks):
        got = resp.receive(chunk)
        if got.session is not None:
            assert got.session.peer == 1
            # The shell hands later chunks straight to its frame reader.
            assert got.rest + b"".join(chunks[i + 1 :]) == tail
            return
    raise AssertionError("the handshake never completed")


def _chunks(data: bytes, draw: st.DataObject) -> list[bytes]:
    out = []
    pos = 0
    while pos < len(data):
        n = draw.draw(st.integers(1, len(data) - pos))
        out.append(data[pos : pos + n])
        pos += n
    return out


# -- refusals ------------------------------------------------------------------------------


def proof_as_documented(key: bytes, flags: int, nonce_i: bytes, nonce_r: bytes) -> bytes:
    """The initiator's PROOF frame computed from the module docstring, not its code."""
    transcript = b"PYCTDB00" + bytes([flags]) + struct.pack("!II", 1, 0) + nonce_i + nonce_r
    return struct.pack("!I", 32) + hmac.digest(key, b"initiator" + transcript, "sha256")


def test_the_proof_is_what_the_docstring_says() -> None:
    init, resp = pair()
    resp.receive(init.hello())
    accepted = resp.receive(proof_as_documented(KEY, 1, NONCE_I, NONCE_R))
    assert accepted.session is not None and accepted.session.peer == 1


def test_wrong_key_is_refused_by_both_sides() -> None:
    init, resp = pair(Settings(KEY), Settings(OTHER_KEY))
    challenge = resp.receive(init.hello()).send
    with pytest.raises(HandshakeError, match="could not prove the cluster key"):
        init.receive(challenge)
    # An intruder with another key ignores that check and answers anyway:
    init, resp = pair(Settings(OTHER_KEY), Settings(KEY))
    resp.receive(init.hello())
    with pytest.raises(HandshakeError, match="authentication failed"):
        resp.receive(proof_as_documented(OTHER_KEY, 1, NONCE_I, NONCE_R))


def test_random_proof_is_refused() -> None:
    init, resp = pair()
    resp.receive(init.hello())
    with pytest.raises(HandshakeError, match="authentication failed"):
        resp.receive(struct.pack("!I", 32) + os.urandom(32))


@pytest.mark.parametrize(
    ("ours", "theirs", "initiator_error", "responder_error"),
    [
        (Settings(None), Settings(KEY), None, "the peer has no cluster key"),
        (Settings(KEY), Settings(None), None, "the peer has a cluster key and this node has none"),
        (
            Settings(KEY, True),
            Settings(KEY, False),
            None,
            "authenticate frames differs: peer yes, this node no",
        ),
    ],
)
def test_settings_mismatch_names_the_difference(
    ours: Settings, theirs: Settings, initiator_error: str | None, responder_error: str
) -> None:
    init, resp = pair(ours, theirs)
    with pytest.raises(HandshakeError, match=responder_error):
        resp.receive(init.hello())


def test_initiator_refuses_a_challenge_with_other_settings() -> None:
    init, _ = pair(Settings(KEY, False))
    _, resp = pair(Settings(KEY, True))
    resp_hello = Initiator(Settings(KEY, True), 1, 0, nonce=NONCE_I).hello()
    challenge = resp.receive(resp_hello).send
    with pytest.raises(HandshakeError, match="authenticate frames differs: peer yes"):
        init.receive(challenge)


def test_hello_for_another_node_is_refused() -> None:
    init = Initiator(Settings(KEY), 1, 2, nonce=NONCE_I)
    resp = Responder(Settings(KEY), 0, 1, nonce=NONCE_R)
    with pytest.raises(HandshakeError, match="addressed to pnn 2, this is pnn 0"):
        resp.receive(init.hello())


def test_bad_magic_is_refused() -> None:
    init, resp = pair()
    hello = bytearray(init.hello())
    hello[4:12] = b"SMBCTDB1"
    with pytest.raises(HandshakeError, match="no node of this cluster software"):
        resp.receive(bytes(hello))


def test_the_magic_names_the_protocol_version() -> None:
    init, _ = pair(Settings(KEY, protocol=7))
    assert init.hello()[4:12] == b"PYCTDB07"


def test_a_peer_of_another_protocol_version_is_refused_by_both_sides() -> None:
    v3, v4 = Settings(KEY, protocol=3), Settings(KEY, protocol=4)
    init, resp = pair(v3, v4)
    with pytest.raises(HandshakeError, match="the peer speaks node protocol 3 and this node 4"):
        resp.receive(init.hello())
    # ... and a responder of another version, whose challenge the initiator reads first:
    init = Initiator(v3, 1, 0, nonce=NONCE_I)
    challenge = Responder(v4, 0, 1, nonce=NONCE_R).receive(pair(v4)[0].hello()).send
    with pytest.raises(HandshakeError, match="node 0 speaks node protocol 4 and this node 3"):
        init.receive(challenge)


def test_a_node_of_a_revision_before_the_versions_is_named_as_protocol_2() -> None:
    # Every revision before the versions had numbers sent the magic PYCTDB02.
    old = bytearray(Initiator(Settings(KEY), 1, 0, nonce=NONCE_I).hello())
    old[4:12] = b"PYCTDB02"
    resp = Responder(Settings(KEY, protocol=3), 0, 1, nonce=NONCE_R)
    with pytest.raises(HandshakeError, match="speaks node protocol 2 and this node 3: every node"):
        resp.receive(bytes(old))


@pytest.mark.parametrize("version", [-1, 100])
def test_a_protocol_version_is_two_digits(version: int) -> None:
    with pytest.raises(ValueError, match="0..99"):
        Settings(KEY, protocol=version)


@pytest.mark.parametrize("announced", [0, 1, 48, 50, MAX_PREAUTH_FRAME + 1, 1 << 30, 0xFFFFFFFF])
def test_a_length_field_of_any_other_size_is_refused_on_its_four_bytes(announced: int) -> None:
    """Nothing a pre-auth frame announces is waited for, let alone allocated."""
    _, resp = pair()
    with pytest.raises(HandshakeError, match=f"hello of {announced} bytes refused"):
        resp.receive(struct.pack("!I", announced))
    init, _ = pair()
    with pytest.raises(HandshakeError, match=f"challenge of {announced} bytes refused"):
        init.receive(struct.pack("!I", announced))
    init, resp = pair()
    resp.receive(init.hello())
    with pytest.raises(HandshakeError, match=f"proof of {announced} bytes refused"):
        resp.receive(struct.pack("!I", announced))


def test_nothing_beyond_the_hello_is_accepted_before_authentication() -> None:
    """A huge first read is cut at the hello: what follows is refused, not buffered."""
    init, resp = pair()
    with pytest.raises(HandshakeError, match="sent data before the challenge"):
        resp.receive(init.hello() + b"x" * (1 << 20))


def test_data_after_the_challenge_is_refused() -> None:
    init, resp = pair()
    challenge = resp.receive(init.hello()).send
    with pytest.raises(HandshakeError, match="sent data after its challenge"):
        init.receive(challenge + b"\x00")
    init, resp = pair()
    challenge = resp.receive(init.hello()).send
    init.receive(challenge)
    with pytest.raises(HandshakeError, match="sent data after its challenge"):
        init.receive(b"\x00")


# -- replay, reflection, tampering ---------------------------------------------------------


def test_a_recorded_proof_does_not_open_a_new_connection() -> None:
    init, resp = pair()
    hello, _, proof = transcript(init, resp)
    replay = Responder(Settings(KEY), 0, 1)  # fresh nonce, as every real connection has
    replay.receive(hello)
    with pytest.raises(HandshakeError, match="authentication failed"):
        replay.receive(proof)


def test_a_recorded_challenge_does_not_fool_a_new_initiator() -> None:
    init, resp = pair()
    _, challenge, _ = transcript(init, resp)
    fresh = Initiator(Settings(KEY), 1, 0)
    fresh.hello()
    with pytest.raises(HandshakeError, match="could not prove"):
        fresh.receive(challenge)


def test_the_responders_proof_cannot_be_reflected_as_the_initiators() -> None:
    init, resp = pair()
    challenge = resp.receive(init.hello()).send
    reflected = struct.pack("!I", 32) + challenge[-32:]
    with pytest.raises(HandshakeError, match="authentication failed"):
        resp.receive(reflected)


def test_any_flipped_bit_in_any_message_fails_the_handshake() -> None:
    """Every single-bit change of hello, challenge or proof ends in a refusal on some side."""
    clean = transcript(*pair())
    for which in range(3):
        for pos in range(len(clean[which])):
            for bit in range(8):
                msgs = list(clean)
                flipped = bytearray(msgs[which])
                flipped[pos] ^= 1 << bit
                msgs[which] = bytes(flipped)
                with pytest.raises(HandshakeError):
                    _replay(msgs, which)


def _replay(msgs: list[bytes], tampered: int) -> None:
    """Deliver the three messages, the untampered ones as the real sides produce them."""
    init, resp = pair()
    hello = msgs[0] if tampered == 0 else init.hello()
    challenge = resp.receive(hello).send
    if tampered == 1:
        challenge = msgs[1]
    step = init.receive(challenge)
    proof = msgs[2] if tampered == 2 else step.send
    result = resp.receive(proof)
    if result.session is None:
        raise HandshakeError("incomplete")  # a shortened length field leaves it waiting


# -- frame MACs ----------------------------------------------------------------------------


def sealed(sealer: FrameSealer, payload: bytes) -> bytes:
    return payload + sealer.seal(payload)


def test_frames_open_in_order() -> None:
    sealer, opener = FrameSealer(KEY), FrameOpener(KEY)
    for payload in (b"", b"a", b"x" * 70000, b""):
        frame = sealed(sealer, payload)
        assert len(frame) == len(payload) + TAG_SIZE
        assert opener.open(frame) == payload


@pytest.mark.parametrize("attack", ["tamper", "tag", "replay", "reorder", "drop", "short", "key"])
def test_tampered_stream_is_detected(attack: str) -> None:
    sealer = FrameSealer(KEY)
    opener = FrameOpener(OTHER_KEY if attack == "key" else KEY)
    frames = [sealed(sealer, p) for p in (b"one", b"two", b"three")]
    if attack == "tamper":
        frames[1] = b"tw0" + frames[1][3:]
    elif attack == "tag":
        frames[1] = frames[1][:-1] + bytes([frames[1][-1] ^ 1])
    elif attack == "replay":
        frames[1] = frames[0]
    elif attack == "reorder":
        frames[1], frames[2] = frames[2], frames[1]
    elif attack == "drop":
        del frames[1]
    elif attack == "short":
        frames[1] = frames[1][: TAG_SIZE - 1]
    if attack != "key":
        assert opener.open(frames[0]) == b"one"
    with pytest.raises(FrameAuthError):
        for frame in frames[0 if attack == "key" else 1 :]:
            opener.open(frame)
