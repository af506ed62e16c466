"""A database attached on this node: name, id, kind and its local TDB file."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.storage.ltdb import LocalDb, Record
from ctdb.storage.placement import db_id

#: CTDB keeps a persistent database's sequence number in this record.
SEQNUM_KEY = b"__db_sequence_number__"
_SEQNUM = struct.Struct("<Q")
#: pyctdb's own record beside it: a digest chained over every commit, which
#: tells two copies with the same history apart from two that merely
#: reached the same sequence number (see `next_history`).
HISTORY_KEY = b"__pyctdb_history__"
#: Records that describe the database rather than hold a client's data.
META_KEYS = frozenset({SEQNUM_KEY, HISTORY_KEY})


class DbKind(StrEnum):
    VOLATILE = "volatile"
    PERSISTENT = "persistent"
    REPLICATED = "replicated"

    @classmethod
    def parse(cls, text: str) -> DbKind:
        aliases = {"normal": cls.VOLATILE, "": cls.VOLATILE}
        try:
            return aliases.get(text) or cls(text)
        except ValueError:
            raise CtdbError(
                ErrorCode.INVALID,
                f"unknown database type {text!r} (volatile, persistent or replicated)",
            ) from None


@dataclass
class Database:
    name: str
    kind: DbKind
    local: LocalDb
    id: int = field(init=False)
    #: Volatile: the recovery (epoch, generation) whose pushed copy this one
    #: started from; with `local.changed` it says what differs from that copy.
    base: tuple[int, int] | None = field(default=None, init=False)
    #: Volatile: a Samba client may have the file open and write records in
    #: place (set when one attaches it or asks its path through CTDB's
    #: protocol; never cleared while the daemon runs). Only then does the
    #: engine take chain locks, which cost a daemon without such clients a
    #: third of its time per local write (`ctdb.engines.chains`).
    shared: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.id = db_id(self.name)

    @classmethod
    def open(cls, directory: Path, name: str, kind: DbKind, pnn: int) -> Database:
        if not name or "/" in name or name.startswith(".") or len(name) > 255:
            raise CtdbError(ErrorCode.INVALID, f"invalid database name {name!r}")
        path = directory / kind.value / f"{name}.{pnn}"
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(name, kind, LocalDb(path, persistent=kind is DbKind.PERSISTENT))

    @property
    def replicated(self) -> bool:
        """Every node holds every record (persistent and replicated databases)."""
        return self.kind is not DbKind.VOLATILE

    @property
    def path(self) -> Path:
        return self.local.path

    def seqnum(self) -> int:
        rec = self.local.get(SEQNUM_KEY)
        return _SEQNUM.unpack(rec.value)[0] if rec and len(rec.value) == 8 else 0

    @staticmethod
    def seqnum_record(seqnum: int, pnn: int) -> Record:
        return Record(seqnum, pnn, _SEQNUM.pack(seqnum))

    def history(self) -> bytes:
        """The chained digest of every commit this copy applied (b"" before the first)."""
        rec = self.local.get(HISTORY_KEY)
        return rec.value if rec else b""

    def history_record(
        self, seqnum: int, pnn: int, change: Iterable[tuple[bytes, bytes]]
    ) -> Record:
        """The history record after a commit that writes `change` (deletions as b"")."""
        digest = hashlib.blake2b(self.history(), digest_size=16)
        for key, value in sorted(change):
            digest.update(struct.pack("<II", len(key), len(value)) + key + value)
        return Record(seqnum, pnn, digest.digest())

    @staticmethod
    def commit_puts(records: Mapping[bytes, Record]) -> dict[bytes, Record | None]:
        """What a committed transaction writes into a replicated database's file.

        A deletion removes the key instead of leaving a marker: recovery
        copies these databases whole, so nothing has to remember a delete,
        and a database whose keys come and go stays bounded on disk.
        """
        return {key: None if rec.deleted else rec for key, rec in records.items()}

    def live_items(self) -> Iterator[tuple[bytes, Record]]:
        """Records a client can see: no deletion markers, no sequence number."""
        for key, rec in self.local.items():
            if not rec.deleted and key not in META_KEYS:
                yield key, rec

    def info(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "kind": self.kind.value, "path": str(self.path)}
