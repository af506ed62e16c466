"""CTDB's messaging on the CTDB-protocol socket: srvids, REQ_MESSAGE, broadcasts.

Samba's daemons and CTDB's test programs signal each other this way
(`message_ring`, smbd's SAMBA_PROCESS broadcasts). A minimal CTDB client,
built on the project's own codec of that protocol, registers srvids and
sends messages; the project's own clients take part on the same srvids, so
one registry serves both protocols.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from ctdb.client import Client
from ctdb.common.config import CTDB_SOCKET_NAME
from ctdb.protocol.ctdb_opcodes import BROADCAST_CONNECTED, CURRENT_NODE, Control
from ctdb.protocol.ctdb_wire import (
    Header,
    Packet,
    PacketDecoder,
    ReplyControl,
    ReqControl,
    ReqMessage,
)
from tools.cluster import LocalCluster

SRVID_ALL = 0xFFFF_FFFF_FFFF_FFFF
TEST_SRVID = 0xAE00_0000_0000_0042


class CtdbClient:
    """Just enough of a CTDB client: controls answered in order, messages kept."""

    def __init__(self, cluster: LocalCluster, pnn: int) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(20)
        self.sock.connect(str(cluster.node_dir(pnn) / CTDB_SOCKET_NAME))
        self.decoder = PacketDecoder()
        self.packets: list[Packet] = []
        self.reqid = 0

    def close(self) -> None:
        self.sock.close()

    def _next(self) -> Packet:
        while not self.packets:
            data = self.sock.recv(65536)
            assert data, "the daemon closed the connection"
            for packet in self.decoder.feed(data):
                assert not isinstance(packet, Exception), packet
                self.packets.append(packet)
        return self.packets.pop(0)

    def control(self, opcode: Control, srvid: int = 0) -> int:
        self.reqid += 1
        self.sock.sendall(ReqControl(Header(self.reqid), opcode, srvid=srvid).encode())
        kept: list[Packet] = []
        while True:
            packet = self._next()
            if isinstance(packet, ReplyControl) and packet.header.reqid == self.reqid:
                self.packets[:0] = kept
                return packet.status
            kept.append(packet)

    def send(self, destnode: int, srvid: int, data: bytes) -> None:
        self.sock.sendall(ReqMessage(Header(0, destnode), srvid, data).encode())

    def message(self, srvid: int) -> ReqMessage:
        """The next message for `srvid` (others that arrive first are kept)."""
        kept: list[Packet] = []
        try:
            while True:
                packet = self._next()
                if isinstance(packet, ReqMessage) and packet.srvid == srvid:
                    return packet
                kept.append(packet)
        finally:
            self.packets[:0] = kept


@pytest.fixture
def clients(cluster: LocalCluster) -> Iterator[list[CtdbClient]]:
    made = [CtdbClient(cluster, pnn) for pnn in range(3)]
    try:
        yield made
    finally:
        for c in made:
            c.close()


def test_a_message_reaches_every_client_registered_on_the_node(
    cluster: LocalCluster, clients: list[CtdbClient]
) -> None:
    c0, _, c2 = clients
    assert c2.control(Control.REGISTER_SRVID, TEST_SRVID) == 0
    other = CtdbClient(cluster, 2)
    try:
        assert other.control(Control.REGISTER_SRVID, TEST_SRVID) == 0
        c0.send(2, TEST_SRVID, b"to node 2")
        for receiver in (c2, other):
            got = receiver.message(TEST_SRVID)
            assert got.data == b"to node 2" and got.header.srcnode == 2
    finally:
        other.close()


def test_a_broadcast_reaches_every_node_the_sender_included(
    cluster: LocalCluster, clients: list[CtdbClient]
) -> None:
    for c in clients:
        assert c.control(Control.REGISTER_SRVID, TEST_SRVID + 1) == 0
    clients[1].send(BROADCAST_CONNECTED, TEST_SRVID + 1, struct.pack("<I", 1))
    for c in clients:
        assert c.message(TEST_SRVID + 1).data == struct.pack("<I", 1)


def test_srvid_all_hears_every_message_and_keeps_its_srvid(
    cluster: LocalCluster, clients: list[CtdbClient]
) -> None:
    listener = clients[0]
    assert listener.control(Control.REGISTER_SRVID, SRVID_ALL) == 0
    clients[2].send(0, TEST_SRVID + 2, b"anything")
    assert listener.message(TEST_SRVID + 2).data == b"anything"


def test_the_two_protocols_share_srvids(cluster: LocalCluster, clients: list[CtdbClient]) -> None:
    """Our own client sends to a CTDB client, and hears a CTDB client's message."""
    ctdb_side = clients[1]
    assert ctdb_side.control(Control.REGISTER_SRVID, TEST_SRVID + 3) == 0
    with cluster.client(0) as ours:
        ours.register_srvid(TEST_SRVID + 4)
        ours.send_message(1, TEST_SRVID + 3, b"from our protocol")
        assert ctdb_side.message(TEST_SRVID + 3).data == b"from our protocol"
        ctdb_side.send(0, TEST_SRVID + 4, b"from CTDB's")
        got = ours.wait_message(timeout=20)
        assert (got.srvid, got.data) == (TEST_SRVID + 4, b"from CTDB's")


def test_deregistering_stops_delivery_and_an_unknown_srvid_fails(
    cluster: LocalCluster, clients: list[CtdbClient]
) -> None:
    c = clients[0]
    assert c.control(Control.DEREGISTER_SRVID, TEST_SRVID + 5) == -1  # never registered
    assert c.control(Control.REGISTER_SRVID, TEST_SRVID + 5) == 0
    assert c.control(Control.DEREGISTER_SRVID, TEST_SRVID + 5) == 0
    # Ordered after the two above on the same node: once the marker arrives,
    # the first message would have arrived before it, had it been delivered.
    assert c.control(Control.REGISTER_SRVID, TEST_SRVID + 6) == 0
    clients[1].send(0, TEST_SRVID + 5, b"not for you")
    clients[1].send(0, TEST_SRVID + 6, b"marker")
    c.message(TEST_SRVID + 6)
    assert not [p for p in c.packets if isinstance(p, ReqMessage) and p.srvid == TEST_SRVID + 5]


def test_a_message_to_a_node_that_does_not_exist_is_dropped(
    cluster: LocalCluster, clients: list[CtdbClient]
) -> None:
    c = clients[0]
    assert c.control(Control.REGISTER_SRVID, TEST_SRVID + 7) == 0
    c.send(77, TEST_SRVID + 7, b"nowhere")
    c.send(CURRENT_NODE, TEST_SRVID + 7, b"here")
    assert c.message(TEST_SRVID + 7).data == b"here"
    assert c.control(Control.GET_PNN) == 0  # the connection still serves
    with Client(cluster.socket(0)) as ours:
        assert ours.pnn == 0
