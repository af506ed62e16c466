"""The leader's recovery driver.

After any membership change the leader rebuilds a consistent cluster, as
CTDB's recovery master does: freeze every active node (recovery mode
RECOVERY, new generation pending), make every node attach every database,
merge each volatile database (newest RSN per key, from every member: RSNs
carry the epoch), take each persistent database from the node with the
highest sequence number among the nodes of the latest epoch (a rejoining
node's copy may be stale), push the result everywhere, install the new
vnnmap and generation (the epoch stored durably), and thaw. Any
failure aborts the attempt; the caller retries with a fresh generation, so a
half-done recovery never serves requests.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from ctdb.errors import CtdbError, ErrorCode
from ctdb.merge import (
    from_wire,
    merge_volatile,
    newest_epoch_members,
    persistent_source,
    to_wire,
)

if TYPE_CHECKING:
    from ctdb.node import Node

log = logging.getLogger("ctdb.recovery")


async def _on_all(node: Node, members: list[int], op: str, args: dict[str, Any]) -> list[Any]:
    timeout = node.tunable("RecoverTimeout")
    return list(
        await asyncio.gather(*(node.control(p, op, args, timeout=timeout) for p in members))
    )


async def recover(node: Node, members: list[int], rng: random.Random) -> None:
    """Run one recovery over `members` (this node included)."""
    started = time.monotonic()
    generation = rng.randrange(2, 2**31)
    log.info("recovery: generation %d over nodes %s", generation, members)
    frozen = await _on_all(node, members, "freeze", {"generation": generation})
    for p, reply in zip(members, frozen, strict=True):
        # Migration assumes every member can reach every other; views are
        # each node's own opinion and differ while connections come up.
        unseen = set(members) - set(reply["view"])
        if unseen:
            raise CtdbError(ErrorCode.RETRY, f"node {p} does not see nodes {sorted(unseen)} yet")
    epochs = {p: int(r["epoch"]) for p, r in zip(members, frozen, strict=True)}
    epoch = max(epochs.values()) + 1
    current = newest_epoch_members(epochs)

    # Every node attaches every database any node has.
    dbmaps = await _on_all(node, members, "getdbmap", {})
    wanted: dict[str, str] = {}
    for dbmap in dbmaps:
        for entry in dbmap:
            wanted.setdefault(entry["name"], entry["kind"])
    for p, dbmap in zip(members, dbmaps, strict=True):
        have = {entry["name"] for entry in dbmap}
        for name, kind in wanted.items():
            if name not in have:
                await node.control(p, "attach", {"name": name, "kind": kind})

    for name, kind in sorted(wanted.items()):
        dbid = node.db_by_name(name).id
        if kind == "volatile":
            pulled = await _on_all(node, members, "pull", {"db_id": dbid, "generation": generation})
            merged = merge_volatile({p: from_wire(r) for p, r in zip(members, pulled, strict=True)})
            records = to_wire(merged.items())
        else:
            # Only the nodes of the latest epoch count: a rejoining node may
            # hold a commit nobody acknowledged, with a sequence number as
            # high as the commits it missed (see merge.persistent_source).
            seqnums = await _on_all(node, current, "getdbseqnum", {"db_id": dbid})
            source = persistent_source(dict(zip(current, seqnums, strict=True)))
            records = await node.control(
                source,
                "pull",
                {"db_id": dbid, "generation": generation},
                timeout=node.tunable("RecoverTimeout"),
            )
        await _on_all(
            node, members, "push", {"db_id": dbid, "generation": generation, "records": records}
        )

    await _on_all(
        node,
        members,
        "set_vnnmap",
        {"generation": generation, "vnnmap": members, "leader": node.pnn, "epoch": epoch},
    )
    await _on_all(node, members, "thaw", {"generation": generation})
    log.info("recovery: generation %d done in %.3fs", generation, time.monotonic() - started)
