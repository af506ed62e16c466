"""The cluster lock on shared storage (CTDB's recovery lock): an fcntl lock.

Instead of a majority of configured nodes, whoever holds this lock may lead
recoveries: two partitions that share the storage cannot both hold it.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger("ctdb.server.lockfile")


class ClusterLockFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def hold(self) -> bool:
        """Whether we hold the lock: kept once taken, until `release`."""
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        log.info("took the cluster lock %s", self.path)
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            log.info("released the cluster lock %s", self.path)
