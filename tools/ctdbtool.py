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

from ctdb.client import Appended, Client, Entry, default_socket
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


# -- entry lists (conditional append) ---------------------------------------------------------

#: Exit status of `append` when the condition did not hold: an answer, not an error,
#: so it is none of the errno values errors exit with.
CONFLICT_EXIT = 3


def _payload_text(payload: bytes) -> str:
    """An entry's payload for people and --json: printable UTF-8 as is, anything else as hex."""
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        return payload.hex()
    return text if text.isprintable() else payload.hex()


def _entry_rows(entries: list[Entry]) -> list[dict[str, Any]]:
    return [
        {"pnn": e.pnn, "client": e.client, "payload": _payload_text(e.payload)} for e in entries
    ]


def _entries_table(entries: list[Entry]) -> str:
    if not entries:
        return "(no entries)"
    lines = [f"{'index':>5} {'pnn':>4} {'client':>20}  payload"]
    for i, e in enumerate(entries):
        lines.append(f"{i:>5} {e.pnn:>4} {e.client:>20}  {_payload_text(e.payload)}")
    return "\n".join(lines)


def _bytes_arg(value: str, as_hex: bool, what: str) -> bytes:
    if not as_hex:
        return value.encode()
    try:
        return bytes.fromhex(value)
    except ValueError:
        _fail(f"{what} {value!r} is not hex")


def _fields(value: str, count: int, what: str) -> list[str]:
    fields = [f.strip() for f in value.split(",")]
    if len(fields) != count or not all(fields):
        _fail(f"{what} takes {count} comma-separated fields, got {value!r}")
    return fields


def _number(value: str, what: str) -> int:
    try:
        return int(value, 0)
    except ValueError:
        _fail(f"{what} {value!r} is not a number")


def _share_mode(value: str) -> bytes:
    """ACCESS,SHARE: letters (access r w a x d; share r w d; `-` for none) or numbers."""
    from ctdb.engines import conditions as cond

    access_bits = {
        "r": cond.FILE_READ_DATA,
        "w": cond.FILE_WRITE_DATA,
        "a": cond.FILE_APPEND_DATA,
        "x": cond.FILE_EXECUTE,
        "d": cond.DELETE_ACCESS,
    }
    share_bits = {
        "r": cond.FILE_SHARE_READ,
        "w": cond.FILE_SHARE_WRITE,
        "d": cond.FILE_SHARE_DELETE,
    }

    def mask(field: str, bits: dict[str, int], what: str) -> int:
        if field[0].isdigit():
            return _number(field, what)
        if field == "-":
            return 0
        unknown = set(field) - set(bits)
        if unknown:
            _fail(f"{what} {field!r}: letters are {''.join(bits)} (or a number, or - for none)")
        return sum(bits[letter] for letter in set(field))

    access, share = _fields(value, 2, "--share-mode")
    return cond.share_mode_payload(
        mask(access, access_bits, "access"), mask(share, share_bits, "share")
    )


def _byte_range(value: str) -> bytes:
    """START,SIZE,read|write."""
    from ctdb.engines import conditions as cond

    start, size, kind = _fields(value, 3, "--byte-range")
    types = {"read": cond.READ_LOCK, "write": cond.WRITE_LOCK}
    if kind not in types:
        _fail(f"--byte-range lock type {kind!r} is not read or write")
    first, length = _number(start, "start"), _number(size, "size")
    if not (0 <= first < 2**64 and 0 <= length < 2**64):
        _fail("--byte-range start and size are 0 .. 2**64-1")
    return cond.byte_range_payload(first, length, types[kind])


def _appended_json(key: str, r: Appended) -> dict[str, Any]:
    data: dict[str, Any] = {
        "key": key,
        "appended": r.appended,
        "rsn": r.rsn,
        "owner": {"pnn": r.owner[0], "client": r.owner[1]},
        "index": r.index,
    }
    if not r.appended:
        data["reason"] = r.reason
        data["entries"] = _entry_rows(r.entries or [])
    return data


def _appended_text(r: Appended) -> str:
    owner = f"{r.owner[0]}:{r.owner[1]}"
    if r.appended:
        return f"appended at index {r.index}, owner {owner}, rsn {r.rsn}"
    blocking = "" if r.index is None else f" (blocked by entry {r.index})"
    return f"conflict: {r.reason}{blocking}; rsn {r.rsn}\n{_entries_table(r.entries or [])}"


def _hold(c: Ctx, key: bytes, r: Appended) -> None:
    """Keep the connection, and with it the entry, until SIGINT or SIGTERM."""
    import signal

    import msgpack

    from ctdb.protocol.client import ENTRY_HEAD_SRVID

    def stop(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    note = "" if r.index == 0 else f" (index {r.index}; told on stderr if it becomes first)"
    click.echo(f"holding the entry{note}; Ctrl-C or SIGTERM removes it", err=True)
    first = r.index == 0
    try:
        while True:
            try:
                message = c.client.wait_message(timeout=3600)
            except CtdbError as exc:
                if exc.code == ErrorCode.TIMEOUT:
                    continue
                raise CtdbError(exc.code, f"{exc.message}: the entry is gone") from None
            # The daemon also tells the appender of a list's first entry: not news here.
            if message.srvid == ENTRY_HEAD_SRVID and msgpack.unpackb(message.data)[1] == key:
                if not first:
                    click.echo("the entry is now the first of the list", err=True)
                first = True
    except KeyboardInterrupt:
        c.client.close()
        click.echo("released", err=True)


@main.command()
@click.argument("db")
@click.argument("key")
@click.argument("payload", required=False)
@click.argument("arg", required=False, type=int)
@click.option(
    "--if",
    "condition",
    metavar="CONDITION",
    help="always (default), empty, rsn_equals N, max_entries N, share_mode, byte_range",
)
@click.option("--hex", "as_hex", is_flag=True, help="PAYLOAD is hex, for binary entries")
@click.option(
    "--share-mode",
    metavar="ACCESS,SHARE",
    help="build a share_mode payload: letters (access rwaxd, share rwd, - for none) or numbers",
)
@click.option("--byte-range", metavar="START,SIZE,read|write", help="build a byte_range payload")
@click.option("--once", is_flag=True, help="append and exit (the entry goes at once)")
@pass_ctx
def append(
    c: Ctx,
    db: str,
    key: str,
    payload: str | None,
    arg: int | None,
    condition: str | None,
    as_hex: bool,
    share_mode: str | None,
    byte_range: str | None,
    once: bool,
) -> None:
    """Append PAYLOAD to KEY's entry list if CONDITION (with ARG) holds.

    An entry belongs to the connection that appended it and goes when it
    closes: so this prints the outcome and then HOLDS the entry (a lock,
    an open, a place in a queue) until interrupted (Ctrl-C or SIGTERM),
    telling on stderr when the entry becomes the first of the list (a FIFO
    lock passed to it). --once appends and exits, and the entry goes with
    it.

    \b
    Examples:
      ctdbtool append locks R1 me --if empty       # an exclusive lock
      ctdbtool append locks Q me                   # queue up (--if always)
      ctdbtool append locks K x --if rsn_equals 7
      ctdbtool append files f1 --share-mode r,r    # share_mode implied
      ctdbtool append brl f1 --byte-range 0,100,write

    With --share-mode or --byte-range there is no PAYLOAD (ARG follows KEY)
    and --if defaults to that condition. Exit status: 0 appended, 3 conflict
    (the condition did not hold: the reason and the current entries are
    printed), otherwise the error's errno value.
    """
    builders = [b for b in (share_mode, byte_range) if b is not None]
    if len(builders) > 1:
        _fail("give one of --share-mode and --byte-range")
    if builders:
        if arg is not None or as_hex:
            _fail("--share-mode and --byte-range build the payload: no PAYLOAD, no --hex")
        arg = int(payload) if payload is not None and payload.isdigit() else None
        if payload is not None and arg is None:
            _fail("--share-mode and --byte-range build the payload: no PAYLOAD")
        data = _share_mode(share_mode) if share_mode is not None else _byte_range(byte_range or "")
        condition = condition or ("share_mode" if share_mode is not None else "byte_range")
    elif payload is None:
        _fail("missing PAYLOAD (or --share-mode / --byte-range)")
    else:
        data = _bytes_arg(payload, as_hex, "PAYLOAD")
    result = c.client.cond_append(db, key.encode(), data, condition or "always", arg)
    c.emit(_appended_json(key, result), lambda: _appended_text(result))
    if not result.appended:
        sys.exit(CONFLICT_EXIT)
    if not once:
        _hold(c, key.encode(), result)


@main.command()
@click.argument("db")
@click.argument("key")
@pass_ctx
def entries(c: Ctx, db: str, key: str) -> None:
    """KEY's entry list and RSN, read where the record lives (it does not move).

    A payload shows as text when it is printable UTF-8, otherwise as hex
    (share_mode and byte_range payloads are binary), also in --json:
    {"key": KEY, "rsn": N, "entries": [{"pnn": P, "client": C, "payload": ...}]}.
    """
    view = c.client.entries(db, key.encode())
    c.emit(
        {"key": key, "rsn": view.rsn, "entries": _entry_rows(view.entries)},
        lambda: f"rsn {view.rsn}\n{_entries_table(view.entries)}",
    )


def _owner(value: str) -> tuple[int, int]:
    pnn, sep, client = value.partition(":")
    if not (sep and pnn.isdigit() and client.isdigit()):
        raise click.BadParameter(f"{value!r} is not PNN:CLIENT (see `ctdbtool entries`)")
    return int(pnn), int(client)


@main.command()
@click.argument("db")
@click.argument("key")
@click.option(
    "--owner",
    required=True,
    metavar="PNN:CLIENT",
    callback=lambda _ctx, _param, value: _owner(value),
    help="whose entries to remove (as `ctdbtool entries` shows them)",
)
@click.option("--match", metavar="PAYLOAD", help="only the entries with this payload")
@click.option("--hex", "as_hex", is_flag=True, help="--match is hex")
@pass_ctx
def unappend(
    c: Ctx, db: str, key: str, owner: tuple[int, int], match: str | None, as_hex: bool
) -> None:
    """Remove another client's entries from KEY's list: administration.

    An entry belongs to the connection that appended it, and each run of
    this tool is a new connection that owns nothing, so --owner is
    required: it names the entries to remove (a stuck lock holder's, for
    instance). An owner's own entries go when its connection closes.
    """
    wanted = None if match is None else _bytes_arg(match, as_hex, "--match")
    removed = c.client.remove_entries(db, key.encode(), match=wanted, owner=owner)
    c.emit({"key": key, "removed": removed}, f"removed {removed} entries")


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
