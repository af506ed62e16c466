"""The words of cluster state that every part of the daemon shares.

CTDB's node flags and recovery modes (same values as ctdb_protocol.h, so
`ctdb status` output reads the same), and how a part of the daemon offers
the controls it answers.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum, IntFlag
from typing import Any

#: The generation of a node that serves none: frozen, or not yet recovered.
INVALID_GENERATION = 1


class NodeFlags(IntFlag):
    """CTDB's node flags (same bit values as ctdb_protocol.h)."""

    DISCONNECTED = 0x01
    UNHEALTHY = 0x02
    BANNED = 0x08
    DISABLED = 0x04
    STOPPED = 0x20

    @staticmethod
    def describe(flags: int) -> str:
        if not flags:
            return "OK"
        names = [f.name for f in NodeFlags if flags & f and f.name]
        return "|".join(names)


#: A plain int: flag tests run on every request, and IntFlag arithmetic is slow.
INACTIVE = int(NodeFlags.BANNED | NodeFlags.STOPPED | NodeFlags.DISCONNECTED)


class RecoveryMode(IntEnum):
    NORMAL = 0
    RECOVERY = 1


#: A control's handler: (sending pnn, arguments) -> its result, or an awaitable of it.
ControlHandler = Callable[[int, dict[str, Any]], Any]


def control_handlers(part: object) -> dict[str, ControlHandler]:
    """The controls a part of the daemon answers: its `ctl_<name>` methods, by name."""
    return {
        name.removeprefix("ctl_"): getattr(part, name)
        for name in dir(part)
        if name.startswith("ctl_")
    }
