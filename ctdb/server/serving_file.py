"""The daemon's side of `ctdb.protocol.serving_state`: the file, kept mapped.

Created (and reset to "not serving") before any volatile file is opened,
so a client of the previous run stops using its files at once.
"""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path

from ctdb.protocol import serving_state
from ctdb.protocol.serving_state import NOT_SERVING, ServingState

#: its name in the state directory
FILE_NAME = "serving"


class ServingFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, serving_state.SIZE)
            self._map = mmap.mmap(fd, serving_state.SIZE)
        finally:
            os.close(fd)
        self.publish(0.0, 0.0, 0, 0)

    def publish(self, until: float, now: float, epoch: int, run: int) -> None:
        """Clients may use records in place until `until` on the daemon's
        clock, which reads `now` at present; published on the clients' clock."""
        if until <= now:
            state = NOT_SERVING
        else:
            state = ServingState(time.monotonic() + (until - now), epoch, run)
        serving_state.write(self._map, state)

    def close(self) -> None:
        serving_state.write(self._map, NOT_SERVING)
        self._map.close()
