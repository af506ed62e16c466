"""The stream's side of the ordered engine: every delivered operation and view
change handled in the stream's order (under the chains it touches: the
gate), what applying leaves this node to do (answer a grant, mark a write
unstable, tell an entry's owner it is first), and leaving the group when
this replica can no longer follow.

A mixin of `OrderedEngine` (engine.py: the client side), as the tcp engine
keeps its message half (`migration_messages`) apart from its waiting half.
Nothing here waits: it runs inside the transport's delivery callback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ctdb.common.errors import CtdbError, ErrorCode, log_failure
from ctdb.engines.ordered.local_clients import LocalClients
from ctdb.engines.ordered.locks import Owner
from ctdb.engines.ordered.replica import FirstEntry, Replica, Written
from ctdb.engines.ordered.requests import Requests
from ctdb.engines.ordered.rounds import ROUND_OPS, Rounds, StreamListener
from ctdb.engines.ordered.samba_grants import SambaGrants
from ctdb.engines.ordered.stability import STABLE_OPS, Stability
from ctdb.engines.ordered.stream_gate import StreamGate
from ctdb.protocol.messages import Ordered
from ctdb.storage.entries import Entry
from transport.base import View

if TYPE_CHECKING:
    from ctdb.engines.host import Host

log = logging.getLogger("ctdb.engines.ordered")

#: Operations a node out of sync queues while it waits for its snapshot; past
#: this it gives up on the round and rejoins the group.
MAX_BACKLOG = 100_000

#: Configuration events, not database state: every member of a view applies
#: them at their position in the stream, in sync or not, so all count the same
#: generation and agree on each other's flags. (vs campaign seed 8615281: a
#: joiner dropped a forced recovery with its backlog and took the count from a
#: snapshot sent before it, while the members in sync counted it: two
#: generations in one view, forever.)
CONFIGURATION = frozenset({"recover", "flags"})
#: Operations that do not count in `position`: those only their origin
#: delivers (a read barrier goes to its own node alone), which are not part of
#: the epoch's stream every member applies, and configuration events, which
#: members out of sync apply where they are delivered, not once their round
#: ends: counted, a member in sync would count them and one catching up
#: would not, and positions of one epoch would no longer compare prefixes.
UNCOUNTED = frozenset({"sync"}) | CONFIGURATION


class StreamApplier:
    """Applies the stream (the engine's state is the engine's: see engine.py)."""

    node: Host
    listener: StreamListener
    view: View
    replica: Replica
    clients: LocalClients
    samba: SambaGrants
    gate: StreamGate
    rounds: Rounds
    stability: Stability
    requests: Requests
    #: operations delivered while this node waits for its snapshot
    backlog: list[Ordered]
    synced: bool
    damaged: bool
    position: int

    @property
    def members(self) -> list[int]:
        return list(self.view.members)

    def on_ordered(self, msg: Ordered) -> None:
        self.gate.enter(msg, self._on_ordered)

    def _on_ordered(self, msg: Ordered) -> None:
        op = msg.op
        if op in ROUND_OPS:
            try:
                self.rounds.on_message(msg)
            except Exception as exc:
                self._resync_after(f"handling {op} from node {msg.origin}", exc)
            return
        if op == "applied":
            if self.stability.on_applied(msg):
                self.check_stable()
            return
        # (`queueing` asked only during a round: this runs for every delivery)
        if op not in CONFIGURATION and (
            not self.synced or (self.rounds.round is not None and self.rounds.queueing())
        ):
            self.backlog.append(msg)
            if len(self.backlog) > MAX_BACKLOG:
                self.resync(
                    f"more than {MAX_BACKLOG} operations queued while waiting to sync",
                    damaged=False,
                )
            return
        self.apply(msg)

    @staticmethod
    def counted(msgs: list[Ordered]) -> int:
        """How many of `msgs` count in `position` once applied."""
        return sum(1 for msg in msgs if msg.op not in UNCOUNTED)

    def resync(self, why: str, *, damaged: bool = True) -> None:
        """Our replica can no longer follow the stream: rejoin for a state transfer.

        `damaged`: a local write failed, so our copies are suspect, not just
        behind; until a state transfer replaces them they are taken only
        where no member offers a sound copy of the same epoch.
        """
        log.error("leaving the group and rejoining: %s", why)
        self.synced = False
        # A round in progress must not put us back in sync with the copy
        # that just failed: the view change of our rejoin starts a new one.
        self.rounds.round = None
        self.damaged = self.damaged or damaged
        self.drop_backlog()
        self.samba.revoke_all()
        self.requests.fail_all(
            CtdbError(ErrorCode.RETRY, f"node {self.node.pnn} is resyncing: {why}")
        )
        self.listener.on_ordered_state()
        self.listener.rejoin()

    def apply(self, msg: Ordered) -> None:
        op, args = msg.op, msg.args
        stable_op = op in STABLE_OPS or args.get("stable", False)
        members = frozenset(self.view.members) if stable_op else None
        if members is not None:
            self.stability.applying = (msg.origin, msg.seq, members)
        try:
            applier = self.replica.appliers.get(op)
            if applier is None:
                applier = getattr(self, f"_apply_{op}")
            result = applier(msg.origin, args)
            error = None
        except Exception as exc:
            if isinstance(exc, CtdbError) and exc.code != ErrorCode.IO:
                result, error = None, exc  # a refusal: every member refuses alike
            else:
                # Our replica may now differ from everyone else's (an I/O
                # error, a full disk, a record or file corrupt here alone,
                # a bug): never carry on with it.
                self.act()
                self._resync_after(f"applying {msg.op} from node {msg.origin}", exc)
                return
        finally:
            self.act()
            self.stability.applying = None
        self.node.stats["ordered_applied"] += 1
        if self.synced and op not in UNCOUNTED:
            self.position += 1
        if members is not None and error is None:
            self.stability.confirm(msg.origin, msg.seq)
        if self.requests.deliver(msg, result, error, members):
            self.check_stable()

    # -- what applying leaves to do -------------------------------------------------------

    def _send(self, msg: Ordered) -> None:
        self.node.broadcast(msg)

    def check_stable(self) -> None:
        settling = self.rounds.round is not None or self.rounds.behind(self.view)
        self.stability.check(self.view, settling)

    def act(self) -> None:
        """Do what applying the stream left for this node to do (replica effects)."""
        effects = self.replica.effects
        if effects:
            self.replica.effects = []
        for effect in effects:
            if isinstance(effect, Written):
                self.stability.touched(effect.ref)
            elif isinstance(effect, FirstEntry):
                self.node.entry_head(effect.owner, *effect.ref)
            else:
                self.clients.on_granted(effect)
        self.samba.after_apply()

    def purge(self, gone: Callable[[Owner], bool]) -> None:
        try:
            self.replica.purge_locks(gone)
        finally:
            self.act()

    def purge_entries(self, gone: Callable[[Entry], bool]) -> None:
        try:
            self.replica.purge_entries(gone, min(self.members))
        finally:
            self.act()

    # -- membership (the rest is in rounds.py) ------------------------------------------

    def on_view(self, view: View) -> None:
        """Handle a view change at its position in the stream (same on every member)."""
        self.gate.enter(view, self._view_changed)

    def _view_changed(self, view: View) -> None:
        try:
            self.rounds.on_view(view)
        except Exception as exc:
            self._resync_after(f"handling view {view.view_id}", exc)

    def _resync_after(self, what: str, exc: Exception) -> None:
        """A step of the stream failed half-way here alone: log it, rejoin.

        An apply, a view change or a round's step reads and writes our
        copies (a write, a purge, the epoch file, the snapshot we send or
        install), so one that fails leaves our state behind the others', or
        a round without the snapshot we were to send (a record of ours
        without its CTDB header, which no operation touched, fails only
        there). The transport only logs what its callback raises: the node
        would carry on as if in sync, and a joiner would wait for our
        snapshot for ever.
        """
        log_failure(log, exc, "%s", what)
        self.resync(f"{what} failed: {type(exc).__name__}: {exc}")

    def drop_backlog(self) -> None:
        self.requests.drop(self.backlog)
        self.backlog.clear()
