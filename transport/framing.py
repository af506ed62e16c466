"""Length-prefixed framing shared by every stream socket in the project.

A frame is a 4-byte big-endian length followed by that many bytes. The reader
is sans-IO: bytes in, whole frames out, so it is tested without sockets and
reused by the node-to-node TCP transport and the client protocol alike.
"""

from __future__ import annotations

import struct

LENGTH = struct.Struct("!I")


class FrameTooLarge(ValueError):
    """A peer announced a frame above the agreed maximum."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the maximum of {limit}")
        self.size = size
        self.limit = limit


class FrameReader:
    """Splits a byte stream into frames; raises FrameTooLarge before buffering one."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        if not buf and len(data) >= 4:
            # The usual case, one whole frame in one read: no buffering.
            (size,) = LENGTH.unpack_from(data)
            if size + 4 == len(data) and size <= self.max_size:
                return [data[4:]]
        buf += data
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        with memoryview(buf) as view:  # slicing a view copies each frame once, not twice
            while end - pos >= 4:
                (size,) = LENGTH.unpack_from(buf, pos)
                if size > self.max_size:
                    raise FrameTooLarge(size, self.max_size)
                if end - pos - 4 < size:
                    break
                frames.append(bytes(view[pos + 4 : pos + 4 + size]))
                pos += 4 + size
        if pos:
            del buf[:pos]
        return frames

    @property
    def buffered(self) -> int:
        return len(self._buf)


def frame(payload: bytes) -> bytes:
    return LENGTH.pack(len(payload)) + payload
