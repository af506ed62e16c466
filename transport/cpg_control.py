"""The bodies of the CPG group's control messages, checked before the group acts on them.

Pure code. HELLO, EXPEL, STATE, MERGE and FOUND carry msgpack bodies that
every member of the group reads at the same stream position. A body that
does not decode, or decodes to the wrong shape, used to raise inside the
group machine: on every member alike, but each lost with it whatever else
its dispatch batch held, which differs from member to member, so one bad
message from a buggy member could make the replicas diverge. Checked here
first, such a message is ignored, and ignored by every member alike, since
every member reads the same bytes. (Only a process that may join the group
can send one: root, with corosync's default `uidgid`.)

DATA payloads are not looked at here: the daemon decodes and checks them
(`ctdb.protocol.message_codec`).
"""

from __future__ import annotations

import math
from typing import Any

from ctdb.protocol.bounded_msgpack import unpack
from ctdb.protocol.schema import Check, Limits, SchemaError
from ctdb.protocol.schema_combinators import list_of, nullable, row, struct
from ctdb.protocol.schema_scalars import ANY, U32, U64, blob, integer, number, text

#: a CPG member (nodeid, pid), as the bodies write it
MEMBER = row(U32, U32)
_LID = integer(0, 2**16 - 1)  # as wide as the header's field
_SECONDS = number(0, math.inf, above=True)
_TAG = row(list_of(MEMBER), U64)  # `cpg_group._merge_tag`
_MERGE_KEY = text(max_len=1 << 20)
#: [[nodeid, pid, lid, pnn], ...]: logical members and their pnns
_LOGICALS = list_of(row(U32, U32, _LID, U32))
#: [[key, count], ...]: how many merges of each set of processes (`Agreed.merges`)
_MERGE_COUNTS = list_of(row(_MERGE_KEY, U64))

_AGREED = {
    "members": _LOGICALS,
    "view_id": U64,
    "view": list_of(U32),
    "synced": list_of(MEMBER),
    "expelled": list_of(MEMBER),
    "silences": list_of(row(U32, U32, _SECONDS)),
    "merges": _MERGE_COUNTS,
}
#: What a joiner's snapshot adds to the agreed state: the fragments in
#: flight at its join and the merge in progress (`Group._merge_in_progress`).
_AT_JOIN = {
    "fragments": list_of(row(U32, U32, _LID, list_of(blob(1 << 30)))),
    "merge": nullable(
        struct(
            {
                "expect": list_of(MEMBER),
                "members": list_of(MEMBER),
                "view_id": U64,
                "tag": _TAG,
                "counts": _MERGE_COUNTS,
            }
        )
    ),
}


def _empty(value: Any, limits: Limits) -> None:
    if value != []:
        raise SchemaError("must be an empty list")


#: A snapshot's pending joiners' snapshots hold no pending joiners of their own
#: (`Agreed.snapshot`): a member that becomes the leader sends them as they are.
_NESTED = struct({**_AGREED, **_AT_JOIN, "pending": _empty})
SNAPSHOT = struct({**_AGREED, **_AT_JOIN, "pending": list_of(row(MEMBER, _NESTED))})

HELLO = struct({"pnn": U32, "last_view_id": U64}, {"silence": ANY})
STATE = struct({"target": MEMBER, "snapshot": SNAPSHOT})
MERGE = struct(
    {
        "tag": _TAG,
        "merges": _MERGE_COUNTS,
        "members": _LOGICALS,
        "view_id": U64,
        "expelled": list_of(MEMBER),
    },
    {"silence": ANY},
)
FOUND = struct({"members": list_of(MEMBER), "older": list_of(MEMBER)})

_NO_LIMITS = Limits((), {})


class Malformed(ValueError):
    """A control body that does not decode or does not have its shape."""


def body(check: Check, payload: bytes) -> Any:
    """The decoded body of a control message, checked against `check`."""
    try:
        value = unpack(payload)
        check(value, _NO_LIMITS)
    except SchemaError as exc:
        raise Malformed(exc.message) from None
    except Exception as exc:  # noqa: BLE001 - whatever msgpack raises on bad bytes
        raise Malformed(f"not msgpack ({type(exc).__name__}: {exc})") from None
    return value


def body_or_none(check: Check, payload: bytes) -> Any:
    """`body`, or None for a malformed one: what a joiner peeking at its
    buffer makes of a message every member ignores."""
    try:
        return body(check, payload)
    except Malformed:
        return None
