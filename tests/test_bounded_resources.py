"""A slow or hostile client or peer cannot make a daemon's memory grow (issue 9, item 6).

Black-box, against real daemons: memory is the daemon's peak resident set
(VmHWM in /proc/PID/status) against its resident set before the test's
load, so a burst that is freed again still counts.

* A client that sends many requests for a 1 MiB record and never reads its
  replies: the daemon stops reading from it instead of queueing every reply,
  a witness client on the same node keeps working, and once the client reads
  it gets every reply.
* A record may have MaxLockWaiters requests waiting for it; one more gets
  BUSY at once (both engines).
* A tcp peer that stops reading (SIGSTOP) while a client keeps sending it
  1 MiB messages: its link is dropped once `max queued` bytes wait for it,
  and the sender's memory stays bounded.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ctdb.client import Client
from ctdb.common.config import CTDB_SOCKET_NAME
from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol import client as protocol
from ctdb.protocol.ctdb_opcodes import Control
from ctdb.protocol.ctdb_wire import Header, ReplyControl, ReqControl, decode_packet
from tests.conftest import unique
from tests.test_hostile_peer import start_two_of_three
from tools.cluster import LocalCluster
from tools.fuzz import NodeLink, cluster_key
from transport.framing import frame

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024
both = pytest.mark.parametrize("transport", ["tcp", "vs"], indirect=True)
tcp_only = pytest.mark.parametrize("transport", ["tcp"], indirect=True)


def memory(pid: int, field: str) -> int:
    """VmRSS or VmHWM of `pid`, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for pid {pid}")


def raw_client(c: LocalCluster, pnn: int) -> socket.socket:
    """A client socket that has sent its hello (and not read the answer)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    sock.connect(c.socket(pnn))
    sock.sendall(protocol.encode_request(1, "hello", {"version": protocol.VERSION}))
    return sock


def read_replies(sock: socket.socket, count: int) -> list[protocol.Reply]:
    decoder = protocol.ReplyDecoder(4 * MiB)
    replies: list[protocol.Reply] = []
    while len(replies) < count:
        data = sock.recv(1 << 20)
        assert data, f"connection closed after {len(replies)} of {count} replies"
        replies += decoder.feed(data)
    return replies


@both
def test_client_that_never_reads_is_bounded(cluster_factory: Callable[..., LocalCluster]) -> None:
    """300 fetches of a 1 MiB record, never read: the daemon grows by far less than 300 MiB.

    Before the fix (main 7726d38) the daemon queued every reply: its peak
    grew by 601 MiB on tcp (the replies, and their join into one write) and
    by 304 MiB on vs. With it: 6 MiB on tcp (replies up to the high-water
    mark), 36 MiB on vs (where fetches wait for a barrier, so the replies of
    the MAX_IN_FLIGHT = 32 requests already running arrive anyway).
    """
    c = cluster_factory(size=2)
    db, requests = unique("bounded"), 300
    witness = c.client(0)
    witness.attach(db)
    witness.store(db, b"big", b"x" * MiB)
    pid = c.pids[0]
    before = memory(pid, "VmRSS")

    flood = raw_client(c, 0)
    args = {"db": db, "key": b"big"}
    flood.sendall(
        b"".join(protocol.encode_request(i, "fetch", args) for i in range(2, 2 + requests))
    )
    # The daemon answers everybody else meanwhile.
    for i in range(20):
        witness.store(db, b"witness", b"%d" % i)
        assert witness.fetch(db, b"witness") == b"%d" % i
    assert witness.fetch(db, b"big") == b"x" * MiB
    grown = memory(pid, "VmHWM") - before

    # Back-pressure, not errors: a client that reads gets every reply.
    replies = read_replies(flood, requests + 1)
    flood.close()
    assert sorted(r.reqid for r in replies) == list(range(1, 2 + requests))
    assert all(r.code == 0 for r in replies)
    assert all(r.result == b"x" * MiB for r in replies if r.reqid > 1)
    assert c.alive(0)
    grown = max(grown, memory(pid, "VmHWM") - before)
    assert grown < 100 * MiB, f"daemon grew by {grown / MiB:.0f} MiB"


@both
def test_lock_waiters_are_capped(cluster_factory: Callable[..., LocalCluster]) -> None:
    """With MaxLockWaiters = 3, the fourth request waiting for a locked record gets BUSY.

    One connection pipelines four fetch_locks; the daemon takes them in
    order, so the first three queue and the fourth is refused. Before the
    fix all four waited, and the first reply was a TIMEOUT after CallTimeout
    (20 s here).
    """
    c = cluster_factory(size=2, tunables={"MaxLockWaiters": 3, "CallTimeout": 20})
    db = unique("locks")
    holder = c.client(0)
    holder.attach(db)
    holder.fetch_lock(db, b"k")

    waiter = raw_client(c, 1)
    args = {"db": db, "key": b"k"}
    waiter.sendall(b"".join(protocol.encode_request(i, "fetch_lock", args) for i in range(2, 6)))
    hello, refused = read_replies(waiter, 2)
    assert hello.reqid == 1 and hello.code == 0
    assert refused.reqid == 5, f"expected the 4th fetch_lock refused first, got {refused}"
    assert refused.code == ErrorCode.BUSY
    assert "3 requests already wait" in str(refused.result), refused
    waiter.close()

    # The queue is left clean: once the holder lets go, others get the lock.
    # (The closed connection's three requests end when the daemon reads its
    # hang-up, which may come after the next client's request: BUSY until then.)
    holder.store_unlock(db, b"k", b"v")
    other = c.client(1)
    deadline = time.monotonic() + 10
    while True:
        try:
            assert other.fetch_lock(db, b"k") == b"v"
            break
        except CtdbError as exc:
            if exc.code != ErrorCode.BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    other.store_unlock(db, b"k", b"w")
    assert holder.fetch(db, b"k") == b"w"


@tcp_only
def test_peer_that_stops_reading_is_dropped(cluster_factory: Callable[..., LocalCluster]) -> None:
    """Node 1 is stopped while node 0 sends it 1 MiB messages: node 0 drops the link.

    Keepalives are slow here (60 s of silence allowed), so the drop is the
    `max queued` bound's doing (64 MiB). Before the fix node 0 queued all
    300 messages (its peak grew by 300 MiB) and kept the link; with it, the
    70th message found node 1 disconnected (peak +70 MiB).
    """
    c = cluster_factory(size=3, tunables={"KeepaliveInterval": 2, "KeepaliveLimit": 30})
    client = c.client(0)
    pid = c.pids[0]
    before = memory(pid, "VmRSS")
    data = b"m" * MiB
    sent = 0
    c.signal_node(1, signal.SIGSTOP)
    try:
        with pytest.raises(CtdbError) as refused:
            for _ in range(300):
                client.send_message(1, 0x1234, data)
                sent += 1
        assert refused.value.code == ErrorCode.DISCONNECTED
        grown = memory(pid, "VmHWM") - before
        log = c.log_path(0).read_text()
        assert "node 1 is not reading" in log
        assert log.count("node 1 is not reading") == 1
    finally:
        c.signal_node(1, signal.SIGCONT)
    assert sent < 120, f"{sent} MiB were queued for a stopped peer"
    assert grown < 150 * MiB, f"node 0 grew by {grown / MiB:.0f} MiB"
    # Node 1 reconnects and the cluster heals.
    c.wait_healthy(60)


def send_paced(sender: Client, n: int) -> None:
    """`n` messages of 1 MiB from node 1 to srvid 77 on node 0, a ping after
    every 16: node 0 has read each batch before the next goes. Back to back,
    node 1 may queue more than its link's bound for node 0 while node 0 is
    busy, and drops the link (a full suite run saw "node 0 is not
    connected"): a bound of its own, not the one under test."""
    for i in range(n):
        sender.send_message(0, 77, b"e" * MiB)
        if i % 16 == 15:
            sender.call("ping", pnn=0)


@tcp_only
def test_client_that_never_reads_its_messages_is_dropped(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    """150 messages of 1 MiB for a client that registered a srvid and never reads.

    Messages cannot wait (the cluster sends them), so past 64 MiB queued the
    daemon drops the client with a log line (peak +67 MiB). Before the fix
    it queued them all and kept the client (peak +104 MiB with 100 messages).
    """
    c = cluster_factory(size=2)
    pid = c.pids[0]
    deaf = raw_client(c, 0)
    deaf.sendall(protocol.encode_request(2, "register_srvid", {"srvid": 77}))
    sender = c.client(1)
    hello, registered = read_replies(deaf, 2)
    assert registered.code == 0
    before = memory(pid, "VmRSS")
    send_paced(sender, 150)
    assert sender.call("ping", pnn=0)["pnn"] == 0  # node 0 has delivered them all
    grown = memory(pid, "VmHWM") - before
    log = c.log_path(0)
    assert "does not read what it is sent" in log.read_text(), "the client was not dropped"
    with pytest.raises((ConnectionError, AssertionError), match="closed|reset"):
        read_replies(deaf, 150)  # what was sent before the drop, then the end
    deaf.close()
    assert grown < 110 * MiB, f"node 0 grew by {grown / MiB:.0f} MiB"


@tcp_only
def test_ctdb_protocol_client_that_never_reads_its_messages_is_dropped(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    """The same on the CTDB-protocol door: a Samba client that registered a
    srvid and never reads is dropped past 64 MiB queued, not fed for ever."""
    c = cluster_factory(size=2)
    pid = c.pids[0]
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deaf.settimeout(30)
    deaf.connect(str(c.node_dir(0) / CTDB_SOCKET_NAME))
    deaf.sendall(ReqControl(Header(1), Control.REGISTER_SRVID, srvid=77).encode())
    reply = decode_packet(deaf.recv(4096))
    assert isinstance(reply, ReplyControl) and reply.status == 0
    sender = c.client(1)
    before = memory(pid, "VmRSS")
    send_paced(sender, 150)
    assert sender.call("ping", pnn=0)["pnn"] == 0  # node 0 has delivered them all
    grown = memory(pid, "VmHWM") - before
    assert "dropping a CTDB-protocol client" in c.log_path(0).read_text()
    received = 0
    while chunk := deaf.recv(1 << 20):  # what was sent before the drop, then the end
        received += len(chunk)
    deaf.close()
    assert received < 100 * MiB
    assert grown < 110 * MiB, f"node 0 grew by {grown / MiB:.0f} MiB"


def test_frames_from_a_peer_outside_the_view_are_capped(tmp_path: Path) -> None:
    """A node link that is up one way only: what it sends is held up to `max queued`.

    The test process is node 2, authenticated, but nobody listens at node
    2's address, so node 0 never has its link to it and keeps node 2's
    frames for later. 200 frames of 1 MiB: node 0 drops the connection past
    64 MiB (peak +67 MiB). Before the fix node 0 held all of them (peak +147
    MiB with 150 frames).
    """
    c = start_two_of_three("tcp", tmp_path / "c")
    try:
        pid = c.pids[0]
        before = memory(pid, "VmRSS")
        link = NodeLink([c.address(p) for p in range(3)], 2, c.port, cluster_key(c))

        async def flood() -> int:
            reader, writer = await link.connect(0, b"")
            sent = 0
            try:
                for _ in range(200):
                    writer.write(frame(b"f" * MiB))
                    await writer.drain()
                    sent += 1
            except ConnectionError:
                pass
            finally:
                writer.close()
            return sent

        sent = asyncio.run(flood())
        grown = memory(pid, "VmHWM") - before
        log = c.log_path(0).read_text()
        assert "bytes sent before it is in our view" in log, f"sent {sent} frames, not dropped"
        assert grown < 110 * MiB, f"node 0 grew by {grown / MiB:.0f} MiB"
        c.wait_healthy(30, nodes=[0, 1])
    finally:
        c.down()
