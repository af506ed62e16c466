"""What differs between a tcp and a vs node, behind one interface.

A node on a point-to-point transport (`ctdb.server.leader`) keeps replicas
apart and heals them by recovery: a leader freezes every member, merges
their copies and thaws them into a new generation, and a lease tells a
member that it may still serve. A node on a virtually synchronous
transport (`ctdb.server.stream`) applies one ordered stream that every
member shares, so the stream itself agrees on generations, flags and state
transfers. `ctdb.server.node.Node` holds one `Membership` and never asks
which kind it is.

The parts of the daemon see the node through `ServerNode`, a typing
Protocol as `ctdb.engines.host.Host` is for the engines: `node.py` imports
the parts, so they must not import it back (no import cycles, see the
import-linter contracts in pyproject.toml).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, Protocol

from ctdb.common.errors import CtdbError
from ctdb.engines.base import RecordEngine
from ctdb.engines.host import Host
from ctdb.engines.transactions import TransactionEngine
from ctdb.protocol.messages import Message
from ctdb.server.liveness import Liveness
from ctdb.server.lockfile import ClusterLockFile
from ctdb.server.node_messages import NodeMessages, Route
from ctdb.server.owners import Owners
from ctdb.server.state import ControlHandler, RecoveryMode
from transport.base import View

log = logging.getLogger("ctdb.server.membership")


class Membership(Protocol):
    @property
    def engine(self) -> RecordEngine:
        """The record engine this kind of cluster runs."""

    def controls(self) -> dict[str, ControlHandler]:
        """The controls only this kind of cluster answers (a tcp recovery's steps)."""

    def background(self) -> list[Coroutine[Any, Any, None]]:
        """Loops that run as long as the node does."""

    async def stop(self) -> None:
        """The node stops: end what runs beside the loops, before the databases close."""

    def confirmed(self) -> bool:
        """Whether the rest of the cluster still counts on us serving (tcp: the lease)."""

    def confirmed_until(self) -> float:
        """Until when (loop clock) `confirmed` holds unless we hear from the
        others: the lease's end (inf: no end)."""

    #: Whether clients may use records in place (`in_place_until`): tcp only.
    records_in_place: bool
    #: Engine messages this kind of cluster never sends, by class, and why
    #: they are refused (the sender breaks the protocol).
    refused: Mapping[type[Message], str]

    #: Who answers the engine messages (migration or ordered) of this kind of cluster.
    routes: Mapping[type[Message], Route]

    def on_view(self, view: View) -> None:
        """The transport's view changed."""

    def local_failure(self) -> None:
        """A local write failed half-way: our copies are suspect."""

    def peer_flags(self, pnn: int) -> int:
        """A connected peer's administrative flags, as this kind of cluster knows them."""

    def in_place_until(self) -> float:
        """Until when (loop clock) clients may use this node's records in place
        (`ctdb.protocol.serving_state`): 0 when they may not."""

    def in_place_changed(self) -> None:
        """`in_place_until` may have changed: Samba's clients, who cannot be
        told, must follow it too (tcp: `frozen_files.InPlaceGuard`)."""

    def flags_changed(self, old: int, new: int) -> None:
        """Our own administrative flags changed."""

    def owed_back(self) -> bool:
        """Samba's clients may still work in place on records this node no
        longer serves: answering them could let one on to a copy the others
        moved past (`ctdb_sessions.CtdbSession` holds their requests back)."""

    async def given_back(self, deadline: float) -> None:
        """Once nothing is owed back (`owed_back`), or at `deadline` (loop clock)."""

    async def vacuum(self) -> None:
        """One vacuuming round: remove deletion markers nobody can need any more."""

    async def recover(self) -> None:
        """A forced recovery (`ctdbtool recover`): return once it has finished."""

    def request_recovery(self) -> None:
        """Something changed that a recovery must take into account."""

    def force_recovery(self) -> None:
        """Recover although the membership looks unchanged: a commit that some
        members may lack (`TransactionEngine.coordinate`). Does not wait."""


async def vacuum_rounds(membership: Membership, interval: Callable[[], float]) -> None:
    """Deletion markers are removed once no node can undo their delete: a round
    every VacuumInterval, for as long as the node runs."""
    while True:
        await asyncio.sleep(interval())
        try:
            await membership.vacuum()
        except CtdbError as exc:
            log.info("vacuum deferred: %s", exc)
        except Exception:  # a failed delete leaves the marker: the next round retries
            log.exception("vacuum round failed")


class ServerNode(Host, Protocol):
    """What the parts of the daemon use of `ctdb.server.node.Node`, beyond `Host`."""

    membership: Membership
    recovery_mode: RecoveryMode
    #: set while recovery_mode is NORMAL
    serving_event: asyncio.Event
    #: when the recovery in progress (or the last one) began
    frozen_at: float
    last_recovery: dict[str, float]
    started: float
    tunables: dict[str, float]
    nodes_file: Path | None
    transactions: TransactionEngine
    liveness: Liveness
    lock_file: ClusterLockFile | None
    #: entry owners (conditional append): who to fence after we were left out
    owners: Owners
    rng: random.Random
    shutdown_requested: asyncio.Event
    #: what other nodes send, routed (`Node.messages`)
    messages: NodeMessages

    def node_flags(self, pnn: int) -> int: ...

    def active_members(self) -> list[int]: ...

    def have_quorum(self) -> bool: ...

    def set_flags(self, set_bits: int = 0, clear_bits: int = 0) -> None: ...

    def fail(self, what: str, exc: BaseException | None) -> None:
        """A part of the node failed in a way only a bug explains: stop it."""

    def publish_serving(self) -> None: ...
