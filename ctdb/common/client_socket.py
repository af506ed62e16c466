"""Where a client finds its local daemon: $CTDB_SOCKET, else CTDB's standard path.

A module of its own, importing only `os`, because `ctdbtool`'s one-shot
commands (`tools/ctdbtool/quick.py`) read it without loading the client
library.
"""

from __future__ import annotations

import os

DEFAULT_SOCKET = "/var/run/ctdb/ctdbd.socket"


def default_socket() -> str:
    return os.environ.get("CTDB_SOCKET") or DEFAULT_SOCKET
