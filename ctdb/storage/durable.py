"""Small facts a node must still know after a crash, written atomically and fsync'd.

Today that is the recovery epoch: recovery trusts only the copies of the
nodes that took part in the latest recovery (see `ctdb.engines.merge`), so a node
that restarts must remember which recovery it last took part in. If it
forgot (an epoch kept in memory), a node that was hung through the latest
recoveries would look as current as the restarted ones and its stale copy
could win.
"""

from __future__ import annotations

import os
from pathlib import Path

from ctdb.common.errors import CtdbError, ErrorCode


def read_counter(path: Path) -> int:
    """The number stored at `path`; 0 if the file does not exist yet."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return 0
    try:
        value = int(text.strip())
    except ValueError:
        raise CtdbError(ErrorCode.IO, f"{path} is corrupt: {text[:40]!r} is not a number") from None
    if value < 0:
        raise CtdbError(ErrorCode.IO, f"{path} is corrupt: negative value {value}")
    return value


def write_counter(path: Path, value: int) -> None:
    """Replace the number at `path` so that a crash leaves the old or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, f"{value}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
