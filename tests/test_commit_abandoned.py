"""A client that asks for a commit and goes away at once leaves nothing held.

Found from outside: on tcp a client of the leader that sent `trans_commit`
and closed its socket at once left the database refusing every later
commit, on every node, with `BUSY: database ... has a commit in progress`,
until an admin forced a recovery. Its connection's end cancelled the
leader's own two-phase commit between prepare and finish (a control the
leader sends itself ran in the client's task; on any other node it runs
in a task of its own). Real daemons, a raw client socket.
"""

from __future__ import annotations

import socket
from typing import Any

import msgpack

from ctdb.protocol import client as protocol
from tests.conftest import unique
from tools.cluster import LocalCluster
from transport.framing import frame


def _send(sock: socket.socket, reqid: int, op: str, args: dict[str, Any]) -> None:
    sock.sendall(frame(msgpack.packb([reqid, op, args], use_bin_type=True)))


def _reply(sock: socket.socket) -> Any:
    data = b""
    while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
        chunk = sock.recv(65536)
        assert chunk, "the daemon closed the connection"
        data += chunk
    return msgpack.unpackb(data[4:], raw=False)


def _commit_and_leave(path: str, db: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        _send(sock, 1, "hello", {"version": protocol.VERSION})
        _reply(sock)
        _send(sock, 2, "trans_start", {"db": db})
        tx = _reply(sock)[2]
        _send(sock, 3, "trans_store", {"tx": tx, "key": b"left", "value": b"behind"})
        _reply(sock)
        _send(sock, 4, "trans_commit", {"tx": tx})
    # closed before any reply


def test_a_commit_whose_client_left_at_once_blocks_no_later_commit(
    cluster: LocalCluster,
) -> None:
    db = unique("abandoned")
    with cluster.client(0) as c:
        c.attach(db, "persistent")
        c.transact(db, {b"before": b"1"})
        leader = int(c.call("status")["leader"])
    for round_ in range(3):
        _commit_and_leave(cluster.socket(leader), db)
        for pnn in range(cluster.size):
            with cluster.client(pnn, timeout=30) as c:
                c.transact(db, {b"after": b"%d/%d" % (round_, pnn)})
    values = set()
    for pnn in range(cluster.size):
        with cluster.client(pnn) as c:
            assert c.fetch(db, b"after") == b"2/%d" % (cluster.size - 1)
            values.add(c.fetch(db, b"left"))
    # the abandoned commits happened everywhere or nowhere
    assert len(values) == 1
