"""When a Samba client's TRANS3_COMMIT fails: answered, or its connection closed.

Samba's client re-reads its sequence number record from the node's file as
soon as a commit fails, to tell a failed commit from one whose answer was
lost (`ctdb/server/ctdb_transactions.py`). A node that just lost its quorum
may hold there a commit the others never got, and another client may have
committed meanwhile: so the answer waits for the node to serve again (up
to CallTimeout), and if the record then stands where the failed commit
would have put it, the connection is closed instead. These tests run the
handler against a stand-in node whose commit fails and whose serving the
test controls, so the order of the answer and the node's return is exact.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable
from types import SimpleNamespace
from typing import Any

import pytest

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol.ctdb_opcodes import Control
from ctdb.protocol.ctdb_records import LtdbHeader, RecBuffer, RecData
from ctdb.protocol.ctdb_wire import Header, ReqControl
from ctdb.server.ctdb_sessions import CtdbSession
from ctdb.server.ctdb_transactions import CLIENT_SEQNUM_KEY, UnknownOutcome, trans3_commit
from ctdb.storage.ltdb import Record


class LostQuorumNode:
    """What the handler uses of a node whose commit fails for lack of quorum."""

    def __init__(self, *, waits_in_vain: int = 0) -> None:
        self.events: list[str] = []
        self.back = asyncio.Event()
        #: how many of the handler's waits end before the node serves again
        self.waits_in_vain = waits_in_vain
        self.serving = False
        self.transactions = SimpleNamespace(
            begin=lambda db: SimpleNamespace(reads={}, writes={}, db=db)
        )
        self.records = SimpleNamespace(commit=self._commit)
        #: the node's file once it serves again: key -> Record
        self.file: dict[bytes, Record] = {}
        self._db = SimpleNamespace(
            replicated=True, name="p.tdb", local=SimpleNamespace(get=self.file.get)
        )

    async def _commit(self, tx: Any) -> int:
        self.events.append("commit failed")
        raise CtdbError(ErrorCode.NO_QUORUM, "view [0] has no quorum")

    def db(self, db_id: int) -> Any:
        return self._db

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def tunable(self, name: str) -> float:
        assert name == "CallTimeout"
        return 0.01

    async def wait_serving(self, deadline: float) -> None:
        self.events.append("waiting to serve")
        if self.waits_in_vain:
            self.waits_in_vain -= 1
            raise CtdbError(ErrorCode.TIMEOUT, "not serving")
        await self.back.wait()
        self.serving = True
        self.events.append("serving")


def _commit_of_one_record() -> RecBuffer:
    data = LtdbHeader(1, 0, 0).encode() + b"v"
    return RecBuffer(0x3A43C5A8, (RecData(0, b"counter", data),))


def _samba_commit(seqnum_read: int) -> RecBuffer:
    """What `ctdb pstore` sends: its record, and its sequence number record one up."""
    seqnum = LtdbHeader(seqnum_read + 1, 1, 0).encode() + struct.pack("<Q", seqnum_read + 1)
    return RecBuffer(
        0x3A43C5A8,
        (
            RecData(0, b"counter", LtdbHeader(5, 1, 0).encode() + b"156"),
            RecData(0, CLIENT_SEQNUM_KEY, seqnum),
        ),
    )


def _commit(node: LostQuorumNode, buffer: RecBuffer) -> Awaitable[tuple[int, Any]]:
    """The handler's answer to `buffer`, sent through a door of `node`."""
    return trans3_commit(SimpleNamespace(node=node), buffer)  # type: ignore[arg-type]


def test_a_failed_commit_is_answered_once_the_node_serves_again() -> None:
    async def body() -> None:
        node = LostQuorumNode()
        answer = asyncio.ensure_future(_commit(node, _commit_of_one_record()))
        for _ in range(5):
            await asyncio.sleep(0)
        assert node.events == ["commit failed", "waiting to serve"]
        assert not answer.done()  # the client cannot re-read its record yet
        node.back.set()
        with pytest.raises(CtdbError) as failed:
            await answer
        assert failed.value.code is ErrorCode.NO_QUORUM
        assert node.events[-1] == "serving"

    asyncio.run(body())


def test_a_client_that_goes_away_ends_the_wait() -> None:
    async def body() -> None:
        node = LostQuorumNode()
        answer = asyncio.ensure_future(_commit(node, _commit_of_one_record()))
        while node.events.count("waiting to serve") < 1:
            await asyncio.sleep(0.001)
        answer.cancel()  # what the session does when its client disconnects
        with pytest.raises(asyncio.CancelledError):
            await answer
        assert node.events == ["commit failed", "waiting to serve"]

    asyncio.run(body())


def _answer(node: LostQuorumNode, buffer: RecBuffer) -> BaseException:
    """What the handler raises for `buffer`: the node serves again at once,
    unless its `waits_in_vain` says it does not within CallTimeout."""

    async def body() -> BaseException:
        node.back.set()
        try:
            await _commit(node, buffer)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            return exc
        raise AssertionError("the commit succeeded")

    return asyncio.run(body())


def test_a_record_moved_to_where_the_failed_commit_would_put_it_closes_the_connection() -> None:
    """vs chaos seed 1342: node 1 lost its quorum under `ctdb pstore` of 156,
    gave back the client's g_lock, and another client's commit moved the
    sequence number record one up meanwhile. Answered, the client would have
    re-read it and counted its own commit done (it then read 155)."""
    node = LostQuorumNode()
    node.file[CLIENT_SEQNUM_KEY] = Record(41, 0, struct.pack("<Q", 41))  # another's commit
    raised = _answer(node, _samba_commit(seqnum_read=40))
    assert isinstance(raised, UnknownOutcome), raised


def test_a_node_still_out_at_call_timeout_whose_file_holds_the_commit_closes_the_connection() -> (
    None
):
    """The case the first fix of vs seed 1312 left open: a node out of the
    group for longer than CallTimeout still holds in its file the commit it
    applied and failed, which the group's next round may take back."""
    node = LostQuorumNode(waits_in_vain=1)
    node.file[CLIENT_SEQNUM_KEY] = Record(41, 0, struct.pack("<Q", 41))  # its own commit
    raised = _answer(node, _samba_commit(seqnum_read=40))
    assert isinstance(raised, UnknownOutcome), raised
    assert node.events == ["commit failed", "waiting to serve"] and not node.serving


@pytest.mark.parametrize("serves_again", [True, False])
def test_a_record_where_the_client_read_it_gets_the_commits_own_error(
    serves_again: bool,
) -> None:
    node = LostQuorumNode(waits_in_vain=0 if serves_again else 1)
    node.file[CLIENT_SEQNUM_KEY] = Record(40, 0, struct.pack("<Q", 40))  # as the client read it
    raised = _answer(node, _samba_commit(seqnum_read=40))
    assert isinstance(raised, CtdbError) and not isinstance(raised, UnknownOutcome), raised
    assert raised.code is ErrorCode.NO_QUORUM
    assert node.serving is serves_again


class RecordingTransport:
    """The client's end as the session sees it: what was written, whether closed."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return 0


def test_the_session_closes_the_connection_of_an_unknown_outcome_and_answers_nothing() -> None:
    async def body() -> RecordingTransport:
        node = SimpleNamespace(tunable=lambda name: 1 << 20, pnn=0, generation=1)
        server = SimpleNamespace(node=node, failed=lambda opcode, exc: None)
        session = CtdbSession(server)  # type: ignore[arg-type]
        transport = RecordingTransport()
        session.transport = transport  # type: ignore[assignment]

        async def outcome() -> Any:
            raise UnknownOutcome("the record stands where the commit would have put it")

        req = ReqControl(Header(7), Control.TRANS3_COMMIT)
        session._later(req, Header(7), outcome())
        while session.tasks:
            await asyncio.sleep(0)
        return transport

    transport = asyncio.run(body())
    assert transport.closed and not transport.written
