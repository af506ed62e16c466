"""The contract between the daemon and the network.

The daemon's engines never touch a socket: they hand payloads (opaque bytes) to
a `Transport` and receive payloads and membership views back through two
callbacks. Backends differ in what they guarantee, and say so in
`capabilities`, so that the engine (and the conformance suite) can rely on
exactly what a backend promises and nothing more:

* every backend: `send` is reliable and FIFO per (sender, receiver) pair while
  both stay in the view; `broadcast` reaches every member of the current view,
  the sender included, FIFO per sender.
* `total_order`: every member delivers broadcasts in one agreed order, and a
  `send` takes its place in that order too: a message a node sends after
  some member delivered broadcast B is delivered after B (a read barrier a
  node sends to itself relies on it).
* `virtual_synchrony`: a view change is delivered at the same position in the
  message stream on every surviving member, and a message sent in view V is
  delivered in V to all survivors of V or to none.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar

log = logging.getLogger("transport")


@dataclass(frozen=True)
class View:
    """A membership view: who this node can talk to right now.

    `view_id` grows with every change seen by this node. On a virtually
    synchronous backend all members see the same ids in the same order; on TCP
    it is a local counter.
    """

    view_id: int
    members: tuple[int, ...]

    def __contains__(self, pnn: object) -> bool:
        return pnn in self.members


@dataclass(frozen=True)
class Capabilities:
    total_order: bool
    virtual_synchrony: bool
    max_message_size: int


MessageHandler = Callable[[int, bytes], None]
ViewHandler = Callable[[View], None]
#: (what failed, the error)
FailureHandler = Callable[[str, BaseException], None]


def _ignore_message(src: int, payload: bytes) -> None:
    """Default handler until the daemon installs its own."""


def _ignore_view(view: View) -> None:
    """Default handler until the daemon installs its own."""


def _log_failure(what: str, exc: BaseException) -> None:
    """Default handler until the daemon installs its own (`Node.fail`)."""
    log.critical("transport: %s failed", what, exc_info=exc)


@dataclass
class TransportOptions:
    """Backend-independent settings, filled from the daemon's configuration.

    `extra` carries backend-specific settings (e.g. the corosync group name)
    as strings, straight from the `[transport]` section of the config file.
    """

    port: int = 4379
    keepalive_interval: float = 1.0
    keepalive_limit: int = 5
    #: tcp: the key node links prove to each other (`[cluster] key file`);
    #: None leaves them unauthenticated.
    cluster_key: bytes | None = None
    #: tcp: every frame carries a MAC (`[cluster] authenticate frames`).
    authenticate_frames: bool = False
    #: The version of what the daemons say over the transport (below 100):
    #: nodes of two versions must never exchange a message, so a tcp link
    #: between them is refused in its handshake and a vs member joins the
    #: group of its own version (`group.vN`).
    protocol: int = 0
    extra: dict[str, str] = field(default_factory=dict)


class TransportError(Exception):
    """A transport could not be started or used (bad address, no corosync...)."""


class Transport(abc.ABC):
    """One node's endpoint on the cluster network.

    `nodes` is the list of node addresses from the nodes file; a node's pnn is
    its index in that list. Handlers are plain attributes the owner replaces
    after construction; they run on the event loop and must not block.
    """

    name: ClassVar[str]
    #: A class default; a backend whose guarantees depend on its settings
    #: (the memory transport) may set it per instance.
    capabilities: Capabilities

    def __init__(self, pnn: int, nodes: list[str], options: TransportOptions) -> None:
        self.pnn = pnn
        self.nodes = list(nodes)
        self.options = options
        self.view = View(0, (pnn,))
        self.on_message: MessageHandler = _ignore_message
        self.on_view: ViewHandler = _ignore_view
        #: a task of the backend's own ended with an error (`spawn`): a bug
        self.on_failure: FailureHandler = _log_failure

    def spawn(self, coro: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        """Run `coro` as a task of the backend's own (a link kept connected,
        keepalives, reconnecting to corosync), which runs for as long as the
        backend does: one that ends with an error is reported to
        `on_failure`, never left to end in silence (a tcp link that is never
        connected again, a member that never rejoins)."""
        task = asyncio.get_running_loop().create_task(coro)
        task.add_done_callback(lambda done: self._spawned_ended(done, what))
        return task

    def _spawned_ended(self, task: asyncio.Task[None], what: str) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.on_failure(what, exc)

    @abc.abstractmethod
    async def start(self) -> None:
        """Begin talking to the cluster; returns once this node can send."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Leave the cluster and release every resource; idempotent."""

    @abc.abstractmethod
    def send(self, pnn: int, payload: bytes) -> None:
        """Queue `payload` for node `pnn`; silently dropped if `pnn` is not in the view."""

    @abc.abstractmethod
    def broadcast(self, payload: bytes) -> None:
        """Queue `payload` for every member of the current view, this node included."""

    @abc.abstractmethod
    async def drain(self) -> None:
        """Wait until queued output is below the backend's high-water mark (back-pressure)."""

    def drop_peer(self, pnn: int) -> None:
        """`pnn` broke the protocol: cut the link to it (it may connect again).

        A point-to-point backend closes the connection and forgets what it
        buffered from it. On a broadcast medium there is no link of one's own
        to cut: every member drops the message alike, which is the default.
        """
        return None

    def confirmed_until(self) -> float | None:
        """Loop time until which this member cannot have been dropped from the
        group without knowing it yet; None if the backend's view says it all.

        On a broadcast medium a process that was stopped may have been
        expelled meanwhile and learn it only when it reaches the expel in its
        backlog (`transport.cpg_stream.CpgStream.confirmed_until`).
        """
        return None

    def left_in_order(self, pnn: int) -> bool:
        """Whether `pnn`, out of our view, left it by closing its end in order.

        Closed in order: it exited (kill -9 included: its kernel closes its
        sockets) or it dropped us. Either way it serves on nothing we
        confirmed any more, so a tcp recovery need not wait out the lease we
        granted it (`ctdb.server.liveness.Liveness.leases_granted`). A link
        that failed (a reset, an unreachable host, silence) says nothing of
        what the peer believes. False unless the backend knows: the safe
        answer.
        """
        return False

    async def departed(self, pnn: int, timeout: float) -> None:
        """Wait, at most `timeout`, until `left_in_order(pnn)` has its answer.

        A backend may learn how a peer left only a moment after the peer
        left the view (tcp: `TcpTransport._linger`). Returns at once by
        default.
        """
        return None

    def set_keepalive(self, interval: float, limit: int) -> None:
        """Change failure-detection timing at run time (`ctdbtool setvar`)."""
        self.options.keepalive_interval = interval
        self.options.keepalive_limit = limit

    def update_nodes(self, nodes: list[str]) -> None:
        """The nodes file grew (`ctdbtool reloadnodes`): start talking to the new nodes."""
        self.nodes[:] = nodes

    def _set_view(self, members: set[int] | tuple[int, ...]) -> None:
        """Install a new view if membership changed and tell the owner."""
        ordered = tuple(sorted(members))
        if ordered == self.view.members:
            return
        self.view = View(self.view.view_id + 1, ordered)
        self.on_view(self.view)


#: Of the time corosync takes to re-form its ring without a member, the share
#: a vs lease may last: the rest covers a token rotation (the last token the
#: others saw may precede the one that carried our message) and the ticks'
#: scheduling.
RING_SHARE = 0.75


def lease_timing(interval: float, silence: float, reform: float | None) -> tuple[float, float]:
    """(how long after sending a message that came back a vs member is sure
    it is still in the group, how often it must send one to stay sure).

    The daemons expel a member silent for `silence`, checked every
    `interval`, so the lease ends one interval before. The network may also
    cut the member off, and corosync then leaves it out of the ring after
    `reform` at the soonest (`transport.libcmap.RingTimeouts.shortest_reform`;
    None where nothing re-forms a ring behind the daemons' backs), which with
    corosync's defaults comes sooner: the lease ends before that too, and the
    member ticks three times per lease so that an idle member's lease never
    lapses.
    """
    lease, tick = silence - interval, interval
    if reform:
        lease = min(lease, RING_SHARE * reform)
        if lease > 0:  # (never a tick of no time, whatever the inputs)
            tick = min(interval, lease / 3)
    return lease, tick


_REGISTRY: dict[str, str] = {
    "tcp": "transport.tcp:TcpTransport",
    "vs": "transport.cpg:CpgTransport",
    "memory": "transport.memory:MemoryTransport",
}


def transport_names() -> list[str]:
    return sorted(_REGISTRY)


def transport_class(name: str) -> type[Transport]:
    """Look a backend up by the name used in configs and on command lines.

    Imports lazily so that, e.g., the TCP daemon never loads libcpg.
    """
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise TransportError(
            f"unknown transport {name!r} (choose from {', '.join(transport_names())})"
        ) from None
    module_name, _, class_name = target.partition(":")
    import importlib

    module = importlib.import_module(module_name)
    cls: type[Transport] = getattr(module, class_name)
    return cls
