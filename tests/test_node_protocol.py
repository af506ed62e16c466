"""`NODE_PROTOCOL` moves with the node messages: a changed schema fails here
until the version is raised.

Daemons of two versions never exchange a message (README, "Upgrading"), and
that guards a cluster only if a change an older daemon would misread comes
with a new version. So the schemas the daemons check node messages against
(every message class, every ordered operation's and every control's
arguments and results, the compact layout's forms) are reduced to a
fingerprint, recorded here beside the version it belongs to. What the
fingerprint cannot see (a new meaning for an old field, the transports' own
framing) still needs the version raised by hand.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from ctdb.protocol import compact_ops, message_codec
from ctdb.protocol.messages import NODE_PROTOCOL
from ctdb.protocol.op_schemas import CONTROLS, ORDERED
from ctdb.protocol.schema import shape_of

#: NODE_PROTOCOL -> the fingerprint of the schemas it stands for
FINGERPRINTS = {3: "3a645ba4e6dfee40"}


def canonical(value: Any) -> Any:
    """`value` as plain JSON data, the same in every process: a check as
    what it accepts (its shape), sets and maps in sorted order."""
    if callable(value) and hasattr(value, "shape"):
        return canonical(shape_of(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(canonical(v) for v in value)
    if isinstance(value, bytes):
        return value.hex()
    if value is None or isinstance(value, int | float | str):
        return value
    raise TypeError(f"no canonical form for {type(value).__name__}: {value!r}")


def fingerprint() -> str:
    layouts = {
        str(number): [layout.cls.__name__, list(layout.names), canonical(layout.checks)]
        for number, layout in message_codec._LAYOUTS.items()
    }
    schemas = {
        "messages": layouts,
        "ordered": canonical(dict(ORDERED)),
        "controls": canonical(dict(CONTROLS)),
        "compact": [[f.op, f.code, f.value, f.optional] for f in compact_ops.FORMS],
    }
    text = json.dumps(schemas, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_the_node_messages_change_only_with_the_protocol_version() -> None:
    assert FINGERPRINTS.get(NODE_PROTOCOL) == fingerprint(), (
        f"the node message schemas changed (fingerprint {fingerprint()}): raise NODE_PROTOCOL "
        "in ctdb/protocol/messages.py and record the fingerprint under it in FINGERPRINTS"
    )


def test_the_fingerprint_sees_a_changed_argument() -> None:
    before = fingerprint()
    spec = CONTROLS["status"]
    CONTROLS["status"] = dataclasses.replace(spec, args=CONTROLS["freeze"].args)
    try:
        assert fingerprint() != before
    finally:
        CONTROLS["status"] = spec
    assert fingerprint() == before
