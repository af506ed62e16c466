"""Random packets at a live CTDB-protocol door: every request answered, nothing crashes.

Samba's clients wait for the reply to every control and every call, so a
request the door cannot serve must still be answered (status -1), whatever
its opcode, destination node, flags and data. Seeded, so a failure
replays: controls of every opcode the codec knows plus unknown numbers,
for this node, another node (forwarded), a node that does not exist or a
broadcast, with valid-looking or random data; calls and messages mixed in.
The administrative controls that change the cluster on purpose
(SET_TUNABLE, SET_RECMODE) are left out: they are an admin's, not bad input.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable

from ctdb.common.config import CTDB_SOCKET_NAME
from ctdb.protocol.ctdb_opcodes import (
    BROADCAST_ALL,
    BROADCAST_CONNECTED,
    CTRL_FLAG_NOREPLY,
    CURRENT_NODE,
    Control,
)
from ctdb.protocol.ctdb_wire import (
    Header,
    PacketDecoder,
    ReplyCall,
    ReplyControl,
    ReqCall,
    ReqControl,
    ReqMessage,
)
from tools.cluster import LocalCluster

ADMIN = {Control.SET_TUNABLE, Control.SET_RECMODE}
OPCODES = [c for c in Control if c not in ADMIN] + [0, 3, 9999, 0xFFFFFFFF]
DESTINATIONS = [CURRENT_NODE, 0, 1, 2, 77, BROADCAST_ALL, BROADCAST_CONNECTED]


def _data(rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return b""
    if kind == 1:  # a u32 (a db id, a pnn, a pid): what many controls take
        return rng.getrandbits(32).to_bytes(4, "little")
    if kind == 2:  # a NUL-terminated name
        return rng.choice([b"fuzz.tdb", b"", b"x" * 300]) + b"\0"
    return rng.randbytes(rng.randrange(1, 80))


def test_every_random_request_gets_its_answer_and_the_daemon_keeps_serving(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    c = cluster_factory(size=3)
    rng = random.Random(20261203)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    sock.connect(str(c.node_dir(0) / CTDB_SOCKET_NAME))
    expected: dict[int, type] = {}
    sent = []
    for reqid in range(1, 401):
        pick = rng.randrange(10)
        dest = rng.choice(DESTINATIONS)
        if pick < 8:
            flags = CTRL_FLAG_NOREPLY if rng.randrange(10) == 0 else 0
            opcode = rng.choice(OPCODES)
            srvid = rng.getrandbits(64)
            packet = ReqControl(Header(reqid, dest), opcode, _data(rng), srvid, flags).encode()
            if not flags:
                expected[reqid] = ReplyControl
        elif pick == 8:
            key = rng.randbytes(rng.randrange(0, 20))
            packet = ReqCall(Header(reqid, dest), 0, rng.getrandbits(32), 0, key).encode()
            expected[reqid] = ReplyCall
        else:
            packet = ReqMessage(Header(reqid, dest), rng.getrandbits(64), _data(rng)).encode()
        sent.append(packet)
    sock.sendall(b"".join(sent))
    decoder = PacketDecoder()
    answered: dict[int, type] = {}
    while set(answered) != set(expected):
        chunk = sock.recv(65536)
        assert chunk, f"the door hung up; unanswered: {sorted(set(expected) - set(answered))[:10]}"
        for reply in decoder.feed(chunk):
            if isinstance(reply, ReplyControl | ReplyCall):
                assert reply.header.reqid not in answered, "answered twice"
                answered[reply.header.reqid] = type(reply)
    sock.close()
    assert answered == expected
    for pnn in range(3):
        assert c.alive(pnn)
        with c.client(pnn) as client:
            assert client.pnn == pnn
    for pnn in range(3):
        assert "Traceback" not in c.log_path(pnn).read_text()
