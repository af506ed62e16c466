"""The commands of `ctdbtool`, one click group modelled on Samba's `ctdb`.

The tool talks to the local daemon's socket (`--socket`, else $CTDB_SOCKET,
else the standard location) and reaches other nodes through it with `-n
PNN`. Every read command has `--json`. Errors print one line and exit with
the error's code (an errno value, never 0). Admins run the tool in loops,
so a module only some commands need (json, msgpack, pathlib, the cluster
launcher) is imported by those commands, not by the tool, and the commands
on records (`records.py`) and entry lists (`entries.py`) are modules of
their own, loaded when one of them runs. `common.py` holds what every
command shares: the connection context, output and errors.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from ctdb.common.errors import CtdbError, ErrorCode
from tools.ctdbtool.common import Ctx, fail, pass_ctx

#: Commands defined in a module of their own, imported when one of them runs
#: (or `--help` lists them): a one-shot `ctdbtool pnn` does not load them.
LAZY = {
    **dict.fromkeys(
        (
            "getdbmap",
            "attach",
            "catdb",
            "readkey",
            "writekey",
            "deletekey",
            "pfetch",
            "pstore",
            "pdelete",
            "ptrans",
            "getdbseqnum",
            "wipedb",
            "backupdb",
            "restoredb",
        ),
        "tools.ctdbtool.records",
    ),
    **dict.fromkeys(("append", "entries", "unappend"), "tools.ctdbtool.entries"),
    "cluster": "tools.cluster_cli",
}


class _Group(click.Group):
    """Turns daemon errors into one line and a non-zero exit status.

    The commands in LAZY are looked up on demand (click's lazy subcommand
    pattern): their module and what it imports are loaded only when one of
    them runs or `--help` lists them.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = LAZY.get(cmd_name)
        if module is not None:
            command: click.Command = getattr(importlib.import_module(module), cmd_name)
            return command
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CtdbError as exc:
            fail(str(exc), exc.code)
        except FileNotFoundError as exc:
            fail(str(exc), ErrorCode.NOT_FOUND)
        except TimeoutError as exc:
            fail(str(exc), ErrorCode.TIMEOUT)


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
def cli(ctx: click.Context, socket: str | None, pnn: int | None, as_json: bool) -> None:
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
    # (a daemon from before the versions had numbers says none: it speaks 2)
    lines.append(f"Node protocol:{st.get('node_protocol', 2)}")
    return "\n".join(lines)


@cli.command()
@pass_ctx
def status(c: Ctx) -> None:
    """Nodes and their states, generation, vnnmap, recovery mode and leader."""
    st = c.call("status")
    c.emit(st, lambda: _status_text(st))


@cli.command()
@pass_ctx
def nodestatus(c: Ctx) -> None:
    """This node's state; the exit status is non-zero unless it is OK."""
    st = c.call("status")
    me = st["nodes"][st["pnn"]]
    c.emit(me, f"pnn:{me['pnn']} {me['address']:<16} {me['state']} (THIS NODE)")
    if me["flags"]:
        sys.exit(int(me["flags"]) or 1)


@cli.command()
@pass_ctx
def listnodes(c: Ctx) -> None:
    """Addresses of all configured nodes, in pnn order."""
    nodes = c.call("listnodes")
    c.emit(nodes, lambda: "\n".join(n["address"] for n in nodes))


@cli.command()
@pass_ctx
def pnn(c: Ctx) -> None:
    """The node number of the addressed node."""
    value = c.call("pnn")
    c.emit({"pnn": value}, str(value))


@cli.command()
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


@cli.command()
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


@cli.command()
@pass_ctx
def statistics(c: Ctx) -> None:
    """Counters kept by the daemon."""
    stats = c.call("statistics")
    c.emit(stats, lambda: "\n".join(f"{k:<24} {v}" for k, v in sorted(stats.items())))


# -- tunables -------------------------------------------------------------------------------


@cli.command()
@pass_ctx
def listvars(c: Ctx) -> None:
    """All tunables and their values."""
    tunables = c.call("listvars")
    c.emit(tunables, lambda: "\n".join(f"{k:<20} = {v:g}" for k, v in sorted(tunables.items())))


@cli.command()
@click.argument("name")
@pass_ctx
def getvar(c: Ctx, name: str) -> None:
    """Show one tunable."""
    value = c.call("getvar", name=name)
    c.emit({"name": name, "value": value}, f"{name:<20} = {value:g}")


@cli.command()
@click.argument("name")
@click.argument("value")
@pass_ctx
def setvar(c: Ctx, name: str, value: str) -> None:
    """Change a tunable at run time (on the addressed node only)."""
    c.call("setvar", name=name, value=value)


# -- node administration ----------------------------------------------------------------------


def _node_command(name: str, op: str, doc: str) -> None:
    @cli.command(name=name, help=doc)
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


@cli.command()
@pass_ctx
def reloadnodes(c: Ctx) -> None:
    """Make every node re-read its nodes file (new nodes may be appended)."""
    result = c.client.call("reloadnodes")
    c.emit(result, lambda: "\n".join(f"added node {a}" for a in result["added"]) or "no new nodes")


@cli.command()
@click.argument("seconds", type=float)
@pass_ctx
def ban(c: Ctx, seconds: float) -> None:
    """Ban the node for SECONDS: it is inactive until the ban expires."""
    c.call("ban", seconds=seconds)


@cli.command()
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
