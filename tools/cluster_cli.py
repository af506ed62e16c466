"""`ctdbtool cluster ...`: start, inspect and stop a local cluster on loopback."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from tools.cluster import LocalCluster

DEFAULT_DIR = os.environ.get("CTDB_CLUSTER_DIR", "/tmp/ctdb-cluster")

_dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DIR,
    show_default=True,
    help="where configs, state, sockets and logs live",
)


def _say(message: str) -> None:
    click.echo(f"cluster: {message}", err=True)


@click.group()
def cluster() -> None:
    """A local cluster of real ctdbd processes on 127.0.0.1, 127.0.0.2, ..."""


@cluster.command()
@click.option("--nodes", "size", default=3, show_default=True, help="number of nodes")
@click.option(
    "--transport",
    default="tcp",
    show_default=True,
    type=click.Choice(["tcp", "vs"]),
    help="tcp, or vs (virtual synchrony on corosync)",
)
@click.option("--port", default=4379, show_default=True, help="node-to-node TCP port")
@click.option(
    "--base",
    default="127.0.0",
    show_default=True,
    help="first three octets of the loopback addresses (node i gets BASE.i+1)",
)
@click.option(
    "--authenticate-frames",
    is_flag=True,
    help="tcp: every node-to-node frame carries a MAC (not just the handshake)",
)
@_dir_option
def up(
    size: int, transport: str, port: int, base: str, authenticate_frames: bool, directory: Path
) -> None:
    """Start the daemons, wait until the cluster is healthy, print the sockets.

    The nodes share a new cluster key (DIR/cluster.key); a private corosync
    started for `vs` encrypts with a new authkey (DIR/corosync.authkey).
    """
    from tools.cluster import LocalCluster

    if (directory / "cluster.json").exists():
        old = LocalCluster.load(directory)
        if any(old.alive(p) for p in old.pids):
            raise click.ClickException(
                f"a cluster is already running in {directory}; `ctdbtool cluster down` first"
            )
    c = LocalCluster(
        directory,
        size=size,
        transport=transport,
        port=port,
        base=base,
        authenticate_frames=authenticate_frames,
    )
    try:
        c.up(timeout=60, progress=_say)
    except BaseException:
        _say("start failed; stopping what was started")
        c.down()
        raise
    _print_sockets(c)


def _print_sockets(c: LocalCluster) -> None:
    from ctdb.common.config import CTDB_SOCKET_NAME

    for pnn in range(c.size):
        click.echo(f"node {pnn}: {c.address(pnn)}  socket {c.socket(pnn)}  log {c.log_path(pnn)}")
    if c.cluster_key:
        click.echo(f"cluster key: {c.key_path}")
    click.echo(f"use: CTDB_SOCKET={c.socket(0)} ctdbtool status")
    for pnn in range(c.size):
        door = c.node_dir(pnn) / CTDB_SOCKET_NAME
        env = f"CTDB_BASE={c.directory} CTDB_SOCKET={door}"
        click.echo(f"Samba's ctdb, node {pnn}: {env} ctdb status")
    click.echo("(CTDB_BASE holds the nodes file `ctdb listnodes` reads; smb.conf of a clustered")
    click.echo(" smbd on node N: clustering = yes, ctdbd socket = that node's CTDB_SOCKET)")


@cluster.command()
@_dir_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(directory: Path, as_json: bool) -> None:
    """Which of the cluster's daemons run, and each one's view of the cluster."""
    from tools.cluster import LocalCluster

    c = LocalCluster.load(directory)
    report: list[dict[str, Any]] = []
    for pnn in range(c.size):
        entry: dict[str, Any] = {
            "pnn": pnn,
            "address": c.address(pnn),
            "running": c.alive(pnn),
            "pid": c.pids.get(pnn),
            "socket": c.socket(pnn),
        }
        if entry["running"]:
            try:
                st = c.status(pnn)
                entry.update(
                    recovery_mode=st["recovery_mode"],
                    generation=st["generation"],
                    leader=st["leader"],
                    vnnmap=st["vnnmap"],
                    state=st["nodes"][pnn]["state"],
                )
            except Exception as exc:
                entry["error"] = str(exc)
        report.append(entry)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for e in report:
        if not e["running"]:
            click.echo(f"node {e['pnn']} {e['address']:<12} not running")
        elif "error" in e:
            click.echo(f"node {e['pnn']} {e['address']:<12} pid {e['pid']} error: {e['error']}")
        else:
            click.echo(
                f"node {e['pnn']} {e['address']:<12} pid {e['pid']} {e['state']} "
                f"{e['recovery_mode']} generation {e['generation']} "
                f"leader {e['leader']} vnnmap {e['vnnmap']}"
            )
    if not all(e["running"] for e in report):
        sys.exit(1)


@cluster.command()
@_dir_option
def down(directory: Path) -> None:
    """Stop exactly the daemons (and private corosync) this cluster started."""
    from tools.cluster import LocalCluster

    c = LocalCluster.load(directory)
    c.down()
    _say(f"stopped the cluster in {directory}")


@cluster.command()
@click.option("--nodes", "size", default=3, show_default=True)
@click.option("--transport", default="tcp", show_default=True, type=click.Choice(["tcp", "vs"]))
@_dir_option
def demo(size: int, transport: str, directory: Path) -> None:
    """Start a cluster, do real work on it, show its status, leave it running."""
    from tools.cluster import LocalCluster
    from tools.demo import run_demo

    if (directory / "cluster.json").exists():
        old = LocalCluster.load(directory)
        if any(old.alive(p) for p in old.pids):
            _say(f"stopping the cluster already running in {directory}")
            old.down()
    c = LocalCluster(directory, size=size, transport=transport)
    try:
        c.up(timeout=60, progress=_say)
        run_demo(c, click.echo)
    except BaseException:
        _say("demo failed; stopping the cluster")
        c.down()
        raise
    _print_sockets(c)
    click.echo(f"stop it with: ctdbtool cluster down --dir {directory}")
