"""When a Samba client's TRANS3_COMMIT fails, the answer waits for the node to serve.

Samba's client re-reads its sequence number record from the node's file as
soon as a commit fails, to tell a failed commit from one whose answer was
lost (`ctdb/server/ctdb_transactions.py`). A node that just lost its quorum
may hold there a commit the others never got; read then, it says
"committed". So the answer waits until the node serves again, however long
that takes. These tests run the handler against a stand-in node whose
commit fails and whose serving the test controls, so the order of the
answer and the node's return is exact.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol.ctdb_records import LtdbHeader, RecBuffer, RecData
from ctdb.server.ctdb_transactions import trans3_commit


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
        self._db = SimpleNamespace(
            replicated=True, name="p.tdb", local=SimpleNamespace(get=lambda key: None)
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


def test_a_failed_commit_is_answered_once_the_node_serves_again() -> None:
    async def body() -> None:
        node = LostQuorumNode()
        answer = asyncio.ensure_future(
            trans3_commit(SimpleNamespace(node=node), _commit_of_one_record())
        )  # type: ignore[arg-type]
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


def test_the_answer_waits_past_call_timeout_until_the_node_serves_again() -> None:
    """A node out of the group for longer than CallTimeout still holds the
    commit in its file: an answer then would be read as "committed" (the
    case the first fix of vs seed 1312 left open)."""

    async def body() -> None:
        node = LostQuorumNode(waits_in_vain=3)
        answer = asyncio.ensure_future(
            trans3_commit(SimpleNamespace(node=node), _commit_of_one_record())
        )  # type: ignore[arg-type]
        while node.events.count("waiting to serve") < 4:  # three in vain, then the last
            assert not answer.done()  # the client cannot re-read its record yet
            await asyncio.sleep(0.001)
        assert node.events == ["commit failed"] + ["waiting to serve"] * 4
        assert not answer.done()
        node.back.set()
        with pytest.raises(CtdbError) as failed:
            await answer
        assert failed.value.code is ErrorCode.NO_QUORUM
        assert node.events[-1] == "serving"

    asyncio.run(body())


def test_a_client_that_goes_away_ends_the_wait() -> None:
    async def body() -> None:
        node = LostQuorumNode(waits_in_vain=1)
        answer = asyncio.ensure_future(
            trans3_commit(SimpleNamespace(node=node), _commit_of_one_record())
        )  # type: ignore[arg-type]
        while node.events.count("waiting to serve") < 2:
            assert not answer.done()
            await asyncio.sleep(0.001)
        answer.cancel()  # what the session does when its client disconnects
        with pytest.raises(asyncio.CancelledError):
            await answer
        assert node.events == ["commit failed", "waiting to serve", "waiting to serve"]

    asyncio.run(body())
