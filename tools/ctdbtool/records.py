"""`ctdbtool` commands on databases and their records (loaded when one of them runs)."""

from __future__ import annotations

import re
from typing import Any

import click

from tools.ctdbtool.common import Ctx, fail, pass_ctx, show


@click.command()
@pass_ctx
def getdbmap(c: Ctx) -> None:
    """The databases attached on the node."""
    dbs = c.call("getdbmap")

    def text() -> str:
        lines = [f"Number of databases:{len(dbs)}"]
        for d in dbs:
            kind = "" if d["kind"] == "volatile" else f" {d['kind'].upper()}"
            lines.append(f"dbid:0x{d['id']:08x} name:{d['name']} path:{d['path']}{kind}")
        return "\n".join(lines)

    c.emit(dbs, text)


@click.command()
@click.argument("name")
@click.argument(
    "kind",
    required=False,
    default="volatile",
    type=click.Choice(["volatile", "persistent", "replicated"]),
)
@pass_ctx
def attach(c: Ctx, name: str, kind: str) -> None:
    """Attach (create) database NAME on every node."""
    info = c.client.call("attach", name=name, kind=kind)
    c.emit(info, f"Attached {name} (dbid 0x{info['id']:08x})")


@click.command()
@click.argument("db")
@pass_ctx
def catdb(c: Ctx, db: str) -> None:
    """Dump every record of a database, from every node."""
    records = c.client.call("traverse", db=db)

    def text() -> str:
        out = []
        for key, value in records:
            out.append(f'key({len(key)}) = "{show(key)}"')
            out.append(f'data({len(value)}) = "{show(value)}"')
            out.append("")
        out.append(f"Dumped {len(records)} records")
        return "\n".join(out)

    c.emit([{"key": k, "value": v} for k, v in records], text)


def _read(c: Ctx, db: str, key: str) -> None:
    value = c.client.call("fetch", db=db, key=key.encode())
    c.emit(
        {"db": db, "key": key, "value": value},
        lambda: (
            f"Data: size:{len(value)} ptr:[{show(value)}]"
            if value is not None
            else f"Data: key '{key}' not found"
        ),
    )


@click.command()
@click.argument("db")
@click.argument("key")
@pass_ctx
def readkey(c: Ctx, db: str, key: str) -> None:
    """Read one record of a volatile database (it migrates to this node)."""
    _read(c, db, key)


@click.command()
@click.argument("db")
@click.argument("key")
@click.argument("value")
@pass_ctx
def writekey(c: Ctx, db: str, key: str, value: str) -> None:
    """Write one record of a volatile database."""
    c.client.call("store", db=db, key=key.encode(), value=value.encode())


@click.command()
@click.argument("db")
@click.argument("key")
@pass_ctx
def deletekey(c: Ctx, db: str, key: str) -> None:
    """Delete one record of a volatile database."""
    c.client.call("delete", db=db, key=key.encode())


@click.command()
@click.argument("db")
@click.argument("key")
@pass_ctx
def pfetch(c: Ctx, db: str, key: str) -> None:
    """Read one record of a persistent database."""
    _read(c, db, key)


#: A ptrans line of one or two double-quoted words without escapes or quotes
#: inside, which shlex would split the same way.
_QUOTED_LINE = re.compile(r'\s*"([^"\\]*)"(?:\s+"([^"\\]*)")?\s*$')


def _ptransaction(c: Ctx, db: str, ops: list[tuple[bytes, bytes | None]]) -> int:
    """One transaction, retried when another commit got there first."""
    return c.client.transact(db, dict(ops))


@click.command()
@click.argument("db")
@click.argument("key")
@click.argument("value")
@pass_ctx
def pstore(c: Ctx, db: str, key: str, value: str) -> None:
    """Write one record of a persistent database (a one-record transaction)."""
    _ptransaction(c, db, [(key.encode(), value.encode())])


@click.command()
@click.argument("db")
@click.argument("key")
@pass_ctx
def pdelete(c: Ctx, db: str, key: str) -> None:
    """Delete one record of a persistent database."""
    _ptransaction(c, db, [(key.encode(), None)])


@click.command()
@click.argument("db")
@click.argument("file", type=click.File("r"), default="-")
@pass_ctx
def ptrans(c: Ctx, db: str, file: Any) -> None:
    """Apply lines of `"key" "value"` from FILE (default stdin) in one transaction.

    A line with only a key deletes it, as Samba's tool does.
    """
    import shlex

    ops: list[tuple[bytes, bytes | None]] = []
    for lineno, line in enumerate(file, 1):
        if not line.strip():
            continue
        simple = _QUOTED_LINE.match(line)  # shlex costs 6 us a line: 60 ms for 10,000
        if simple:
            words = [w for w in simple.groups() if w is not None]
        else:
            try:
                words = shlex.split(line)
            except ValueError as exc:
                fail(f"line {lineno}: {exc}")
        if len(words) == 1:
            ops.append((words[0].encode(), None))
        elif len(words) == 2:
            ops.append((words[0].encode(), words[1].encode()))
        else:
            fail(f'line {lineno}: expected "key" "value", got {len(words)} words')
    seqnum = _ptransaction(c, db, ops)
    c.emit(
        {"records": len(ops), "seqnum": seqnum},
        f"committed {len(ops)} records, sequence number {seqnum}",
    )


@click.command()
@click.argument("db")
@pass_ctx
def getdbseqnum(c: Ctx, db: str) -> None:
    """A persistent database's sequence number (bumped by every commit)."""
    seqnum = c.client.call("getdbseqnum", db=db)
    c.emit({"db": db, "seqnum": seqnum}, f"0x{seqnum:x}")


@click.command()
@click.argument("db")
@pass_ctx
def wipedb(c: Ctx, db: str) -> None:
    """Remove every record of a database on every node."""
    c.client.call("wipedb", db=db)


@click.command()
@click.argument("db")
@click.argument("file", type=click.Path(dir_okay=False))
@pass_ctx
def backupdb(c: Ctx, db: str, file: str) -> None:
    """Save a database's records to FILE (msgpack)."""
    from pathlib import Path

    import msgpack

    backup = c.client.call("backupdb", db=db)
    Path(file).write_bytes(msgpack.packb(backup, use_bin_type=True))
    c.emit(
        {"db": db, "records": len(backup["records"]), "file": str(Path(file))},
        f"Database {db} backed up: {len(backup['records'])} records",
    )


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.argument("db", required=False)
@pass_ctx
def restoredb(c: Ctx, file: str, db: str | None) -> None:
    """Replace a database's contents with a backup (optionally under another name)."""
    from pathlib import Path

    import msgpack

    path = Path(file)
    try:
        backup = msgpack.unpackb(path.read_bytes(), raw=False)
        name = db or backup["name"]
        records, kind = backup["records"], backup["kind"]
    except Exception as exc:
        fail(f"{path} is not a backup made by backupdb: {exc}")
    c.client.call("attach", name=name, kind=kind)
    count = c.client.call("restoredb", db=name, records=records)
    c.emit({"db": name, "records": count}, f"Database {name} restored: {count} records")
