"""A Samba client's record loop, as `dbwrap_ctdb`'s fetch_locked runs it, in its own process.

Samba's clients lock a record's chain in the node's TDB file and, when its
header names this node as dmaster, read and write it in place; otherwise
they unlock, ask the daemon with REQ_CALL (IMMEDIATE_MIGRATION) and look
again. This process does that to increment one counter for a while, so
that tests can count what several of them, one per node, acknowledged to
themselves against what the cluster ends with: a write in place is only
as safe as the daemons make it.

    python -m tests.samba_like_client TDB_PATH CTDB_SOCKET PNN DB_ID KEYHEX SECONDS

prints one JSON line: {"increments": n, "calls": REQ_CALLs sent,
"daemon_gone": whether its daemon went away, which ends the loop early}.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import time
from pathlib import Path

import tdb

from ctdb.protocol.ctdb_opcodes import CURRENT_NODE, IMMEDIATE_MIGRATION, NULL_FUNC
from ctdb.protocol.ctdb_wire import Header, ReplyCall, ReqCall, decode_packet
from ctdb.storage.chainlocks import ChainLocks
from ctdb.storage.ltdb import TDB_MUTEX_LOCKING, Record

#: how long one REQ_CALL may take before the client gives up (ctdbd answers
#: within CallTimeout, a failing status included)
CALL_LIMIT = 60.0
#: how often (seconds) the loop looks whether the daemon is still there
WATCH = 0.01


def _call(sock: socket.socket, reqid: int, db_id: int, key: bytes) -> None:
    """REQ_CALL for the record, and its answer (whatever its status: Samba
    looks at the file again either way)."""
    call = ReqCall(Header(reqid, CURRENT_NODE, 0), IMMEDIATE_MIGRATION, db_id, NULL_FUNC, key)
    sock.sendall(call.encode())
    got = b""
    while len(got) < 4 or len(got) < int.from_bytes(got[:4], "little"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the daemon closed the connection")
        got += chunk
    reply = decode_packet(got)
    if not isinstance(reply, ReplyCall) or reply.header.reqid != reqid:
        raise ConnectionError(f"unexpected answer {reply!r}")


def _closed(sock: socket.socket) -> bool:
    """The daemon closed our connection (it died): smbd, whose event loop
    watches that socket, exits then."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def run(path: Path, ctdb_socket: str, pnn: int, db_id: int, key: bytes, seconds: float) -> None:
    handle = tdb.Tdb(str(path), 0, tdb.NOSYNC | TDB_MUTEX_LOCKING, os.O_RDWR)
    chains = ChainLocks(handle, path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CALL_LIMIT)
    sock.connect(ctdb_socket)
    increments = calls = 0
    gone = False
    end = time.monotonic() + seconds
    watched = time.monotonic()
    while time.monotonic() < end and not gone:
        if time.monotonic() - watched > WATCH:
            gone, watched = _closed(sock), time.monotonic()
            if gone:
                break
        while True:
            # Samba waits in tdb_chainlock; a frozen node holds every chain.
            while not chains.try_lock(key):
                time.sleep(0.0005)
            data = handle.get(key)
            rec = Record.unpack(data) if data is not None else None
            if rec is not None and rec.dmaster == pnn:
                break
            chains.unlock(key)
            calls += 1
            try:
                _call(sock, calls, db_id, key)
            except OSError:  # (ConnectionError too) smbd exits when its ctdbd does
                gone = True
                break
        if gone:
            break
        assert rec is not None
        value = int(rec.value or b"0") + 1
        handle[key] = Record(rec.rsn, pnn, b"%d" % value).pack()
        chains.unlock(key)
        increments += 1
    print(json.dumps({"increments": increments, "calls": calls, "daemon_gone": gone}), flush=True)


if __name__ == "__main__":
    path, sock_path, pnn, db_id, key_hex, seconds = sys.argv[1:7]
    run(Path(path), sock_path, int(pnn), int(db_id), bytes.fromhex(key_hex), float(seconds))
