"""Messages from other nodes: decoded, checked, handed to the part that answers them.

Every payload a peer sends is decoded against the limits this cluster's
configuration sets (`ctdb.protocol.message_codec`). What does not decode,
and what the membership refuses on this transport (a vs node takes no
leader's recovery messages), goes to the peer guard, which counts and
reports the peer, instead of to a handler. The node names the parts that
answer which message types (`routes`); every other message belongs to the
membership (the record engine, recovery or the stream). A handler that
fails is a local failure of this node, never a crash: the node freezes and
asks for a recovery.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from ctdb.protocol.message_codec import DecodeError, decode
from ctdb.protocol.messages import Message
from ctdb.protocol.schema import Limits
from ctdb.server.peerguard import PeerGuard

#: the node's logger, as before this module was split from node.py (log filters keep working)
log = logging.getLogger("ctdb.server.node")

#: what answers a message: (sender, message)
Route = Callable[[int, Any], None]


class NodeMessages:
    """The transport's `on_message`: one node's decoding, checking and routing of peer messages."""

    def __init__(
        self,
        limits: Limits,
        guard: PeerGuard,
        routes: Mapping[type[Message], Route],
        refused: Mapping[type[Message], str],
        otherwise: Route,
        local_failure: Callable[[], None],
    ) -> None:
        self._limits = limits
        self._guard = guard
        #: Routed by exact type, one lookup per message (the classes are
        #: final): a chain of isinstance checks cost every record message nine calls.
        self._routes = routes
        self._refused = refused
        self._otherwise = otherwise
        self._local_failure = local_failure

    def on_payload(self, src: int, payload: bytes) -> None:
        """The transport's callback: one payload from node `src`."""
        try:
            msg = decode(payload, self._limits, src)
        except DecodeError as exc:
            self._guard.reject(src, exc)
            return
        refused = self._refused.get(type(msg))
        if refused is not None:
            self._guard.reject(src, DecodeError(refused))
            return
        self.handle(src, msg)

    def handle(self, src: int, msg: Message) -> None:
        """Run a message's handler: a local failure must not take the node down with it."""
        try:
            self._routes.get(type(msg), self._otherwise)(src, msg)
        except Exception:
            log.exception("handling %s from node %d failed", type(msg).__name__, src)
            self._local_failure()
