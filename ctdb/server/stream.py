"""A node on a virtually synchronous transport: the ordered stream agrees on everything.

Every member applies the same stream (`ctdb.engines.ordered`), in which view
changes, forced recoveries and flag changes all have one position. So the
generation, the vnnmap, the leader and every member's flags are derived
from the stream alike on every member, with no leader's recovery and no
lease; a member that cannot follow (a failed write) leaves the group and
rejoins through a state transfer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from ctdb.engines.chains import poll
from ctdb.engines.merge import to_wire
from ctdb.engines.ordered import samba_views
from ctdb.engines.ordered.engine import OrderedEngine
from ctdb.protocol.messages import (
    Call,
    DmasterReply,
    DmasterRequest,
    Message,
    Ordered,
    RemoteCall,
    RemoteCallReply,
)
from ctdb.server.node_messages import Route
from ctdb.server.state import INACTIVE, ControlHandler, RecoveryMode, control_handlers
from transport.base import TransportError, View

if TYPE_CHECKING:
    from ctdb.server.membership import ServerNode

log = logging.getLogger("ctdb.server.stream")

#: Seconds between attempts to join the group again after a resync's join failed.
REJOIN_RETRY = 1.0
#: A node whose disk keeps failing (full, or broken) fails every state
#: transfer it is given, and rejoined at once it asked a donor for its whole
#: copy again and again: every 0.4 s with chaos's databases (vs seed 1630),
#: 181 times in 10 s with small ones, every few milliseconds on the
#: simulated network. Each costs the group a snapshot. So a rejoin that
#: follows a failed local write within `REJOIN_CALM` seconds of the last
#: join waits first, twice as long each time, from `REJOIN_BACKOFF_FIRST`
#: up to `REJOIN_BACKOFF_MAX`. The cap stays short: once the disk has room
#: again the node must serve within seconds (the simulator's liveness rule
#: allows 3 s), and a wait is spent out of the group, serving nothing.
REJOIN_BACKOFF_FIRST = 0.05
REJOIN_BACKOFF_MAX = 1.5
REJOIN_CALM = 10.0


class StreamMembership:
    records_in_place = False
    refused: Mapping[type[Message], str] = dict.fromkeys(
        (Call, DmasterRequest, DmasterReply, RemoteCall, RemoteCallReply),
        "a record migration on a virtually synchronous cluster",
    )

    def __init__(self, node: ServerNode) -> None:
        self.node = node
        self.engine = OrderedEngine(node, self)
        engine = self.engine
        self.routes: Mapping[type[Message], Route] = {
            Ordered: lambda _src, msg: engine.on_ordered(msg)
        }
        #: the task leaving and rejoining the group, and whether another
        #: resync was asked for while it ran (see `rejoin`)
        self._rejoining: asyncio.Task[None] | None = None
        self._rejoin_again = False
        #: when our last rejoin had joined, and what the next one waits
        #: if it follows a failed write soon after (`REJOIN_BACKOFF_FIRST`)
        self._rejoined_at: float | None = None
        self._rejoin_backoff = 0.0

    def controls(self) -> dict[str, ControlHandler]:
        return control_handlers(self)

    async def ctl_lent(self, src: int, args: dict[str, Any]) -> list[Any]:
        """The records of a database lent to our Samba clients (a traverse elsewhere)."""
        node = self.node
        deadline = asyncio.get_running_loop().time() + node.tunable("CallTimeout")
        db = node.db(int(args["db_id"]))
        return to_wire(
            await self.engine.run(samba_views.lent_records(self.engine.samba, db, deadline))
        )

    def background(self) -> list[Coroutine[Any, Any, None]]:
        return []

    async def stop(self) -> None:
        self.engine.gate.clear()  # events waiting for a client's chain: never handled
        self.engine.samba.stop()
        if self._rejoining is not None:
            self._rejoining.cancel()
            try:
                await self._rejoining
            except (asyncio.CancelledError, Exception):
                pass

    async def _taken_back(self) -> None:
        """Stay in the group until no record in our shared files names us.

        The resync revoked what was lent to Samba's clients, but a record
        whose chain a client holds goes back only once the client lets go
        (`samba_returns`): until then that client works on it in place, and
        reads our other files under it (a g_lock lent here covers `ctdb
        pfetch`'s read of our persistent copy), and before the helper that
        queues for us (`chains.wait_in_queue`) so did clients queued on the
        chain. While we stay, every write we did not apply waits for us to
        say we applied it (`Stability`), so what they read is all that has
        been acknowledged; once we leave, the others acknowledge without
        us. (chaos vs seed 11, in CI: node 1's disk filled, it left at
        once, and `ctdb pfetch` on it then read a value 11 commits old.)
        A client that keeps its chain past RecoverTimeout does not keep
        the whole cluster waiting: we leave without it, and say so.
        """
        samba = self.engine.samba
        if not samba.restoring:
            return
        deadline = self.node.now() + self.node.tunable("RecoverTimeout")
        if not await poll(lambda: not samba.restoring, deadline):
            log.warning(
                "leaving the group with %d records still lent to Samba's clients, "
                "whose chains they hold: they may read copies the others moved past",
                len(samba.restoring),
            )

    def confirmed(self) -> bool:
        """The stream says whether we serve (`on_ordered_state`); the transport,
        whether we may have been expelled without knowing it yet (a stopped
        process that resumes answers nothing from its copy until it knows:
        `tools.chaos --netns`, vs seed 503, read a persistent counter 31
        commits old on a node resumed after a 1 s SIGSTOP).

        The lease is the transport's, the state the engine's: they match only
        while the engine has applied every view the transport reported. A
        view change waits in the stream gate while Samba's clients hold
        chains, and meanwhile an expelled transport may have joined again
        and renewed its lease, for a group that moved on without us (the
        chaos test, vs seed 11, read a counter 357 commits old so)."""
        if self.engine.view is not self.node.transport.view:  # it applies the very View reported
            return False
        return self.node.now() < self.confirmed_until()

    def confirmed_until(self) -> float:
        until = self.node.transport.confirmed_until()
        return math.inf if until is None else until

    def on_view(self, view: View) -> None:
        self.node.frozen_at = time.monotonic()  # a recovery begins at every view change
        self.engine.on_view(view)

    def local_failure(self) -> None:
        self.engine.resync("a local write failed")

    def owed_back(self) -> bool:
        return self.engine.samba.owed_back

    async def given_back(self, deadline: float) -> None:
        await self.engine.samba.given_back(deadline)

    def peer_flags(self, pnn: int) -> int:
        return self.engine.flags.get(pnn, 0)  # agreed through the ordered stream

    def in_place_until(self) -> float:
        return 0.0  # every write enters the ordered stream: never in place

    def in_place_changed(self) -> None:
        pass  # Samba's clients write in place only what is lent (samba_grants)

    def flags_changed(self, old: int, new: int) -> None:
        self.engine.announce_flags(new)

    async def vacuum(self) -> None:
        self.engine.vacuum()

    async def recover(self) -> None:
        """Replicas cannot diverge: a forced recovery is an ordered marker that
        starts a new generation when it is delivered."""
        await self.engine.recover()

    def request_recovery(self) -> None:
        """Nothing to ask: the view change that any change of membership brings
        is a recovery already, at the same position on every member."""

    def force_recovery(self) -> None:
        """Nothing to force: a commit is one ordered operation, and a member
        whose apply fails leaves and rejoins by state transfer (`local_failure`)."""

    # -- what the ordered engine tells us ---------------------------------------------

    def on_ordered_state(self) -> None:
        """The ordered engine changed sync/quorum state: mirror it in CTDB's terms."""
        node, engine = self.node, self.engine
        view = engine.view
        # Agreed by every member: the view plus the forced recoveries since.
        generation = (view.view_id << 16) + engine.recoveries
        if engine.serving:
            if node.recovery_mode is RecoveryMode.RECOVERY or generation != node.generation:
                # A view change or forced recovery completed: what CTDB calls
                # a recovery. It began at the view change that started this
                # view (`on_view`) or, for a marker in the stream (forced
                # recover, flags), took no time beyond its delivery.
                marker = (
                    node.recovery_mode is RecoveryMode.NORMAL
                    and generation >> 16 == node.generation >> 16
                )
                began = time.monotonic() if marker else node.frozen_at
                node.last_recovery = {
                    "duration": time.monotonic() - began,
                    "finished": time.time(),
                }
            members = engine.members
            node.vnnmap = [p for p in members if not node.node_flags(p) & INACTIVE]
            node.leader = members[0]
            node.recovery_mode = RecoveryMode.NORMAL
            node.serving_event.set()
        elif node.recovery_mode is RecoveryMode.NORMAL:
            node.frozen_at = time.monotonic()
            node.recovery_mode = RecoveryMode.RECOVERY
            node.serving_event.clear()
        node.generation = generation
        node.liveness.announce()
        # Whether Samba's clients may go on using what is lent to them.
        engine.samba.after_apply()

    def fence_owners(self) -> None:
        self.node.owners.fence_all()

    def rejoin(self) -> None:
        """Our replica cannot follow the stream: leave the group, rejoin, resync.

        One rejoin at a time: overlapping leaves and joins of one group
        member would interleave. A resync asked for while one runs leaves
        and joins once more, so the others see it in a view change.
        """
        self._rejoin_again = True
        if self._rejoining is None or self._rejoining.done():
            self._rejoining = asyncio.get_running_loop().create_task(self._rejoin())
            self._rejoining.add_done_callback(self._rejoin_ended)

    def _rejoin_ended(self, task: asyncio.Task[None]) -> None:
        """A rejoin that failed leaves the node out of the group for good,
        serving nothing, and nobody asks it back: only a bug does that (a
        join corosync refuses is tried again), so the node stops."""
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.node.fail("rejoining the group", exc)

    async def _rejoin(self) -> None:
        transport = self.node.transport
        while self._rejoin_again:
            self._rejoin_again = False
            await self._taken_back()
            await transport.stop()
            # A view change needs every file Samba's clients share held
            # whole (`stream_gate`): while a client holds a chain, stay out
            # rather than stall a group that waits for what we apply.
            if not self.engine.gate.files_free():
                log.warning("waiting for Samba's clients to let go of their chains to rejoin")
                while not self.engine.gate.files_free():
                    await asyncio.sleep(REJOIN_RETRY)
            await self._back_off()
            # Out of the group, a node serves nothing and nobody will ask it
            # back: a join that fails (corosync restarting) is tried again.
            while True:
                try:
                    await transport.start()
                    break
                except TransportError as exc:
                    log.warning("joining the group again failed: %s; retrying", exc)
                    await asyncio.sleep(REJOIN_RETRY)
            self._rejoined_at = self.node.now()

    async def _back_off(self) -> None:
        """Wait before rejoining if our last rejoin, lately, ended in a failed write too."""
        since = None if self._rejoined_at is None else self.node.now() - self._rejoined_at
        if not self.engine.damaged or since is None or since >= REJOIN_CALM:
            self._rejoin_backoff = 0.0
            return
        self._rejoin_backoff = min(
            max(2 * self._rejoin_backoff, REJOIN_BACKOFF_FIRST), REJOIN_BACKOFF_MAX
        )
        log.warning(
            "rejoining the group in %.2fs: a local write failed again %.1fs after the last rejoin",
            self._rejoin_backoff,
            since,
        )
        await asyncio.sleep(self._rejoin_backoff)
