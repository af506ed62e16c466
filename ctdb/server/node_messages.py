"""Messages from other nodes: decoded, checked, handed to the part that answers them.

Every payload a peer sends is decoded against the limits this cluster's
configuration sets (`ctdb.protocol.message_codec`). What does not decode,
and what the membership refuses on this transport (a vs node takes no
leader's recovery messages), goes to the peer guard, which counts and
reports the peer, instead of to a handler. The node names the parts that
answer which message types (`routes`: its own, and the membership's record
engine messages); every message type is either routed or refused. A
handler that fails (the guard's refusal of a type included) is a local
failure of this node, never a crash: the node freezes and asks for a
recovery.

On a transport that orders every message, our own broadcasts come back to
us too, and the client that sent the request waits for that delivery. So
the node hands each one to `expect_own` right after the transport took it:
it is decoded and checked while the transport orders it (corosync, in its
own process), and its delivery takes the checked message instead of
decoding the same bytes again, on the request's path. (In the next loop
turn would be too late: corosync often delivers it back before.) Nothing
is checked less: a payload that fails is decoded at its delivery as any
other, and rejected there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from ctdb.common.errors import log_failure
from ctdb.protocol.message_codec import DecodeError, decode
from ctdb.protocol.messages import MESSAGE_TYPES, Message
from ctdb.protocol.schema import Limits
from ctdb.server.peerguard import PeerGuard

#: the node's logger, as before this module was split from node.py (log filters keep working)
log = logging.getLogger("ctdb.server.node")

#: what answers a message: (sender, message)
Route = Callable[[int, Any], None]

#: Own payloads decoded ahead of their delivery are kept only up to this
#: size (a bigger one is rare, a snapshot, and would be hashed again to be
#: found) and this many at once (a view change may drop what we sent, so
#: some never come back: past this, all are forgotten).
OWN_AHEAD_SIZE = 16 * 1024
OWN_AHEAD_COUNT = 256


class NodeMessages:
    """The transport's `on_message`: one node's decoding, checking and routing of peer messages."""

    def __init__(
        self,
        limits: Limits,
        guard: PeerGuard,
        routes: Mapping[type[Message], Route],
        refused: Mapping[type[Message], str],
        local_failure: Callable[[], None],
        pnn: int,
    ) -> None:
        unanswered = set(MESSAGE_TYPES) - set(routes) - set(refused)
        both = set(routes) & set(refused)
        if unanswered or both:
            names = sorted(cls.__name__ for cls in unanswered | both)
            raise ValueError(f"node messages not either routed or refused: {names}")
        self._limits = limits
        self._guard = guard
        #: Routed by exact type, one lookup per message (the classes are
        #: final): a chain of isinstance checks cost every record message nine
        #: calls. A refused type's route is the peer guard.
        self._routes: dict[type[Message], Route] = {
            **{cls: self._refuse(why) for cls, why in refused.items()},
            **routes,
        }
        self._local_failure = local_failure
        self._pnn = pnn
        #: our own payloads, decoded and checked, until they are delivered
        self._own: dict[bytes, Message] = {}

    def _refuse(self, why: str) -> Route:
        return lambda src, _msg: self._guard.reject(src, DecodeError(why))

    def expect_own(self, payload: bytes) -> None:
        """We just sent `payload` to ourselves through the ordering transport."""
        if len(payload) > OWN_AHEAD_SIZE:
            return
        if len(self._own) >= OWN_AHEAD_COUNT:
            self._own.clear()
        try:
            self._own[payload] = decode(payload, self._limits, self._pnn)
        except DecodeError:
            pass  # its delivery decodes it again, and rejects it there

    def on_payload(self, src: int, payload: bytes) -> None:
        """The transport's callback: one payload from node `src`."""
        if src == self._pnn and self._own:
            msg = self._own.pop(payload, None)
            if msg is not None:
                self.handle(src, msg)
                return
        try:
            msg = decode(payload, self._limits, src)
        except DecodeError as exc:
            self._guard.reject(src, exc)
            return
        self.handle(src, msg)

    def handle(self, src: int, msg: Message) -> None:
        """Run a message's handler: a local failure must not take the node down with it."""
        try:
            self._routes[type(msg)](src, msg)
        except Exception as exc:
            log_failure(log, exc, "handling %s from node %d", type(msg).__name__, src)
            self._local_failure()
