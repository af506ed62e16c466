"""The databases a node has attached, by id, and how they come to be attached.

A database is attached by name and kind (volatile, persistent, replicated)
and known cluster-wide by its id, tdb's hash of the name
(`ctdb.storage.placement.db_id`). Persistent databases outlive the daemon:
at start-up every persistent file in the state directory is attached again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.storage.database import Database, DbKind
from ctdb.storage.placement import db_id

log = logging.getLogger("ctdb.server.databases")


class Databases(dict[int, Database]):
    def __init__(self, state_dir: Path, pnn: int) -> None:
        super().__init__()
        self.state_dir = state_dir
        self.pnn = pnn

    def attach(self, name: str, kind: DbKind) -> Database:
        """The database `name`, opened as `kind` if it is not attached yet."""
        dbid = db_id(name)
        db = self.get(dbid)
        if db is not None:
            if db.name != name:
                raise CtdbError(ErrorCode.EXISTS, f"database id clash: {name} and {db.name}")
            if db.kind is not kind:
                raise CtdbError(ErrorCode.EXISTS, f"database {name} is attached as {db.kind.value}")
            return db
        db = Database.open(self.state_dir, name, kind, self.pnn)
        self[db.id] = db
        log.info("attached %s database %s (id 0x%08x)", kind.value, name, db.id)
        return db

    async def attach_everywhere(
        self,
        name: str,
        kind: DbKind,
        others: list[int],
        control: Callable[[int, str, dict[str, Any]], Awaitable[Any]],
    ) -> Database:
        """A client attaches: attach here and on the `others` (the connected nodes).

        A node that fails to attach is left to the next recovery, which
        attaches every database on every member; a node that has the name
        attached as another kind fails the attach.
        """
        db = self.attach(name, kind)
        results = await asyncio.gather(
            *(control(p, "attach", {"name": name, "kind": kind.value}) for p in others),
            return_exceptions=True,
        )
        for p, r in zip(others, results, strict=True):
            if isinstance(r, CtdbError) and r.code == ErrorCode.EXISTS:
                raise r
            if isinstance(r, BaseException):
                log.warning("attach %s on node %d failed: %s (recovery will retry)", name, p, r)
        return db

    def by_id(self, dbid: int) -> Database:
        try:
            return self[dbid]
        except KeyError:
            raise CtdbError(ErrorCode.NOT_FOUND, f"unknown database id 0x{dbid:08x}") from None

    def by_name(self, name: str) -> Database:
        db = self.get(db_id(name))
        if db is None or db.name != name:
            raise CtdbError(ErrorCode.NOT_FOUND, f"unknown database {name!r} (attach it first)")
        return db

    def reopen_persistent(self) -> None:
        """Persistent databases survive restarts: attach every file found on disk."""
        directory = self.state_dir / DbKind.PERSISTENT.value
        if not directory.is_dir():
            return
        suffix = f".{self.pnn}"
        for path in sorted(directory.iterdir()):
            if path.name.endswith(suffix):
                self.attach(path.name[: -len(suffix)], DbKind.PERSISTENT)

    def close(self) -> None:
        for db in self.values():
            db.local.close()
