"""Intruders at the node port of a real tcp cluster (issue 9, items 1 and 2).

An intruder is a plain socket in this process, bound to a loopback address
of its choice, that speaks the node protocol as far as it can: a hello
claiming to be node 1, a proof it cannot make, then the controls that used
to ban and stop node 0 (`setflags BANNED`, `shutdown`). Each test checks
that the daemon refused it for the expected reason, closed the connection
before reading those controls, and that the cluster did not notice: same
generation on every node, no view change in any log, every node OK and
serving.

The module cluster has five nodes so that the scenarios impersonating a node
come from distinct node addresses: refusals are logged once a minute per
address, and each of those tests checks its own reason in the log.
"""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ctdb.protocol.message_codec import encode
from ctdb.protocol.messages import NODE_PROTOCOL, Control
from ctdb.server.state import NodeFlags
from tests.conftest import start_cluster, unique
from tools.cluster import LocalCluster
from transport.framing import frame
from transport.linkauth import Initiator, Settings

#: Handshakes must finish within KeepaliveInterval * KeepaliveLimit = 2 s.
TUNABLES = {"KeepaliveInterval": 0.5, "KeepaliveLimit": 4}
WAIT = 30.0


@pytest.fixture(scope="module")
def cluster5() -> Iterator[LocalCluster]:
    directory = Path(tempfile.mkdtemp(prefix="ctdb-sec-"))
    c = start_cluster(directory, "tcp", size=5, tunables=dict(TUNABLES))
    try:
        yield c
    finally:
        c.down()
        shutil.rmtree(directory, ignore_errors=True)


# -- what "nothing changed" means ------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    generations: tuple[int, ...]
    view_changes: tuple[int, ...]
    pids: tuple[int, ...]


def view_changes(c: LocalCluster, pnn: int) -> int:
    return c.log_path(pnn).read_text().count("ctdb.server.node INFO: view ")


def snapshot(c: LocalCluster) -> Snapshot:
    c.wait_healthy(WAIT)
    return Snapshot(
        tuple(c.status(p)["generation"] for p in range(c.size)),
        tuple(view_changes(c, p) for p in range(c.size)),
        tuple(c.pids[p] for p in range(c.size)),
    )


def assert_undisturbed(c: LocalCluster, before: Snapshot) -> None:
    """Same generation and views everywhere, every node OK, and the cluster still serves."""
    assert all(c.alive(p) for p in range(c.size)), "a daemon died"
    assert snapshot(c) == before
    for pnn in range(c.size):
        states = [n["state"] for n in c.status(pnn)["nodes"]]
        assert states == ["OK"] * c.size, (pnn, states)
    db, key = unique("sec"), b"witness"
    with c.client(c.size - 1) as writer, c.client(0) as reader:
        writer.attach(db)
        writer.store(db, key, b"still serving")
        assert reader.fetch(db, key) == b"still serving"


def refusals(c: LocalCluster, source: str, pnn: int = 0) -> list[str]:
    return [
        line
        for line in c.log_path(pnn).read_text().splitlines()
        if f"refused node connection with {source}:" in line
    ]


def wait_for_refusal(c: LocalCluster, source: str, reason: str) -> str:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        for line in refusals(c, source):
            if reason in line:
                return line
        time.sleep(0.05)
    raise AssertionError(f"node 0 never logged a refusal of {source} for {reason!r}")


# -- the intruder ------------------------------------------------------------------------------


def evil_controls() -> bytes:
    return frame(encode(Control(1, "setflags", {"set": int(NodeFlags.BANNED)}))) + frame(
        encode(Control(2, "shutdown", {}))
    )


@dataclass
class Knock:
    challenge: bytes  # what node 0 answered to the hello (empty if it hung up first)
    closed_after: float  # seconds from connect until node 0 closed the connection


def knock(
    c: LocalCluster,
    source: str,
    *,
    key: bytes | None = None,
    send: bytes | None = None,
    hold: bool = False,
) -> Knock:
    """Connect from `source` to node 0's node port and try to act as a node.

    By default: a hello claiming the pnn of `source` (pnn 1 if it is no
    node's address), then (after node 0's challenge, if
    any) a proof made with `key` (random bytes without one), then the evil
    controls. `send` replaces all of that with raw bytes; `hold` sends
    nothing. Returns once node 0 closed the connection.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.bind((source, 0))
    sock.settimeout(WAIT)
    started = time.monotonic()
    sock.connect((c.address(0), c.port))
    challenge = b""
    try:
        if send is not None:
            _send_quietly(sock, send)
        elif not hold:
            nodes = [c.address(p) for p in range(c.size)]
            claim = nodes.index(source) if source in nodes else 1
            intruder = Initiator(Settings(key or os.urandom(32), protocol=NODE_PROTOCOL), claim, 0)
            _send_quietly(sock, intruder.hello())
            challenge = _read_exactly(sock, 4 + 73)
            proof = struct.pack("!I", 32) + os.urandom(32)
            if len(challenge) == 4 + 73:
                try:
                    proof = intruder.receive(challenge).send
                except Exception:  # noqa: BLE001 - a wrong key fails its own check: go on
                    pass
            _send_quietly(sock, proof + evil_controls())
        _wait_closed(sock)
        return Knock(challenge, time.monotonic() - started)
    finally:
        sock.close()


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send what the peer still accepts; a reset means it hung up, which we check later."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _wait_closed(sock: socket.socket) -> None:
    """Until node 0 closes the connection; anything it sends meanwhile is a failure."""
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            return
        except TimeoutError:
            raise AssertionError(
                f"node 0 kept the intruder's connection open for {WAIT}s"
            ) from None
        if not chunk:
            return
        raise AssertionError(f"node 0 sent the intruder {chunk!r}")


def base_of(c: LocalCluster) -> str:
    return c.address(0).rsplit(".", 1)[0]


# -- the tests --------------------------------------------------------------------------------


def test_intruder_from_an_address_not_in_the_nodes_file(cluster5: LocalCluster) -> None:
    """The issue's reproduction: from 127.x.y.99, a hello claiming pnn 1, BANNED, shutdown."""
    c = cluster5
    before = snapshot(c)
    source = f"{base_of(c)}.99"
    result = knock(c, source, key=c.key_path.read_bytes())  # even the right key does not help
    assert result.challenge == b"", "node 0 answered a hello from outside the nodes file"
    wait_for_refusal(c, source, "address is not another node's in the nodes file")
    assert_undisturbed(c, before)


def test_intruder_from_a_node_address_without_the_key(cluster5: LocalCluster) -> None:
    """From node 1's own address, but it cannot prove the key: node 1's link stays up."""
    c = cluster5
    before = snapshot(c)
    source = c.address(1)
    result = knock(c, source)  # a random key: pretends to have one
    assert len(result.challenge) == 4 + 73, "a node address gets a challenge"
    wait_for_refusal(c, source, "authentication failed")
    assert_undisturbed(c, before)


def test_intruder_that_admits_having_no_key(cluster5: LocalCluster) -> None:
    c = cluster5
    before = snapshot(c)
    source = c.address(2)
    hello = Initiator(Settings(None, protocol=NODE_PROTOCOL), 2, 0).hello()
    result = knock(c, source, send=hello + evil_controls())
    assert result.challenge == b""
    wait_for_refusal(c, source, "the peer has no cluster key")
    assert_undisturbed(c, before)


def test_intruder_with_a_wrong_key(cluster5: LocalCluster) -> None:
    c = cluster5
    before = snapshot(c)
    source = c.address(3)
    wrong = bytes(b ^ 0xFF for b in c.key_path.read_bytes())
    result = knock(c, source, key=wrong)
    assert len(result.challenge) == 4 + 73
    wait_for_refusal(c, source, "authentication failed")
    assert_undisturbed(c, before)


def peak_rss(pid: int) -> int:
    """VmHWM in bytes: the most memory the process ever had resident."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_oversized_pre_auth_frame_is_refused_without_allocation(cluster5: LocalCluster) -> None:
    """A hello announcing 1 GiB, then 64 MiB of it: refused on the length field.

    Before the fix a peer could make node 0 buffer up to 256 MiB before its
    hello was even checked; node 0's peak RSS would grow by the 64 MiB sent.
    """
    c = cluster5
    before = snapshot(c)
    source = c.address(4)
    peak = peak_rss(c.pids[0])
    body = b"\0" * (64 << 20)
    result = knock(c, source, send=struct.pack("!I", 1 << 30) + body)
    grown = peak_rss(c.pids[0]) - peak
    assert grown < 16 << 20, f"node 0's peak RSS grew by {grown >> 20} MiB"
    wait_for_refusal(c, source, f"hello of {1 << 30} bytes refused")
    assert result.closed_after < 1.0
    assert_undisturbed(c, before)


def test_handshakes_in_progress_are_capped_and_timed_out(cluster5: LocalCluster) -> None:
    """Idle connections from a node address: four wait out the 2 s deadline, more are cut."""
    c = cluster5
    before = snapshot(c)
    source = c.address(1)
    sel = selectors.DefaultSelector()
    closed_after: list[float] = []
    try:
        for _ in range(6):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((source, 0))
            s.settimeout(WAIT)
            s.connect((c.address(0), c.port))
            sel.register(s, selectors.EVENT_READ, time.monotonic())
        deadline = time.monotonic() + WAIT
        while sel.get_map() and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1.0):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                _wait_closed(sock)  # readable: EOF or reset, anything else fails
                closed_after.append(time.monotonic() - key.data)
                sel.unregister(sock)
                sock.close()
    finally:
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        sel.close()
    assert len(closed_after) == 6, f"only {len(closed_after)} of 6 connections were closed"
    fast, slow = sorted(closed_after)[:2], sorted(closed_after)[2:]
    assert all(t < 1.0 for t in fast), closed_after  # over the cap: closed at once
    assert all(1.5 < t < WAIT for t in slow), closed_after  # at the deadline, not before
    assert_undisturbed(c, before)


def test_refusals_are_logged_once_a_minute_per_address(cluster5: LocalCluster) -> None:
    c = cluster5
    noisy, other = f"{base_of(c)}.98", f"{base_of(c)}.97"
    for _ in range(20):
        knock(c, noisy, hold=True)
    knock(c, other, hold=True)
    wait_for_refusal(c, other, "address is not another node's")
    assert len(refusals(c, noisy)) == 1
    assert len(refusals(c, other)) == 1
