"""Small facts a node must still know after a crash, written atomically and fsync'd.

The recovery epoch above all: recovery trusts only the copies of the nodes
that took part in the latest recovery (see `ctdb.engines.merge`), so a node
that restarts must remember which recovery it last took part in. If it
forgot (an epoch kept in memory), a node that was hung through the latest
recoveries would look as current as the restarted ones and its stale copy
could win. `Epochs` holds that and the two counters beside it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ctdb.common.errors import CtdbError, ErrorCode

#: In the state directory: the latest recovery epoch this node took part in.
EPOCH_FILE = "recovery.epoch"
#: In the state directory: the highest epoch number this node saw handed out.
EPOCH_NUMBERED_FILE = "recovery.epoch-numbered"
#: In the state directory (tcp): the epoch of the last generation this node served.
EPOCH_THAWED_FILE = "recovery.epoch-thawed"
#: In the state directory: how many times this node's daemon has started.
INCARNATION_FILE = "incarnation"


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
    """Replace the number at `path` so that a crash leaves the old or the new one.

    An OSError names `path` (a full disk says only "No space left on device").
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
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
    except OSError as exc:
        raise OSError(exc.errno, f"writing {path} failed: {exc.strerror}") from exc


class Epochs:
    """A node's durable counters, in its state directory; opening them counts a start."""

    def __init__(self, state_dir: Path) -> None:
        self._epoch_file = state_dir / EPOCH_FILE
        #: the latest recovery (tcp) or quorate view (vs) our copies are current for
        self.epoch = read_counter(self._epoch_file)
        self._numbered_file = state_dir / EPOCH_NUMBERED_FILE
        #: the highest epoch number handed out where this node saw it
        self.numbered = max(self.epoch, read_counter(self._numbered_file))
        self._thawed_file = state_dir / EPOCH_THAWED_FILE
        #: tcp: the epoch of the last generation this node served; unlike
        #: `epoch`, never that of a recovery cut short after it stored its epoch
        self.thawed = read_counter(self._thawed_file)
        incarnation_file = state_dir / INCARNATION_FILE
        #: this run of the daemon (see ctdb.engines.ordered)
        self.incarnation = read_counter(incarnation_file) + 1
        write_counter(incarnation_file, self.incarnation)

    def set(self, epoch: int) -> None:
        """Our copies are now current for `epoch`: after any restart, recovery
        must still tell the copies that missed something from those that did not."""
        self.number(epoch)
        if epoch != self.epoch:
            write_counter(self._epoch_file, epoch)
            self.epoch = epoch

    def thaw(self) -> None:
        """tcp: we serve the generation of `epoch` from now on (see merge.persistent_source)."""
        if self.epoch != self.thawed:
            write_counter(self._thawed_file, self.epoch)
            self.thawed = self.epoch

    def number(self, epoch: int) -> None:
        """Remember that epoch number `epoch` was handed out.

        vs numbers a new epoch above every number its members saw, also
        those of rounds a member numbered but did not finish, and a member
        adopts (`set`) an epoch only once every member of its view numbered
        it: an epoch a copy claims is then never numbered again, on two
        sides of a partition (see merge.freshest_copy and
        ctdb.engines.ordered.rounds.Rounds.on_numbered).
        """
        if epoch > self.numbered:
            write_counter(self._numbered_file, epoch)
            self.numbered = epoch
