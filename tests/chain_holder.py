"""A separate process that holds chain locks on a TDB file, as Samba's clients do.

Chain locks belong to a process (fcntl) or a thread (mutexes), so the tests
need another process to hold one against the daemon or a `LocalDb`. It
opens the file once with the flags given (the daemon's DB_OPEN_FLAGS) and
obeys one command per line on stdin, answering one line on stdout:

    lock KEYHEX       -> "locked" or "busy" (non-blocking)
    unlock KEYHEX     -> "unlocked"
    lockall           -> "locked" or "busy"
    unlockall         -> "unlocked"
    read KEYHEX       -> the stored value in hex, or "none"

End of input ends it (which releases whatever it holds).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import tdb

from ctdb.storage.chainlocks import ChainLocks
from ctdb.storage.database import Database, DbKind

REPO = Path(__file__).resolve().parents[1]


def serve(path: Path, flags: int) -> None:
    handle = tdb.Tdb(str(path), 0, flags, os.O_RDWR)
    locks = ChainLocks(handle, path)
    print("ready", flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        key = bytes.fromhex(args[0]) if args else b""
        if command == "lock":
            answer = "locked" if locks.try_lock(key) else "busy"
        elif command == "unlock":
            locks.unlock(key)
            answer = "unlocked"
        elif command == "lockall":
            answer = "locked" if locks.try_lock_all() else "busy"
        elif command == "unlockall":
            locks.unlock_all()
            answer = "unlocked"
        elif command == "read":
            value = handle.get(key)
            answer = "none" if value is None else value.hex()
        else:
            answer = f"unknown command {command}"
        print(answer, flush=True)


class Holder:
    """The test's handle on a holder process (`Holder(path, flags)`, then `ask`)."""

    def __init__(self, path: Path, flags: int) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.chain_holder", str(path), str(flags)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )
        assert self.ask_raw(None) == "ready"

    def ask_raw(self, line: str | None) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if line is not None:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def ask(self, command: str, key: bytes | None = None) -> str:
        return self.ask_raw(command if key is None else f"{command} {key.hex()}")

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


if __name__ == "__main__":
    serve(Path(sys.argv[1]), int(sys.argv[2]))


@contextmanager
def shared_volatile(directory: Path) -> Iterator[Database]:
    """A volatile database whose file a Samba client attached (`Database.shared`)."""
    db = Database.open(directory, "shared.tdb", DbKind.VOLATILE, 0)
    db.shared = True  # (ctdb_handlers._share)
    try:
        yield db
    finally:
        db.local.close()


@contextmanager
def holding(db: Database) -> Iterator[Holder]:
    """Another process with `db`'s file open, locking chains as Samba's clients do."""
    client = Holder(db.path, db.local.tdb_flags)
    try:
        yield client
    finally:
        client.close()
