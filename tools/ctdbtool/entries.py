"""`ctdbtool` commands on entry lists, conditional append (loaded when one of them runs)."""

from __future__ import annotations

import sys
from typing import Any

import click

from ctdb.client import Appended, Entry
from ctdb.common.errors import CtdbError, ErrorCode
from tools.ctdbtool.common import Ctx, fail, pass_ctx

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
        fail(f"{what} {value!r} is not hex")


def _fields(value: str, count: int, what: str) -> list[str]:
    fields = [f.strip() for f in value.split(",")]
    if len(fields) != count or not all(fields):
        fail(f"{what} takes {count} comma-separated fields, got {value!r}")
    return fields


def _number(value: str, what: str) -> int:
    try:
        return int(value, 0)
    except ValueError:
        fail(f"{what} {value!r} is not a number")


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
            fail(f"{what} {field!r}: letters are {''.join(bits)} (or a number, or - for none)")
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
        fail(f"--byte-range lock type {kind!r} is not read or write")
    first, length = _number(start, "start"), _number(size, "size")
    if not (0 <= first < 2**64 and 0 <= length < 2**64):
        fail("--byte-range start and size are 0 .. 2**64-1")
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


@click.command()
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
        fail("give one of --share-mode and --byte-range")
    if builders:
        if arg is not None or as_hex:
            fail("--share-mode and --byte-range build the payload: no PAYLOAD, no --hex")
        arg = int(payload) if payload is not None and payload.isdigit() else None
        if payload is not None and arg is None:
            fail("--share-mode and --byte-range build the payload: no PAYLOAD")
        data = _share_mode(share_mode) if share_mode is not None else _byte_range(byte_range or "")
        condition = condition or ("share_mode" if share_mode is not None else "byte_range")
    elif payload is None:
        fail("missing PAYLOAD (or --share-mode / --byte-range)")
    else:
        data = _bytes_arg(payload, as_hex, "PAYLOAD")
    result = c.client.cond_append(db, key.encode(), data, condition or "always", arg)
    c.emit(_appended_json(key, result), lambda: _appended_text(result))
    if not result.appended:
        sys.exit(CONFLICT_EXIT)
    if not once:
        _hold(c, key.encode(), result)


@click.command()
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


@click.command()
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
