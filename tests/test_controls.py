"""Control requests and replies between nodes (no I/O: the channel on its own)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol import message_codec as codec
from ctdb.protocol import messages as m
from ctdb.server.controls import ControlChannel

LIMITS = codec.wire_limits(["n0", "n1", "n2"])


def channel() -> tuple[ControlChannel, list[tuple[int, m.Message]]]:
    sent: list[tuple[int, m.Message]] = []

    async def drained() -> None:
        pass

    ch = ControlChannel(
        0,
        lambda pnn, msg: sent.append((pnn, msg)),
        LIMITS,
        connected=lambda pnn: pnn in (1, 2),
        drain=drained,
    )
    return ch, sent


async def _asked(op: str = "ping", pnn: int = 1) -> tuple[ControlChannel, Any, int]:
    ch, sent = channel()
    task = ch.call(pnn, op, {}, timeout=5)
    ((target, msg),) = sent  # sent at once, not on the loop's next turn
    assert target == pnn and isinstance(msg, m.Control)
    return ch, task, msg.reqid


def test_a_reply_from_a_node_that_was_not_asked_is_ignored() -> None:
    async def scenario() -> None:
        ch, task, reqid = await _asked("ping", 1)
        ch.on_reply(2, m.ControlReply(reqid, int(ErrorCode.IO), "forged"))  # node 2 was not asked
        await asyncio.sleep(0)
        assert not task.done()
        ch.on_reply(1, m.ControlReply(reqid, 0, 1))
        assert await task == 1

    asyncio.run(scenario())


def test_a_reply_to_a_request_that_does_not_exist_is_ignored() -> None:
    async def scenario() -> None:
        ch, task, reqid = await _asked()
        ch.on_reply(1, m.ControlReply(reqid + 1, 0, 1))
        ch.on_reply(1, m.ControlReply(2**64 - 1, 0, {"anything": b"at all"}))
        assert not task.done()
        ch.on_reply(1, m.ControlReply(reqid, 0, 1))
        assert await task == 1
        ch.on_reply(1, m.ControlReply(reqid, 0, 1))  # a duplicate, after the call ended

    asyncio.run(scenario())


def test_a_malformed_result_fails_the_call_and_is_a_protocol_violation() -> None:
    async def scenario() -> None:
        ch, task, reqid = await _asked("freeze")
        with pytest.raises(codec.DecodeError, match="reply to freeze"):
            ch.on_reply(1, m.ControlReply(reqid, 0, {"epoch": "three"}))
        with pytest.raises(CtdbError) as info:
            await task
        assert info.value.code == ErrorCode.PROTOCOL and "node 1" in info.value.message

    asyncio.run(scenario())


def test_an_error_reply_raises_its_code() -> None:
    async def scenario() -> None:
        ch, task, reqid = await _asked("getdbseqnum")
        ch.on_reply(1, m.ControlReply(reqid, int(ErrorCode.NOT_FOUND), "no such database"))
        with pytest.raises(CtdbError) as info:
            await task
        assert info.value.code == ErrorCode.NOT_FOUND and info.value.message == "no such database"

    asyncio.run(scenario())


def test_a_call_without_a_reply_times_out_and_leaves_nothing_pending() -> None:
    async def scenario() -> None:
        ch, _ = channel()
        with pytest.raises(CtdbError) as info:
            await ch.call(1, "ping", {}, timeout=0.05)
        assert info.value.code == ErrorCode.TIMEOUT
        assert not ch._pending

    asyncio.run(scenario())


def test_a_call_given_up_by_its_caller_leaves_nothing_pending() -> None:
    async def scenario() -> None:
        ch, task, reqid = await _asked()
        waiter = asyncio.ensure_future(asyncio.wait_for(task, 0.01))
        with pytest.raises(TimeoutError):
            await waiter
        await asyncio.sleep(0)  # the future's done callbacks run on the next turn
        assert task.cancelled() and not ch._pending
        ch.on_reply(1, m.ControlReply(reqid, 0, 1))  # too late: ignored

    asyncio.run(scenario())


def test_a_control_that_cannot_be_sent_leaves_nothing_pending() -> None:
    async def scenario() -> None:
        def refuses(pnn: int, msg: m.Message) -> None:
            raise CtdbError(ErrorCode.DISCONNECTED, "link gone")

        ch, _ = channel()
        ch._send = refuses
        with pytest.raises(CtdbError):
            ch.call(1, "ping", {})
        await asyncio.sleep(0)
        assert not ch._pending

    asyncio.run(scenario())


# -- the answering end ---------------------------------------------------------------------


def test_the_answering_end_replies_with_the_result_or_the_error_code() -> None:
    async def fails(src: int, args: dict[str, Any]) -> None:
        raise CtdbError(ErrorCode.BUSY, f"busy for node {src}")

    def breaks(src: int, args: dict[str, Any]) -> None:
        raise ZeroDivisionError("a bug in a handler")

    async def scenario() -> None:
        ch, _ = channel()
        ch.handlers = {"pnn": lambda src, args: 0, "fails": fails, "breaks": breaks}
        assert await ch.reply_to(2, m.Control(7, "pnn", {})) == m.ControlReply(7, 0, 0)
        reply = await ch.reply_to(2, m.Control(8, "fails", {}))
        assert reply == m.ControlReply(8, int(ErrorCode.BUSY), "busy for node 2")
        reply = await ch.reply_to(2, m.Control(9, "breaks", {}))
        assert reply.code == ErrorCode.IO and "ZeroDivisionError" in reply.result
        reply = await ch.reply_to(2, m.Control(10, "nonesuch", {}))
        assert reply.code == ErrorCode.NOT_SUPPORTED and "nonesuch" in reply.result

    asyncio.run(scenario())


def test_a_control_a_node_sends_itself_is_bounded_and_fails_as_a_remote_one() -> None:
    async def hangs(src: int, args: dict[str, Any]) -> None:
        await asyncio.Event().wait()

    def breaks(src: int, args: dict[str, Any]) -> None:
        raise ZeroDivisionError("a bug in a handler")

    async def scenario() -> None:
        ch, sent = channel()
        ch.handlers = {"pnn": lambda src, args: src, "hangs": hangs, "breaks": breaks}
        assert await ch.run(0, "pnn", {}, timeout=1) == 0  # answered as sent by node 0
        with pytest.raises(CtdbError) as info:
            await ch.run(0, "hangs", {}, timeout=0.05)
        assert info.value.code == ErrorCode.TIMEOUT
        with pytest.raises(CtdbError) as info:
            await ch.run(0, "breaks", {}, timeout=1)
        assert info.value.code == ErrorCode.IO
        with pytest.raises(CtdbError) as info:
            await ch.run(0, "nonesuch", {}, timeout=1)
        assert info.value.code == ErrorCode.NOT_SUPPORTED
        assert not sent  # nothing went over the network

    asyncio.run(scenario())
