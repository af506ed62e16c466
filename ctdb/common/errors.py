"""Errors with stable codes.

Codes mirror the errno values CTDB's controls return where one exists, so a
client or script can rely on `code` rather than on message text. The same
codes travel in error replies on the client socket and become the exit
status of `ctdbtool`.
"""

from __future__ import annotations

import errno
import logging
from enum import IntEnum


class ErrorCode(IntEnum):
    NOT_FOUND = errno.ENOENT  # unknown database, node or transaction
    IO = errno.EIO  # local storage failed
    TOO_BIG = errno.E2BIG  # frame, key or value above the limit
    RETRY = errno.EAGAIN  # recovery in progress or generation changed: try again
    BUSY = errno.EBUSY  # transaction conflict, database busy
    EXISTS = errno.EEXIST  # attached already with another type
    INVALID = errno.EINVAL  # wrong argument type or value
    NO_QUORUM = errno.EROFS  # this partition may not accept writes
    NOT_LOCKED = errno.ENOLCK  # unlock/store of a record the client does not hold
    PROTOCOL = errno.EPROTO  # malformed frame or version mismatch
    NOT_SUPPORTED = errno.EOPNOTSUPP
    DISCONNECTED = errno.ENOTCONN  # the target node is not reachable
    TIMEOUT = errno.ETIMEDOUT


class CtdbError(Exception):
    """An error a client can act on: a stable `code` and a one-line message."""

    def __init__(self, code: ErrorCode | int, message: str) -> None:
        try:
            code = ErrorCode(code)
        except ValueError:
            pass
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        name = self.code.name if isinstance(self.code, ErrorCode) else str(self.code)
        return f"{name}: {self.message}"


def log_failure(log: logging.Logger, exc: BaseException, what: str, *args: object) -> None:
    """Log that `what` (a %-format of `args`) failed with `exc`.

    A disk that refuses a write (OSError: ENOSPC, EIO) is the host's
    trouble, not the code's, and a full disk fails every write until it is
    freed: one line each; so is an IO-coded CtdbError (a record or file
    corrupt here, a chain lock call that failed). Anything else is a bug:
    its traceback.
    """
    if isinstance(exc, OSError) or (isinstance(exc, CtdbError) and exc.code == ErrorCode.IO):
        log.error(what + " failed: %s", *args, exc)
    else:
        log.error(what + " failed", *args, exc_info=exc)
