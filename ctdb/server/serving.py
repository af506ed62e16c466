"""Waiting for a node to serve, and reading its local copy only when that is safe.

A node answers requests only while it serves (`Node.serving`: recovery mode
NORMAL, not stopped or banned, and on tcp while its lease holds). A request
that finds it not serving waits, up to its deadline, as CTDB's clients do
through a recovery; with WaitForQuorum = 0 it fails at once instead, with an
error that says why (`not_serving_error`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.base import RecordEngine
from ctdb.server.state import INACTIVE, NodeFlags, RecoveryMode
from ctdb.storage.database import Database


class ServingHost(Protocol):
    pnn: int
    flags: int
    recovery_mode: RecoveryMode
    #: set while recovery_mode is NORMAL
    serving_event: asyncio.Event
    records: RecordEngine

    @property
    def serving(self) -> bool: ...

    def tunable(self, name: str) -> float: ...

    def have_quorum(self) -> bool: ...

    def publish_serving(self) -> None: ...


async def wait_serving(node: ServingHost, deadline: float) -> None:
    """Wait until `node` serves, or fail at once when WaitForQuorum is 0."""
    loop = asyncio.get_running_loop()
    while not node.serving:
        remaining = deadline - loop.time()
        if not node.tunable("WaitForQuorum") or remaining <= 0:
            raise not_serving_error(node)
        if node.serving_event.is_set():
            # NORMAL mode but inactive by our own flags (stopped, banned).
            await asyncio.sleep(min(0.05, remaining))
            continue
        try:
            await asyncio.wait_for(node.serving_event.wait(), remaining)
        except TimeoutError:
            raise not_serving_error(node) from None


async def share(node: ServingHost, db: Database) -> None:
    """A client in another process may open `db`'s file from now on (Samba's,
    or ours using records in place): the engine takes its chain locks from
    here (`Database.shared`). Not during a recovery, whose freeze did not
    hold the file whole: as ctdbd defers an attach then, the reply waits for
    the recovery to end."""
    if db.shared or db.replicated:
        return
    if node.recovery_mode is not RecoveryMode.NORMAL:
        await wait_serving(node, asyncio.get_running_loop().time() + node.tunable("CallTimeout"))
    db.shared = True
    node.publish_serving()  # held too if in-place use has ended (`frozen_files.InPlaceGuard`)


def not_serving_error(node: ServingHost) -> CtdbError:
    if node.flags & INACTIVE:
        state = NodeFlags.describe(node.flags & INACTIVE)
        return CtdbError(ErrorCode.RETRY, f"node {node.pnn} is {state}: not serving")
    if not node.have_quorum():
        return CtdbError(
            ErrorCode.NO_QUORUM,
            f"node {node.pnn} is in a partition without quorum: writes are refused",
        )
    if node.recovery_mode is RecoveryMode.NORMAL:
        return CtdbError(
            ErrorCode.RETRY,
            f"node {node.pnn} has not heard lately that the cluster still counts it in: "
            "not serving until it does",
        )
    return CtdbError(ErrorCode.RETRY, "recovery in progress: retry")


def read_local(node: ServingHost, db: Database, key: bytes, read: Callable[[], Any]) -> Any:
    """Run `read` of the local copy (persistent data): not while a recovery rewrites
    it, nor while the key's latest write may still be taken back (see
    RecordEngine.settled). Returns its result, or an awaitable of it."""
    if node.serving and node.records.settled(db, key):
        return read()

    async def when_settled() -> Any:
        loop = asyncio.get_running_loop()
        await node.records.settle(db, key, loop.time() + node.tunable("CallTimeout"))
        return read()

    return when_settled()
