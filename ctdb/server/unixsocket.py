"""The daemon's listening Unix sockets: created private, removed on the way out.

Both client doors (our protocol, `sessions.py`; CTDB's, `ctdb_sessions.py`)
listen the same way: only the socket's owner may connect unless
`[server] socket mode` says otherwise, and a stale socket left by a crash is
replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("ctdb.server.unixsocket")


async def listen(
    path: Path, mode: int, protocol: Callable[[], asyncio.Protocol]
) -> asyncio.AbstractServer:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()
    old_umask = os.umask(0o077)  # never reachable by others, not even for a moment
    try:
        server = await asyncio.get_running_loop().create_unix_server(protocol, str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    return server


async def close(server: asyncio.AbstractServer, path: Path) -> None:
    """Stop listening (the caller aborts its connections first) and remove the socket."""
    server.close()
    # uvloop waits for every connection to be gone; never hang shutdown on it.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.wait_closed(), 1.0)
    if path.exists():
        path.unlink()


def peer_pid(transport: asyncio.BaseTransport) -> int | None:
    """The connected client's pid (SO_PEERCRED)."""
    sock = transport.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (AttributeError, OSError):
        return None
    pid: int = struct.unpack("3i", creds)[0]
    return pid


def write_capped(transport: asyncio.Transport, data: bytes, cap: int, who: str) -> bool:
    """Queue `data`, or drop the client (False) if what waits for it would pass `cap`.

    Back-pressure cannot hold what arrives whether or not the client reads
    (replies of running requests, messages to its srvids): a client that
    lets it pile up is dropped with a log line, as ctdbd drops one past
    MaxQueueDropMsg. `who` names it in that line.
    """
    queued = transport.get_write_buffer_size()
    if queued + len(data) > cap:
        log.warning(
            "dropping %s: it does not read what it is sent "
            "(%d bytes queued, %d more to send, cap %d)",
            who,
            queued,
            len(data),
            cap,
        )
        transport.abort()
        return False
    transport.write(data)
    return True
