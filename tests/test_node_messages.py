"""How a node routes what its peers send (`ctdb.server.node_messages`), without sockets:
every message type goes to exactly one place, refused types to the peer guard."""

from __future__ import annotations

import errno
import logging
from collections import Counter
from typing import Any

import pytest

from ctdb.protocol.message_codec import encode, wire_limits
from ctdb.protocol.messages import MESSAGE_TYPES, Call, Message, Ordered
from ctdb.server import node_messages
from ctdb.server.node_messages import NodeMessages
from ctdb.server.peerguard import PeerGuard


class _Transport:
    """What the peer guard uses of a transport: it records the links it cuts."""

    def __init__(self) -> None:
        self.dropped: list[int] = []

    def drop_peer(self, pnn: int) -> None:
        self.dropped.append(pnn)


def _messages(
    routes: dict[type[Message], Any], refused: dict[type[Message], str]
) -> tuple[NodeMessages, _Transport, list[str]]:
    """Node 0's."""
    transport = _Transport()
    failures: list[str] = []
    guard = PeerGuard(0, transport, Counter())  # type: ignore[arg-type]
    messages = NodeMessages(
        wire_limits(["n0", "n1", "n2"]), guard, routes, refused, lambda: failures.append("x"), 0
    )
    return messages, transport, failures


def _all_routed_to(seen: list[tuple[int, Message]]) -> dict[type[Message], Any]:
    return {cls: lambda src, msg: seen.append((src, msg)) for cls in MESSAGE_TYPES}


def test_a_message_type_neither_routed_nor_refused_is_a_construction_error() -> None:
    routes = _all_routed_to([])
    del routes[Call]
    with pytest.raises(ValueError, match="Call"):
        _messages(routes, {})


def test_a_message_type_both_routed_and_refused_is_a_construction_error() -> None:
    with pytest.raises(ValueError, match="Ordered"):
        _messages(_all_routed_to([]), {Ordered: "not here"})


def test_a_routed_message_reaches_its_handler_and_a_refused_one_cuts_the_link() -> None:
    seen: list[tuple[int, Message]] = []
    routes = _all_routed_to(seen)
    del routes[Ordered]
    messages, transport, failures = _messages(routes, {Ordered: "not on tcp"})
    call = Call(7, b"key", 3, 1, 0)
    messages.on_payload(1, encode(call))
    assert seen == [(1, call)] and transport.dropped == []
    messages.on_payload(2, encode(Ordered(2, 1, "sync", {})))
    assert seen == [(1, call)]  # not handled
    assert transport.dropped == [2] and failures == []


def test_a_handler_that_raises_is_a_local_failure_not_a_crash() -> None:
    def broken(src: int, msg: Message) -> None:
        raise RuntimeError("disk full")

    routes = _all_routed_to([])
    routes[Call] = broken
    messages, transport, failures = _messages(routes, {})
    messages.on_payload(1, encode(Call(7, b"key", 3, 1, 0)))
    assert failures == ["x"] and transport.dropped == []


def test_a_failing_disk_is_logged_in_one_line_and_a_bug_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A full disk fails every message that writes until it is freed: one line
    each, not a traceback each; anything else is a bug and keeps its traceback."""

    def full(src: int, msg: Message) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def bug(src: int, msg: Message) -> None:
        raise KeyError("oops")

    routes = _all_routed_to([])
    routes[Call], routes[Ordered] = full, bug
    messages, _, failures = _messages(routes, {})
    with caplog.at_level(logging.ERROR, logger="ctdb.server.node"):
        messages.on_payload(1, encode(Call(7, b"key", 3, 1, 0)))
        messages.on_payload(1, encode(Ordered(1, 1, "sync", {})))
    disk, crash = caplog.records
    assert "No space left on device" in disk.getMessage() and disk.exc_info is None
    assert crash.exc_info is not None and crash.exc_info[0] is KeyError
    assert failures == ["x", "x"]


def test_our_own_message_is_decoded_as_it_is_sent_and_not_again_at_delivery(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[int, Message]] = []
    messages, transport, _ = _messages(_all_routed_to(seen), {})
    sync = Ordered(0, 1, "sync", {})
    payload = encode(sync)
    messages.expect_own(payload)
    assert seen == []
    decoded: list[bytes] = []
    real = node_messages.decode

    def counted(data: bytes, *args: Any) -> Message:
        decoded.append(data)
        return real(data, *args)

    monkeypatch.setattr(node_messages, "decode", counted)
    messages.on_payload(0, bytes(payload))  # the transport's copy of the bytes
    assert seen == [(0, sync)] and decoded == []
    # Once only: the same bytes delivered again (sent twice, say) are decoded.
    messages.on_payload(0, bytes(payload))
    assert seen == [(0, sync), (0, sync)] and decoded == [payload]
    # Another node's identical bytes never take ours: they are decoded, and
    # refused (the message says node 0 sent it).
    messages.expect_own(payload)
    messages.on_payload(1, payload)
    assert transport.dropped == [1] and len(seen) == 2


def test_our_own_message_that_fails_its_checks_is_still_refused_at_delivery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[tuple[int, Message]] = []
    messages, _, failures = _messages(_all_routed_to(seen), {})
    bad = encode(Ordered(0, 1, "store", {"db": "not a number", "key": b"k"}))
    messages.expect_own(bad)
    with caplog.at_level(logging.ERROR):
        messages.on_payload(0, bad)
    assert seen == [] and failures == []
    assert "own message failed its checks" in caplog.text
