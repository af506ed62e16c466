"""Key files: the cluster key node links prove (tcp) and corosync's authkey (vs).

A key file is random bytes readable by its owner only. Loading refuses a file
that group or others may read: a key that leaked to every local user
authenticates nothing, and saying so at start-up beats finding out later.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ctdb.common.errors import CtdbError, ErrorCode

CLUSTER_KEY_SIZE = 32  # HMAC-SHA256 key: 256 bits
#: corosync-keygen's default; corosync accepts 128..4096 bytes.
COROSYNC_KEY_SIZE = 256
MIN_KEY_SIZE = 16
MAX_KEY_SIZE = 4096


def create_key(path: Path, size: int = CLUSTER_KEY_SIZE) -> None:
    """Write `size` random bytes to a new file of mode 0600; never overwrites a key."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CtdbError(ErrorCode.EXISTS, f"{path} exists; not overwriting a key") from None
    except OSError as exc:
        raise CtdbError(ErrorCode.IO, f"cannot create key file {path}: {exc.strerror}") from exc
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, os.urandom(size))
        os.fsync(fd)
    finally:
        os.close(fd)


def load_key(path: Path) -> bytes:
    """The key in `path`, after checking it is a private regular file of a sane size."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        message = f"cannot read key file {path}: {exc.strerror}"
        raise CtdbError(ErrorCode.NOT_FOUND, message) from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CtdbError(ErrorCode.INVALID, f"key file {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise CtdbError(
                ErrorCode.INVALID,
                f"key file {path} is readable by group or others (mode {mode:04o}); "
                f"run: chmod 600 {path}",
            )
        key = os.read(fd, MAX_KEY_SIZE + 1)
    finally:
        os.close(fd)
    if not MIN_KEY_SIZE <= len(key) <= MAX_KEY_SIZE:
        raise CtdbError(
            ErrorCode.INVALID,
            f"key file {path} holds {len(key)} bytes; a key has {MIN_KEY_SIZE}..{MAX_KEY_SIZE} "
            "(create one with: ctdbtool keygen PATH)",
        )
    return key
