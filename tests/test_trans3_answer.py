"""When a Samba client's TRANS3_COMMIT fails, the answer waits for the node to serve.

Samba's client re-reads its sequence number record from the node's file as
soon as a commit fails, to tell a failed commit from one whose answer was
lost (`ctdb/server/ctdb_transactions.py`). A node that just lost its quorum
may hold there a commit the others never got; read then, it says
"committed". These tests run the handler against a stand-in node whose
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

    def __init__(self, *, comes_back: bool) -> None:
        self.events: list[str] = []
        self.back = asyncio.Event()
        self.comes_back = comes_back
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
        return 5.0

    async def wait_serving(self, deadline: float) -> None:
        self.events.append("waiting to serve")
        if not self.comes_back:
            raise CtdbError(ErrorCode.TIMEOUT, "not serving")
        await self.back.wait()
        self.events.append("serving")


def _commit_of_one_record() -> RecBuffer:
    data = LtdbHeader(1, 0, 0).encode() + b"v"
    return RecBuffer(0x3A43C5A8, (RecData(0, b"counter", data),))


def test_a_failed_commit_is_answered_once_the_node_serves_again() -> None:
    async def body() -> None:
        node = LostQuorumNode(comes_back=True)
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


def test_a_node_that_does_not_serve_again_in_time_answers_the_commits_own_error() -> None:
    async def body() -> None:
        node = LostQuorumNode(comes_back=False)
        with pytest.raises(CtdbError) as failed:
            door: Any = SimpleNamespace(node=node)
            await trans3_commit(door, _commit_of_one_record())
        assert failed.value.code is ErrorCode.NO_QUORUM
        assert node.events == ["commit failed", "waiting to serve"]

    asyncio.run(body())
