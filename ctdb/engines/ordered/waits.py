"""What the ordered engine's client flows wait for, and how the loop waits for it.

A client's operation (engine.py, reads.py) is a flow (`ctdb.engines.flows`):
it decides and sends, then yields what it waits for: this node to serve
(`Serving`), an answer (`waiting.Answer`: its operation delivered, its lock
granted, a write stable, a read barrier delivered) or a record of a file
Samba's clients share (`SharedRead`, under the record's chain lock). The
parts that answer (requests, local_clients, stability, barriers) need no
loop, so a test resumes a flow by hand once the group delivered what it
sent (`tests/test_ordered_flows.py`); `carry_out` waits on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ctdb.engines.flows import Flow
from ctdb.engines.ordered.stream_gate import read_value
from ctdb.engines.waiting import Answer, Waiting
from ctdb.storage.database import Database
from ctdb.storage.ltdb import live_value

if TYPE_CHECKING:
    from ctdb.engines.host import Host


@dataclass(frozen=True)
class Serving:
    """This node serves again (a round ended, quorum came back), or an
    error at `deadline` (`Host.wait_serving`)."""

    deadline: float


@dataclass(frozen=True)
class SharedRead:
    """Our copy's value of a record in a file Samba's clients share: read
    under its chain lock, which a client may hold for a while."""

    db: Database
    key: bytes
    deadline: float


Effect = Serving | Answer | SharedRead


def serving(node: Host, deadline: float) -> Flow[Effect, None]:
    """Go on once this node serves."""
    if not node.serving:
        yield Serving(deadline)


def read(db: Database, key: bytes, deadline: float) -> Flow[Effect, bytes | None]:
    """Our copy's value: at once from a file of our own."""
    if not db.shared:
        return live_value(db.local.get(key))
    value: bytes | None = yield SharedRead(db, key, deadline)
    return value


async def carry_out(node: Host, effect: Effect) -> Any:
    if isinstance(effect, Answer):
        return await Waiting.until(effect.wait, effect.deadline, effect.what)
    if isinstance(effect, Serving):
        return await node.wait_serving(effect.deadline)
    return await read_value(effect.db, effect.key, effect.deadline)
