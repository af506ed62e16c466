"""tcp: what the migration engine's message half tells its waiting requests,
without a loop: a record that arrives (or a call given up) answers every
request waiting for it once, and a reply to a record call answers that
call's waiter, and no other (`ctdb.engines.answers`)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from ctdb.common.errors import ErrorCode
from ctdb.engines.dmaster_calls import DmasterCalls
from ctdb.engines.migration_messages import CallOut
from ctdb.protocol.messages import RemoteCallReply
from tests.recording import Recorded


def test_a_call_out_answers_each_of_its_waiters_once() -> None:
    told = Recorded()
    out = CallOut()
    out.waiters = {"a": None, "b": None}
    out.end(told)
    out.end(told)  # a record that arrives after the call was given up
    assert told.told == [("a", None), ("b", None)] and not out.waiters


def test_a_reply_answers_the_waiter_of_its_call() -> None:
    told = Recorded()
    calls = DmasterCalls(cast(Any, SimpleNamespace(node=None, waiting=told)))
    calls.on_reply(RemoteCallReply(7, 3, 0, "", {"appended": 2}))
    calls.on_reply(RemoteCallReply(8, 3, int(ErrorCode.BUSY), "record is locked", None))
    assert told.told == [(("call", 7), {"appended": 2}), (("call", 8), ErrorCode.BUSY)]
