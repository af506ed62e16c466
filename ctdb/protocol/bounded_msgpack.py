"""msgpack from a peer, decoded within bounds set by the frame's own size.

Client frames and node messages are msgpack, and msgpack builds whatever
the bytes describe before any schema can look at it. This is the one
place that decoding happens, so the bounds on what it may build hold for
every frame, whoever sent it.
"""

from __future__ import annotations

from typing import Any

import msgpack

#: Arrays and maps a frame of n bytes may hold: n / 6. Python makes a 64-byte
#: object of each one-byte empty array, so a 16 MiB frame of them would take
#: 1.2 GB (measured); every valid message spends 6 bytes or more per container
#: (the smallest is a [key, value] row of a one-byte key and an empty value).
CONTAINER_BYTES = 6
#: Frames up to this size are decoded without counting their containers: at
#: most 64 bytes of objects per byte, 256 KiB, whatever they hold. Counting
#: costs a callback per container, half the decoding time of a request.
SMALL_FRAME = 4096


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def unpack(data: bytes) -> Any:
    """msgpack from a peer, decoded within bounds set by the frame's own size.

    msgpack already refuses a length that exceeds the bytes at hand; on top,
    extension types are refused (no handler expects one) and so is a frame
    above SMALL_FRAME holding more containers than its size allows
    (`CONTAINER_BYTES`).
    Raises ValueError (or msgpack's own errors) on anything else.
    """
    if len(data) <= SMALL_FRAME:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_no_ext)
    budget = len(data) // CONTAINER_BYTES + 16
    made = 0

    def counted(obj: Any) -> Any:
        nonlocal made
        made += 1
        if made > budget:
            raise ValueError(f"{len(data)} bytes holding more than {budget} arrays and maps")
        return obj

    return msgpack.unpackb(
        data,
        raw=False,
        strict_map_key=False,
        ext_hook=_no_ext,
        list_hook=counted,
        object_hook=counted,
    )
