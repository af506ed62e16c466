"""One client connection's protocol state: request ids, framing, replies (no I/O).

The front ends own the socket; this turns operations into frames and the
daemon's bytes into outcomes: a reply to a request, a message for a srvid
this client registered, or a connection-level error (request id 0) that
fails every request in flight.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from ctdb.client.operations import Message, Op
from ctdb.common.errors import CtdbError
from ctdb.protocol import client as protocol


@dataclass(slots=True)
class Answer:
    """The reply to request `reqid`: its result, or the error it failed with."""

    reqid: int
    result: Any
    error: CtdbError | None


Event = Answer | Message | CtdbError


class Connection:
    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._decoder = protocol.ReplyDecoder()

    def request(self, op: Op[Any]) -> tuple[int, bytes]:
        """A fresh request id and the frame that asks for `op`."""
        reqid = next(self._ids)
        return reqid, protocol.encode_request(reqid, op.name, op.args)

    def receive(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        for reply in self._decoder.feed(data):
            if reply.reqid == protocol.EVENT_REQID:
                if reply.code:
                    events.append(CtdbError(reply.code, str(reply.result)))
                else:
                    events.append(Message(**reply.result))
            elif reply.code:
                events.append(Answer(reply.reqid, None, CtdbError(reply.code, str(reply.result))))
            else:
                events.append(Answer(reply.reqid, reply.result, None))
        return events
