"""The controls any node or tool may send to a node, on either kind of cluster.

`ctdbtool` reaches them through the local daemon (`ctdb.server.clients`),
which forwards them to the node they name; nodes send them to each other
(attach everywhere, ban a failing node, the tcp two-phase commit). The
steps of a tcp recovery are controls too, answered by `ctdb.server.leader`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ctdb.common.config import parse_tunable, read_nodes
from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.chains import poll
from ctdb.engines.merge import to_wire
from ctdb.protocol.messages import NODE_PROTOCOL
from ctdb.server.state import INACTIVE, NodeFlags
from ctdb.storage.database import Database, DbKind

if TYPE_CHECKING:
    from ctdb.server.membership import ServerNode

log = logging.getLogger("ctdb.server.admin")


class NodeControls:
    def __init__(self, node: ServerNode) -> None:
        self.node = node
        self._ban_timer: asyncio.TimerHandle | None = None

    def ctl_ping(self, src: int, args: dict[str, Any]) -> int:
        return self.node.pnn

    def ctl_pnn(self, src: int, args: dict[str, Any]) -> int:
        return self.node.pnn

    def ctl_uptime(self, src: int, args: dict[str, Any]) -> dict[str, Any]:
        node = self.node
        return {
            "started": node.started,
            "uptime": time.time() - node.started,
            "last_recovery": node.last_recovery,
        }

    def ctl_status(self, src: int, args: dict[str, Any]) -> dict[str, Any]:
        """What `ctdb status` shows: every node's flags, generation, vnnmap, leader."""
        node = self.node
        return {
            "pnn": node.pnn,
            "nodes": [
                {
                    "pnn": p,
                    "address": addr,
                    "flags": int(node.node_flags(p)),
                    "state": NodeFlags.describe(node.node_flags(p)),
                    "this_node": p == node.pnn,
                }
                for p, addr in enumerate(node.nodes)
            ],
            "generation": node.generation,
            "recovery_mode": node.recovery_mode.name,
            "leader": node.leader,
            "vnnmap": list(node.vnnmap),
            "transport": node.transport.name,
            # (nodes of another version count as disconnected: README, "Upgrading")
            "node_protocol": NODE_PROTOCOL,
            # With a lock file only the leader can tell; asking must not take it.
            "quorum": node.have_quorum() if node.lock_file is None else node.serving,
        }

    def ctl_getdbmap(self, src: int, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [db.info() for db in sorted(self.node.dbs.values(), key=lambda d: d.name)]

    def ctl_attach(self, src: int, args: dict[str, Any]) -> int:
        return self.node.attach(str(args["name"]), DbKind.parse(str(args["kind"]))).id

    def ctl_getdbseqnum(self, src: int, args: dict[str, Any]) -> int:
        return self.node.db(int(args["db_id"])).seqnum()

    def ctl_statistics(self, src: int, args: dict[str, Any]) -> dict[str, Any]:
        return dict(self.node.stats)

    def ctl_listvars(self, src: int, args: dict[str, Any]) -> dict[str, float]:
        return dict(self.node.tunables)

    def ctl_getvar(self, src: int, args: dict[str, Any]) -> float:
        name = str(args.get("name"))
        if name not in self.node.tunables:
            raise CtdbError(ErrorCode.NOT_FOUND, f"unknown tunable {name!r}")
        return self.node.tunables[name]

    def ctl_setvar(self, src: int, args: dict[str, Any]) -> None:
        node = self.node
        name = str(args.get("name"))
        node.tunables[name] = parse_tunable(name, args.get("value"))
        if name in ("KeepaliveInterval", "KeepaliveLimit"):
            node.transport.set_keepalive(
                node.tunable("KeepaliveInterval"), int(node.tunable("KeepaliveLimit"))
            )
            node.liveness.configure_lease()

    def ctl_tx_commit(self, src: int, args: dict[str, Any]) -> Awaitable[int]:
        db = self.node.db(int(args["db_id"]))
        return self.node.transactions.coordinate(db, args["reads"], args["writes"])

    def ctl_tx_prepare(self, src: int, args: dict[str, Any]) -> None:
        db = self.node.db(int(args["db_id"]))
        self.node.transactions.prepare(
            db, args["records"], int(args["commit_id"]), int(args["generation"])
        )

    def ctl_tx_finish(self, src: int, args: dict[str, Any]) -> None:
        db = self.node.db(int(args["db_id"]))
        self.node.transactions.finish(db, int(args["commit_id"]), bool(args["commit"]))

    def ctl_tx_settled(self, src: int, args: dict[str, Any]) -> None:
        # Commit ids are the leader's: one of another generation (a late
        # announcement, a new leader counting from 1) names another commit.
        if not self.node.in_generation(int(args["generation"])):
            return
        db = self.node.db(int(args["db_id"]))
        self.node.transactions.on_settled(db, int(args["commit_id"]))

    async def ctl_traverse(self, src: int, args: dict[str, Any]) -> list[Any]:
        """The live records this node is authoritative for (all of them if replicated)."""
        node = self.node
        db = node.db(int(args["db_id"]))
        async with self._whole_file(db, lambda: self._serving("traverse", None), "traversed"):
            return to_wire(
                (key, rec)
                for key, rec in db.live_items()
                if db.replicated or rec.dmaster == node.pnn
            )

    async def ctl_wipe(self, src: int, args: dict[str, Any]) -> None:
        """Volatile databases only: persistent ones are wiped by a transaction."""
        node = self.node
        db = node.db(int(args["db_id"]))
        if db.replicated:
            raise CtdbError(ErrorCode.INVALID, f"{db.name} is {db.kind.value}: wipe by transaction")
        generation = args["generation"]
        # A recovery that started since the wipe was sent may push back what we would wipe.
        self._serving("wipe", generation)
        async with self._whole_file(db, lambda: self._serving("wipe", generation), "wiped"):
            db.local.clear()

    @contextlib.asynccontextmanager
    async def _whole_file(
        self, db: Database, may: Callable[[], bool], done: str
    ) -> AsyncIterator[None]:
        """Hold the file of `db` whole, if clients in other processes share it
        (Samba's, or ours in place), for a wipe or a traverse, which read or
        write every chain; a file nobody shares needs nothing.

        Taken without waiting on the event loop: libtdb would wait there
        for a chain a client holds (the daemon stopped for as long: for
        ever if that client waits for this daemon), and refuses outright
        while a lock of this daemon's own clients keeps a chain
        (`KeyState.chain`). So this waits for those locks
        (`LocalDb.try_lock_all`), as ctdbd's freeze does, for half a
        CallTimeout (the control's sender gives up after a whole one), then
        fails BUSY. A recovery may start between tries, and its work owns
        the handle: each try asks `may` first (it raises RETRY when not).
        The node's "whole_file_waits" counts the holds that had to wait.
        """
        if not db.shared:
            yield
            return
        node, local = self.node, db.local

        def take() -> bool:
            return may() and local.try_lock_all()

        if not take():
            node.stats["whole_file_waits"] += 1
            deadline = asyncio.get_running_loop().time() + node.tunable("CallTimeout") / 2
            if not await poll(take, deadline):
                raise CtdbError(
                    ErrorCode.BUSY,
                    f"clients kept records of {db.name} locked: nothing {done} on node {node.pnn}",
                )
        try:
            yield
        finally:
            local.unlock_all()

    def _serving(self, what: str, generation: int | None) -> bool:
        """True, or RETRY if this node does not serve (`generation`: or not
        that one any more)."""
        node = self.node
        if not node.serving or generation not in (None, node.generation):
            raise CtdbError(ErrorCode.RETRY, f"recovery in progress: retry the {what}")
        return True

    async def ctl_recover(self, src: int, args: dict[str, Any]) -> None:
        """Force a recovery and return once it has finished, as `ctdb recover` does."""
        node = self.node
        if node.flags & INACTIVE:
            state = NodeFlags.describe(node.flags & INACTIVE)
            raise CtdbError(
                ErrorCode.RETRY,
                f"node {node.pnn} is {state} and takes no part in recoveries: "
                "run recover on an active node",
            )
        timeout = node.tunable("RecoverTimeout")
        try:
            await asyncio.wait_for(node.membership.recover(), timeout)
        except TimeoutError:
            raise CtdbError(
                ErrorCode.TIMEOUT,
                f"the recovery did not finish within RecoverTimeout ({timeout:g}s)",
            ) from None

    def ctl_setflags(self, src: int, args: dict[str, Any]) -> int:
        self.node.set_flags(int(args.get("set", 0)), int(args.get("clear", 0)))
        return self.node.flags

    def ctl_ban(self, src: int, args: dict[str, Any]) -> None:
        node = self.node
        seconds = float(args.get("seconds", 0))
        if self._ban_timer is not None:
            self._ban_timer.cancel()
            self._ban_timer = None
        if seconds <= 0:
            node.set_flags(clear_bits=NodeFlags.BANNED)
            return
        node.set_flags(set_bits=NodeFlags.BANNED)
        self._ban_timer = asyncio.get_running_loop().call_later(
            seconds, node.set_flags, 0, NodeFlags.BANNED
        )

    def ctl_reloadnodes(self, src: int, args: dict[str, Any]) -> list[str]:
        """Re-read the nodes file: new nodes may be appended; existing ones must stay."""
        node = self.node
        if node.nodes_file is None:
            raise CtdbError(ErrorCode.NOT_SUPPORTED, "this node was started without a nodes file")
        nodes = read_nodes(node.nodes_file)
        if nodes[: len(node.nodes)] != node.nodes:
            raise CtdbError(
                ErrorCode.INVALID,
                f"{node.nodes_file} changes or removes existing nodes; only appending is "
                "supported (pnns must stay stable)",
            )
        added = nodes[len(node.nodes) :]
        if added:
            log.info("reloadnodes: adding %s", added)
            node.nodes[:] = nodes
            node.liveness.configure_lease()
            node.transport.update_nodes(nodes)
            node.membership.request_recovery()
        return added

    def ctl_shutdown(self, src: int, args: dict[str, Any]) -> None:
        log.info("shutdown requested by node %d", src)
        self.node.shutdown_requested.set()
