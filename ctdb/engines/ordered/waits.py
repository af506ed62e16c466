"""What the ordered engine's client flows wait for, and how the loop waits for it.

A client's operation (engine.py, reads.py) is a flow (`ctdb.engines.flows`):
it decides and sends, then yields what it waits for: this node to serve
(`Serving`), an answer (`waiting.Answer`: its operation delivered, its lock
granted, a write stable, a read barrier delivered), the chain lock of a
record in a file Samba's clients share (`Chain`, or `AllChains` for a
traverse), other members' replies (`Controls`), a job others wait for too
(`Joined`: a record's lending) or a pause (`Pause`).
Lending records to Samba's clients (samba_grants.py, samba_returns.py)
is made of flows too. The parts that answer (requests, local_clients,
stability, barriers) need no loop, so a test resumes a flow by hand once
the group delivered what it sent (`tests/test_ordered_flows.py`);
`carry_out` waits on the event loop.

The effects both engines' flows wait for are in `ctdb.engines.effects`,
which says why a chain lock is polled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines import controls
from ctdb.engines.chains import poll, wait_in_queue
from ctdb.engines.controls import Controls
from ctdb.engines.effects import AllChains, Chain, Pause, Serving
from ctdb.engines.flows import Flow
from ctdb.engines.waiting import Answer, Waiting
from ctdb.storage.database import Database
from ctdb.storage.ltdb import Record, live_value

if TYPE_CHECKING:
    from ctdb.engines.host import Host


class Job(Protocol):
    """A flow running on its own (what `asyncio.Task` offers of it)."""

    def done(self) -> bool: ...

    def cancelled(self) -> bool: ...

    def exception(self) -> BaseException | None: ...

    def cancel(self) -> bool: ...

    def add_done_callback(self, fn: Callable[[Any], object]) -> None: ...


@dataclass(slots=True)
class Joined:
    """`job` done (a record's lending, which every call for the record
    waits for): its error raised, TIMEOUT (`what`) at `deadline`. Leaving
    cancels nothing: the job is the other callers' too."""

    job: Job
    deadline: float
    what: str


Effect = Serving | Answer | Chain | AllChains | Controls | Joined | Pause


def read(db: Database, key: bytes, deadline: float) -> Flow[Effect, bytes | None]:
    """Our copy's value (see `read_record`)."""
    if not db.shared:
        return live_value(db.local.get(key))
    return live_value((yield from read_record(db, key, deadline)))


def read_record(db: Database, key: bytes, deadline: float) -> Flow[Effect, Record | None]:
    """Our copy of the record: at once from a file of our own, under the
    record's chain from a shared one."""
    if not db.shared:
        return db.local.get(key)
    if not (yield Chain(db, key, deadline)):
        raise CtdbError(ErrorCode.TIMEOUT, f"a Samba client kept the record {key!r} locked")
    try:
        return db.local.get(key)
    finally:
        db.local.unlock_chain(key)


def carry_out(node: Host, effect: Effect) -> Awaitable[Any]:
    """What the loop awaits for `effect`. A plain function, not a coroutine
    of its own around it: every ordered request waits through here."""
    if isinstance(effect, Answer):
        return Waiting.until(effect.wait, effect.deadline, effect.what)
    if isinstance(effect, Serving):
        return node.wait_serving(effect.deadline)
    if isinstance(effect, Chain):
        db, key = effect.db, effect.key
        if effect.queue:
            return wait_in_queue(db.local, key, effect.deadline)
        return poll(lambda: db.local.try_lock_chain(key), effect.deadline)
    if isinstance(effect, AllChains):
        return poll(effect.db.local.try_lock_all, effect.deadline)
    if isinstance(effect, Controls):
        return controls.send(node, effect)
    if isinstance(effect, Joined):
        return _joined(node, effect)
    return asyncio.sleep(effect.seconds)


async def _joined(node: Host, effect: Joined) -> None:
    job = cast("asyncio.Future[None]", effect.job)  # (on the event loop, a job is a task)
    try:
        return await asyncio.wait_for(asyncio.shield(job), max(effect.deadline - node.now(), 0))
    except TimeoutError:
        raise CtdbError(ErrorCode.TIMEOUT, effect.what) from None
