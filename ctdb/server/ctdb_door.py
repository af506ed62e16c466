"""What a control handler sees of the CTDB-protocol door (`ctdb_sessions`).

Handlers (`ctdb_handlers`, `ctdb_handlers_smbd`) see the door, never one
client's connection, so a control forwarded from another node's door runs
here exactly as a local client's does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from typing import Protocol

from ctdb.server.ctdb_seqnum import SeqnumWatch
from ctdb.server.node import Node

#: What ctdbd answers a request it cannot serve.
FAILED = -1


class DoorClient(Protocol):
    """A client connected to the door, as PROCESS_EXISTS and CHECK_PID_SRVID see it."""

    @property
    def pid(self) -> int | None: ...

    @property
    def srvids(self) -> Counter[int]: ...


class Door(Protocol):
    """The CTDB-protocol door of one node (`ctdb_sessions.CtdbProtocolServer`)."""

    node: Node
    #: packets clients sent, by operation, and packets sent to clients
    packets: Counter[int]
    sent: int
    #: the databases whose TDB sequence number this node propagates (ENABLE_SEQNUM)
    seqnums: SeqnumWatch

    @property
    def sessions(self) -> Collection[DoorClient]: ...

    def recover_later(self) -> None:
        """Start a forced recovery of the cluster, without waiting for it."""
