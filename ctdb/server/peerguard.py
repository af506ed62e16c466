"""What a node does with a message a peer should never have sent.

A node message that fails its checks (`message_codec.decode`, `check_reply`)
means the sender is broken or hostile, so the message is dropped whole,
never half-handled. On a point-to-point transport the link to the sender is
cut (`Transport.drop_peer`; the peer may connect again, as a fixed or
restarted node must be able to). On a virtually synchronous transport every
member receives the same broadcast and runs the same checks on the same
bytes, so every member drops it alike and the replicas stay identical.

Either way the first bad message of a sender is logged, and after that at
most one line a minute per sender with a count, so a peer spraying garbage
cannot flood the log.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from ctdb.common.errors import CtdbError
from transport.base import Transport

log = logging.getLogger("ctdb.server.node")

LOG_INTERVAL = 60.0


class PeerGuard:
    def __init__(self, pnn: int, transport: Transport, stats: Counter[str]) -> None:
        self.pnn = pnn
        self.transport = transport
        self.stats = stats
        #: sender -> (when its last report was logged, bad messages since)
        self._reported: dict[int, tuple[float, int]] = {}

    def reject(self, src: int, error: CtdbError) -> None:
        self.stats["bad_messages"] += 1
        now = time.monotonic()
        last, since = self._reported.get(src, (-LOG_INTERVAL, 0))
        if now - last < LOG_INTERVAL:
            self._reported[src] = (last, since + 1)
        else:
            self._reported[src] = (now, 0)
            more = f" ({since} more since the last report)" if since else ""
            if src == self.pnn:
                log.error("own message failed its checks (a bug), dropped: %s%s", error, more)
            else:
                log.warning("node %d sent an invalid message, dropped: %s%s", src, error, more)
        if src != self.pnn:
            self.transport.drop_peer(src)
