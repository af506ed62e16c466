"""How a record changes hands in dmaster migration: pure decisions, no I/O.

A record is served only by its dmaster, the node holding the authoritative
copy. A node that needs a record it does not hold sends a `Call` to the
key's lmaster; the lmaster knows the dmaster and forwards the call there; the
dmaster gives the record up through the lmaster (`DmasterRequest`), which
records the new dmaster and hands the record over (`DmasterReply`). Because
every step goes through the lmaster and each link is FIFO, a call the lmaster
forwards always reaches a node that holds, or is about to hold, the record.

These functions say, from a node's state, what it stores and what it sends;
`ctdb.engines.migration` applies their answers (writes, messages, waking
the clients that waited).
"""

from __future__ import annotations

from ctdb.protocol.messages import DmasterReply, DmasterRequest
from ctdb.storage.ltdb import Record
from ctdb.storage.placement import lmaster


def is_dmaster(me: int, key: bytes, rec: Record | None, vnnmap: list[int]) -> bool:
    """Whether node `me` holds the authoritative copy of `key`."""
    if rec is None:
        # Nobody has ever written it: the lmaster holds the empty record.
        return lmaster(key, vnnmap) == me
    return rec.dmaster == me


def max_hops(nodes: int) -> int:
    """A call bounced more often than this follows a stale vnnmap: it is dropped,
    and its sender tries again in the next generation."""
    return 4 * nodes + 8


def next_hop(me: int, key: bytes, rec: Record | None, vnnmap: list[int]) -> int:
    """Where a call goes from a node that is not the record's dmaster: the
    lmaster sends it to the dmaster it knows of, anyone else to the lmaster."""
    lm = lmaster(key, vnnmap)
    if lm == me:
        assert rec is not None  # the lmaster without a record is the dmaster
        return rec.dmaster
    return lm


def give_away(
    me: int,
    db_id: int,
    key: bytes,
    rec: Record | None,
    to: int,
    rsn: int,
    vnnmap: list[int],
    generation: int,
) -> tuple[Record, int, DmasterRequest | DmasterReply]:
    """The dmaster hands the record to `to`: the copy it keeps (naming `to`,
    with the bumped `rsn`, so a hand-over cut short leaves the newest copy
    somewhere) and the message to send, with its destination: the lmaster,
    or `to` itself when this node is the lmaster."""
    value = rec.value if rec else b""
    kept = Record(rsn, to, value)
    lm = lmaster(key, vnnmap)
    if lm == me:
        return kept, to, DmasterReply(db_id, key, generation, rsn, value)
    return kept, lm, DmasterRequest(db_id, key, generation, to, rsn, value)


def at_lmaster(me: int, msg: DmasterRequest) -> tuple[Record, DmasterReply | None]:
    """The lmaster notes the new dmaster (the record it stores), and passes the
    record on to it, unless the new dmaster is itself (None: it has arrived)."""
    rec = Record(msg.rsn, msg.new_dmaster, msg.value)
    if msg.new_dmaster == me:
        return rec, None
    return rec, DmasterReply(msg.db_id, msg.key, msg.generation, msg.rsn, msg.value)


def takes_reply(old: Record | None, rsn: int) -> bool:
    """A record handed to us replaces our copy unless ours is newer."""
    return old is None or old.rsn <= rsn
