"""Messages between clients: who listens on which srvid here, and delivery across nodes.

CTDB's messaging, which Samba uses for its own signalling: a client
registers message ids (srvids), any client may send a message to a srvid on
one node or on every node, and each client registered there receives it.
Nothing is queued or retried: a message to a node that is not connected is
an error for the sender, and a node with no listener drops it, as in CTDB.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Protocol

import msgpack

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol.client import ENTRY_HEAD_SRVID
from ctdb.protocol.messages import ClientMessage, Message
from transport.base import Transport

#: a listener: (srvid, sending node, data)
Listener = Callable[[int, int, bytes], None]
#: CTDB_SRVID_ALL: a listener on it hears every message for a client, whatever
#: its srvid (ctdb_protocol.h; Samba's daemon dispatches to both)
SRVID_ALL = 0xFFFF_FFFF_FFFF_FFFF


class MessagingHost(Protocol):
    pnn: int
    nodes: list[str]
    transport: Transport
    stats: Counter[str]

    def send(self, pnn: int, msg: Message) -> None: ...


class Messaging:
    def __init__(self, node: MessagingHost) -> None:
        self.node = node
        self._listeners: dict[int, list[Listener]] = {}

    def register(self, srvid: int, listener: Listener) -> None:
        self._listeners.setdefault(srvid, []).append(listener)

    def register_client(self, srvid: int, listener: Listener) -> None:
        """A client's registration, of either protocol: not for a srvid the
        daemon keeps for itself."""
        if srvid == ENTRY_HEAD_SRVID:
            # Nodes tell each other whose entry came first there; each client
            # hears only of its own (ctdb.server.owners).
            raise CtdbError(
                ErrorCode.INVALID, f"srvid {srvid:#x} is reserved for entry-list notices"
            )
        self.register(srvid, listener)

    def deregister(self, srvid: int, listener: Listener) -> None:
        listeners = self._listeners.get(srvid, [])
        if listener in listeners:
            listeners.remove(listener)
        if not listeners:
            self._listeners.pop(srvid, None)

    def deliver(self, srvid: int, src: int, data: bytes) -> None:
        """To this node's listeners on `srvid` and on SRVID_ALL (a message from
        node `src`). The notices of entry lists are the daemon's own: nobody
        hears them on SRVID_ALL."""
        listeners = list(self._listeners.get(srvid, ()))
        if srvid not in (SRVID_ALL, ENTRY_HEAD_SRVID):
            listeners += self._listeners.get(SRVID_ALL, ())
        for listener in listeners:
            listener(srvid, src, data)
        self.node.stats["messages_delivered"] += 1

    def send(self, target: int | None, srvid: int, data: bytes) -> None:
        """To one node's listeners, or with `target` None to every connected node's."""
        node = self.node
        if target is not None and not 0 <= target < len(node.nodes):
            raise CtdbError(ErrorCode.NOT_FOUND, f"no node with pnn {target}")
        msg = ClientMessage(srvid, data, node.pnn)
        targets = node.transport.view.members if target is None else (target,)
        for pnn in targets:
            if pnn != node.pnn and pnn not in node.transport.view:
                raise CtdbError(ErrorCode.DISCONNECTED, f"node {pnn} is not connected")
            node.send(pnn, msg)

    def entry_head(self, owner: tuple[int, int], db_id: int, key: bytes) -> None:
        """`owner` now holds the first entry of a list: tell it, on its node."""
        node = self.node
        pnn, client = owner
        data = msgpack.packb([client, db_id, key])
        if pnn == node.pnn:
            self.deliver(ENTRY_HEAD_SRVID, node.pnn, data)
        elif pnn in node.transport.view:
            node.send(pnn, ClientMessage(ENTRY_HEAD_SRVID, data, node.pnn))
