"""What an engine needs of the node it runs in.

The engines sit below the daemon: the node's membership (`ctdb.server.leader`
on tcp, `ctdb.server.stream` on vs) creates them and hands the node
(`ctdb.server.node.Node`) in, and they call back into it (send a message, run a control
on a peer, wait until the node serves). Naming that surface here, as a
typing Protocol, keeps the dependency one-way (engines never import the
server: see the import-linter contracts in pyproject.toml) and says in one
place what an engine may touch; `Node` satisfies it structurally, which
mypy checks where the engines are built.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ctdb.protocol.messages import Message
from ctdb.storage.database import Database, DbKind
from ctdb.storage.durable import Epochs
from transport.base import Transport


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """The event loop's clock and timers, as an engine's parts use them: the
    daemon's loop, the simulator's virtual one, or a test's hand-driven clock."""

    def now(self) -> float: ...

    def call_later(
        self, delay: float, callback: Callable[..., object], *args: Any
    ) -> Cancellable: ...

    def call_soon(self, callback: Callable[..., object], *args: Any) -> object: ...


class Host(Clock, Protocol):
    pnn: int
    nodes: list[str]
    #: the recoveries (tcp) or quorate views (vs) this node took part in, and
    #: which run of the daemon this is (durable; see merge)
    epochs: Epochs
    generation: int
    leader: int
    vnnmap: list[int]
    #: this node's own administrative flags (ctdb.server.state.NodeFlags)
    flags: int
    stats: Counter[str]
    transport: Transport
    #: runs a blocking function off the event loop (a thread; inline in the simulator)
    offload: Callable[[Callable[[], Any]], Awaitable[Any]]

    @property
    def dbs(self) -> dict[int, Database]:
        """Every database this node has attached, by id."""
        ...

    @property
    def serving(self) -> bool: ...

    def serving_until(self) -> float:
        """Until when `serving` may hold without news from the others (the
        lease: a stalled ring, a stopped transport); inf: no such end."""

    def tunable(self, name: str) -> float: ...

    def in_generation(self, generation: int) -> bool: ...

    def send(self, pnn: int, msg: Message) -> None: ...

    def broadcast(self, msg: Message, to: int | None = None) -> None:
        """Through the transport (vs: in the agreed order) to every member, or to `to`."""

    async def control(
        self, pnn: int, op: str, args: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any: ...

    async def wait_serving(self, deadline: float) -> None: ...

    def attach(self, name: str, kind: DbKind) -> Database: ...

    async def attach_everywhere(self, name: str, kind: DbKind) -> Database: ...

    def db(self, dbid: int) -> Database: ...

    def db_by_name(self, name: str) -> Database: ...

    def force_recovery(self) -> None:
        """Recover although the membership looks unchanged (see Membership)."""

    def local_failure(self) -> None:
        """A local write failed half-way (I/O error, disk full): our copies are suspect."""

    def entry_head(self, owner: tuple[int, int], db_id: int, key: bytes) -> None:
        """Tell `owner` (pnn, client id) its entry is now first in the record's list."""
