"""`ctdbtool`: the admin tool, modelled on Samba's `ctdb`.

It talks to the local daemon's socket (`--socket`, else $CTDB_SOCKET, else
the standard location) and reaches other nodes through it with `-n PNN`.
Every read command has `--json`. Errors print one line and exit with the
error's code (an errno value, never 0). Admins run the tool in loops, so
a module only some commands need (json, msgpack, pathlib, the cluster
launcher) is imported by those commands, not by the tool: a one-shot
`ctdbtool pnn` loads click, the blocking client and nothing else
(`python -m bench.cli_startup` measures it against Samba's `ctdb pnn`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from ctdb.client import Client, default_socket
from ctdb.common.errors import CtdbError, ErrorCode


class Ctx:
    def __init__(self, socket: str | None, pnn: int | None, as_json: bool) -> None:
        self.socket = socket or default_socket()
        self.pnn = pnn
        self.json = as_json
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.socket)
        return self._client

    def call(self, op: str, **args: Any) -> Any:
        """An operation addressed to `-n PNN` when given."""
        if self.pnn is not None:
            args.setdefault("pnn", self.pnn)
        return self.client.call(op, **args)

    def emit(self, data: Any, text: str | Callable[[], str]) -> None:
        if self.json:
            import json

            click.echo(json.dumps(_jsonable(data), indent=2, sort_keys=True))
        else:
            click.echo(text() if callable(text) else text)


def _jsonable(data: Any) -> Any:
    if isinstance(data, bytes):
        return data.decode("utf-8", errors="backslashreplace")
    if isinstance(data, dict):
        return {str(_jsonable(k)): _jsonable(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_jsonable(v) for v in data]
    return data


def _fail(message: str, code: int = ErrorCode.INVALID) -> NoReturn:
    click.echo(f"ctdbtool: {message}", err=True)
    sys.exit(int(code) or 1)


def _show(data: bytes) -> str:
    """Printable form of a key or value, escaping what is not printable ASCII."""
    return "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b:02X}" for b in data)


pass_ctx = click.make_pass_decorator(Ctx)


class _Group(click.Group):
    """Turns daemon errors into one line and a non-zero exit status.

    `cluster` is looked up on demand (click's lazy subcommand pattern): the
    launcher and what it imports are loaded only when it runs or `--help`
    lists it.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "cluster"])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "cluster":
            from tools.cluster_cli import cluster

            return cluster
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CtdbError as exc:
            _fail(str(exc), exc.code)
        except FileNotFoundError as exc:
            _fail(str(exc), ErrorCode.NOT_FOUND)
        except TimeoutError as exc:
            _fail(str(exc), ErrorCode.TIMEOUT)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--socket",
    "-s",
    "socket",
    metavar="PATH",
    help="daemon socket (default: $CTDB_SOCKET, else /var/run/ctdb/ctdbd.socket)",
)
@click.option(
    "-n", "pnn", type=int, metavar="PNN", help="address node PNN through the local daemon"
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def main(ctx: click.Context, socket: str | None, pnn: int | None, as_json: bool) -> None:
    """Administer a CTDB-like clustered database.

    Commands mirror Samba's `ctdb` tool. Read commands accept --json; a key
    that does not exist reads as "value": null. `ctdbtool cluster up`
    starts a local test cluster on loopback.
    """
    ctx.obj = Ctx(socket, pnn, as_json)


# -- cluster state ------------------------------------------------------------------------


def _status_text(st: dict[str, Any]) -> str:
    lines = [f"Number of nodes:{len(st['nodes'])}"]
    for n in st["nodes"]:
        mark = " (THIS NODE)" if n["this_node"] else ""
        lines.append(f"pnn:{n['pnn']} {n['address']:<16} {n['state']}{mark}")
    lines.append(f"Generation:{st['generation']}")
    lines.append(f"Size:{len(st['vnnmap'])}")
    for i, p in enumerate(st["vnnmap"]):
        lines.append(f"hash:{i} lmaster:{p}")
    mode = st["recovery_mode"]
    lines.append(f"Recovery mode:{mode} ({0 if mode == 'NORMAL' else 1})")
    lines.append(f"Leader:{st['leader']}")
    lines.append(f"Transport:{st['transport']}")
    return "\n".join(lines)


@main.command()
@pass_ctx
def status(c: Ctx) -> None:
    """Nodes and their states, generation, vnnmap, recovery mode and leader."""
    st = c.call("status")
    c.emit(st, lambda: _status_text(st))


@main.command()
@pass_ctx
def nodestatus(c: Ctx) -> None:
    """This node's state; the exit status is non-zero unless it is OK."""
    st = c.call("status")
    me = st["nodes"][st["pnn"]]
    c.emit(me, f"pnn:{me['pnn']} {me['address']:<16} {me['state']} (THIS NODE)")
    if me["flags"]:
        sys.exit(int(me["flags"]) or 1)


@main.command()
@pass_ctx
def listnodes(c: Ctx) -> None:
    """Addresses of all configured nodes, in pnn order."""
    nodes = c.call("listnodes")
    c.emit(nodes, lambda: "\n".join(n["address"] for n in nodes))


@main.command()
@pass_ctx
def pnn(c: Ctx) -> None:
    """The node number of the addressed node."""
    value = c.call("pnn")
    c.emit({"pnn": value}, str(value))


@main.command()
@click.option("--count", "-c", default=1, show_default=True, help="number of pings")
@pass_ctx
def ping(c: Ctx, count: int) -> None:
    """Round trip from the local daemon to a node (measured inside the daemon)."""
    target = c.pnn if c.pnn is not None else c.client.pnn
    results = [c.client.call("ping", pnn=target) for _ in range(count)]
    c.emit(
        results if count > 1 else results[0],
        lambda: "\n".join(f"response from {r['pnn']} time={r['rtt']:.6f} sec" for r in results),
    )


@main.command()
@pass_ctx
def uptime(c: Ctx) -> None:
    """How long the daemon has run and when the last recovery finished."""
    up = c.call("uptime")

    def text() -> str:
        import time

        lines = [
            f"Current time of node {c.pnn if c.pnn is not None else c.client.pnn}: {time.ctime()}",
            f"Ctdbd start time      : {time.ctime(up['started'])} ({up['uptime']:.0f}s ago)",
        ]
        last = up.get("last_recovery") or {}
        if last:
            lines.append(
                f"Time of last recovery: {time.ctime(last['finished'])} "
                f"(took {last['duration']:.3f}s)"
            )
        return "\n".join(lines)

    c.emit(up, text)


@main.command()
@pass_ctx
def statistics(c: Ctx) -> None:
    """Counters kept by the daemon."""
    stats = c.call("statistics")
    c.emit(stats, lambda: "\n".join(f"{k:<24} {v}" for k, v in sorted(stats.items())))


# -- tunables -------------------------------------------------------------------------------


@main.command()
@pass_ctx
def listvars(c: Ctx) -> None:
    """All tunables and their values."""
    tunables = c.call("listvars")
    c.emit(tunables, lambda: "\n".join(f"{k:<20} = {v:g}" for k, v in sorted(tunables.items())))


@main.command()
@click.argument("name")
@pass_ctx
def getvar(c: Ctx, name: str) -> None:
    """Show one tunable."""
    value = c.call("getvar", name=name)
    c.emit({"name": name, "value": value}, f"{name:<20} = {value:g}")


@main.command()
@click.argument("name")
@click.argument("value")
@pass_ctx
def setvar(c: Ctx, name: str, value: str) -> None:
    """Change a tunable at run time (on the addressed node only)."""
    c.call("setvar", name=name, value=value)


# -- databases -------------------------------------------------------------------------------


@main.command()
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


@main.command()
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


@main.command()
@click.argument("db")
@pass_ctx
def catdb(c: Ctx, db: str) -> None:
    """Dump every record of a database, from every node."""
    records = c.client.call("traverse", db=db)

    def text() -> str:
        out = []
        for key, value in records:
            out.append(f'key({len(key)}) = "{_show(key)}"')
            out.append(f'data({len(value)}) = "{_show(value)}"')
            out.append("")
        out.append(f"Dumped {len(records)} records")
        return "\n".join(out)

    c.emit([{"key": k, "value": v} for k, v in records], text)


def _read(c: Ctx, db: str, key: str) -> None:
    value = c.client.call("fetch", db=db, key=key.encode())
    c.emit(
        {"db": db, "key": key, "value": value},
        lambda: (
            f"Data: size:{len(value)} ptr:[{_show(value)}]"
            if value is not None
            else f"Data: key '{key}' not found"
        ),
    )


@main.command()
@click.argument("db")
@click.argument("key")
@pass_ctx
def readkey(c: Ctx, db: str, key: str) -> None:
    """Read one record of a volatile database (it migrates to this node)."""
    _read(c, db, key)


@main.command()
@click.argument("db")
@click.argument("key")
@click.argument("value")
@pass_ctx
def writekey(c: Ctx, db: str, key: str, value: str) -> None:
    """Write one record of a volatile database."""
    c.client.call("store", db=db, key=key.encode(), value=value.encode())


@main.command()
@click.argument("db")
@click.argument("key")
@pass_ctx
def deletekey(c: Ctx, db: str, key: str) -> None:
    """Delete one record of a volatile database."""
    c.client.call("delete", db=db, key=key.encode())


@main.command()
@click.argument("db")
@click.argument("key")
@pass_ctx
def pfetch(c: Ctx, db: str, key: str) -> None:
    """Read one record of a persistent database."""
    _read(c, db, key)


def _ptransaction(c: Ctx, db: str, ops: list[tuple[bytes, bytes | None]]) -> int:
    """One transaction, retried when another commit got there first."""
    return c.client.transact(db, dict(ops))


@main.command()
@click.argument("db")
@click.argument("key")
@click.argument("value")
@pass_ctx
def pstore(c: Ctx, db: str, key: str, value: str) -> None:
    """Write one record of a persistent database (a one-record transaction)."""
    _ptransaction(c, db, [(key.encode(), value.encode())])


@main.command()
@click.argument("db")
@click.argument("key")
@pass_ctx
def pdelete(c: Ctx, db: str, key: str) -> None:
    """Delete one record of a persistent database."""
    _ptransaction(c, db, [(key.encode(), None)])


@main.command()
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
        try:
            words = shlex.split(line)
        except ValueError as exc:
            _fail(f"line {lineno}: {exc}")
        if len(words) == 1:
            ops.append((words[0].encode(), None))
        elif len(words) == 2:
            ops.append((words[0].encode(), words[1].encode()))
        else:
            _fail(f'line {lineno}: expected "key" "value", got {len(words)} words')
    seqnum = _ptransaction(c, db, ops)
    c.emit(
        {"records": len(ops), "seqnum": seqnum},
        f"committed {len(ops)} records, sequence number {seqnum}",
    )


@main.command()
@click.argument("db")
@pass_ctx
def getdbseqnum(c: Ctx, db: str) -> None:
    """A persistent database's sequence number (bumped by every commit)."""
    seqnum = c.client.call("getdbseqnum", db=db)
    c.emit({"db": db, "seqnum": seqnum}, f"0x{seqnum:x}")


@main.command()
@click.argument("db")
@pass_ctx
def wipedb(c: Ctx, db: str) -> None:
    """Remove every record of a database on every node."""
    c.client.call("wipedb", db=db)


@main.command()
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


@main.command()
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
        _fail(f"{path} is not a backup made by backupdb: {exc}")
    c.client.call("attach", name=name, kind=kind)
    count = c.client.call("restoredb", db=name, records=records)
    c.emit({"db": name, "records": count}, f"Database {name} restored: {count} records")


# -- node administration ----------------------------------------------------------------------


def _node_command(name: str, op: str, doc: str) -> None:
    @main.command(name=name, help=doc)
    @pass_ctx
    def command(c: Ctx) -> None:
        c.call(op)


_node_command("recover", "recover", "Force a cluster recovery.")
_node_command("stop", "stop", "Stop the node: it leaves the vnnmap and serves nothing.")
_node_command("continue", "continue", "Undo `stop`.")
_node_command("disable", "disable", "Mark the node DISABLED (it keeps serving databases).")
_node_command("enable", "enable", "Undo `disable`.")
_node_command("unban", "unban", "Lift a ban early.")
_node_command("shutdown", "shutdown", "Stop the daemon.")


@main.command()
@pass_ctx
def reloadnodes(c: Ctx) -> None:
    """Make every node re-read its nodes file (new nodes may be appended)."""
    result = c.client.call("reloadnodes")
    c.emit(result, lambda: "\n".join(f"added node {a}" for a in result["added"]) or "no new nodes")


@main.command()
@click.argument("seconds", type=float)
@pass_ctx
def ban(c: Ctx, seconds: float) -> None:
    """Ban the node for SECONDS: it is inactive until the ban expires."""
    c.call("ban", seconds=seconds)


@main.command()
@click.argument("path", type=click.Path(dir_okay=False))
def keygen(path: str) -> None:
    """Create a cluster key file (random bytes, mode 0600) for `[cluster] key file`.

    Copy the same file to every node (keeping it 0600); nodes without it, or
    with another key, cannot join the cluster.
    """
    from pathlib import Path

    from ctdb.common.keyfile import create_key

    key = Path(path)
    create_key(key)
    click.echo(f"wrote a new cluster key to {key}")


if __name__ == "__main__":
    main()
