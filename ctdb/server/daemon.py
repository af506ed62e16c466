"""`ctdbd`: one cluster node as a process.

Reads the config, builds the transport named there, the node logic and the
client socket, and runs them on one asyncio event loop (uvloop when
installed) until SIGTERM/SIGINT or a `shutdown` control.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from ctdb.common import config as config_mod
from ctdb.common.allocator import steady_heap
from ctdb.common.errors import CtdbError
from ctdb.protocol.messages import NODE_PROTOCOL
from ctdb.server.ctdb_sessions import CtdbProtocolServer
from ctdb.server.node import Node
from ctdb.server.serving_file import FILE_NAME as SERVING_FILE
from ctdb.server.serving_file import ServingFile
from ctdb.server.sessions import ClientServer
from transport.base import TransportError, TransportOptions, transport_class

log = logging.getLogger("ctdbd")


def _setup_logging(cfg: config_mod.Config) -> None:
    handler: logging.Handler
    if cfg.log_file is not None:
        cfg.log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(cfg.log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s ctdbd[{cfg.pnn}] %(name)s %(levelname)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.log_level)


#: seconds each part of a shutdown may take before the daemon goes on without it
SHUTDOWN_LIMIT = 5.0


async def run(cfg: config_mod.Config) -> str | None:
    """Run the node until it is told to stop: None, or why it stopped by
    itself (`Node.failure`)."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    log.info(
        "node protocol %d: nodes whose daemons speak another count as disconnected",
        NODE_PROTOCOL,
    )
    _log_link_security(cfg)
    tunables = dict(cfg.tunables)
    options = TransportOptions(
        port=cfg.port,
        keepalive_interval=tunables.get(
            "KeepaliveInterval", config_mod.tunable_default("KeepaliveInterval")
        ),
        keepalive_limit=int(
            tunables.get("KeepaliveLimit", config_mod.tunable_default("KeepaliveLimit"))
        ),
        cluster_key=cfg.cluster_key,
        authenticate_frames=cfg.authenticate_frames,
        protocol=NODE_PROTOCOL,
        extra=cfg.transport_extra,
    )
    transport = transport_class(cfg.transport)(cfg.pnn, cfg.nodes, options)
    node = Node(
        cfg.pnn,
        cfg.nodes,
        transport,
        cfg.state_dir,
        tunables=tunables,
        cluster_lock=cfg.cluster_lock,
        nodes_file=cfg.nodes_file,
    )
    # Before any volatile file is recreated: clients of a previous run stop using theirs.
    node.serving_file = ServingFile(cfg.state_dir / SERVING_FILE)
    server = ClientServer(node, cfg.socket_path, cfg.socket_mode)
    samba_door = CtdbProtocolServer(node, cfg.ctdb_socket_path, cfg.socket_mode)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.shutdown_requested.set)
    pidfile = cfg.run_dir / "ctdbd.pid"
    await node.start()
    await server.start()
    await samba_door.start()
    pidfile.write_text(f"{os.getpid()}\n")
    log.info(
        "node %d (%s) up: transport %s, socket %s, CTDB-protocol socket %s",
        cfg.pnn,
        cfg.address,
        cfg.transport,
        cfg.socket_path,
        cfg.ctdb_socket_path,
    )
    try:
        await node.shutdown_requested.wait()
        log.info("shutting down" if node.failure is None else f"shutting down: {node.failure}")
    finally:
        steps: list[Step] = [
            ("the CTDB socket", samba_door.stop),
            ("the client socket", server.stop),
            ("the node", node.stop),
        ]
        await _stop_within(SHUTDOWN_LIMIT, steps)
        pidfile.unlink(missing_ok=True)
    return node.failure


#: One part of the shutdown: what it stops, and how.
Step = tuple[str, Callable[[], Awaitable[None]]]


async def _stop_within(seconds: float, steps: Sequence[Step]) -> None:
    """Run the shutdown `steps` in order, each within `seconds`: a daemon told
    to stop stops, and a step that overruns (logged with what every task was
    doing) does not keep the next from closing what it holds."""
    for name, stop in steps:
        try:
            await asyncio.wait_for(stop(), seconds)
        except TimeoutError:
            stacks = []
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    out = io.StringIO()
                    task.print_stack(limit=8, file=out)
                    stacks.append(out.getvalue())
            log.error(
                "shutdown: stopping %s took more than %.0fs; tasks:\n%s",
                name,
                seconds,
                "\n".join(stacks),
            )


def _log_link_security(cfg: config_mod.Config) -> None:
    """Say at start-up who can talk to this node as a peer."""
    if cfg.transport == "vs":
        log.info("node links are corosync's: its crypto_cipher/crypto_hash settings protect them")
    elif cfg.cluster_key is None:
        log.warning(
            "node links are UNAUTHENTICATED: any process that can reach port %d from another "
            "node's address can act as that node; set [cluster] key file (ctdbtool keygen)",
            cfg.port,
        )
    else:
        log.info(
            "node links authenticated with the cluster key in %s%s",
            cfg.key_file,
            ", every frame MAC'd" if cfg.authenticate_frames else "",
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ctdbd",
        description="Clustered trivial database daemon: one node of a CTDB-like cluster.",
    )
    parser.add_argument("--config", "-c", required=True, type=Path, help="INI config file")
    parser.add_argument(
        "--no-uvloop", action="store_true", help="use the standard asyncio event loop"
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"ctdbd: node protocol {NODE_PROTOCOL}",
        help="the node protocol version this daemon speaks (nodes of another version "
        "count as disconnected: see Upgrading in the README), and exit",
    )
    ns = parser.parse_args(argv)
    try:
        cfg = config_mod.load(ns.config)
    except CtdbError as exc:
        print(f"ctdbd: {exc.message}", file=sys.stderr)
        return 2
    _setup_logging(cfg)
    if not steady_heap():
        log.info("no glibc mallopt: heap left at the C library's defaults")
    try:
        if ns.no_uvloop:
            failure = asyncio.run(run(cfg))
        else:
            try:
                import uvloop
            except ImportError:
                failure = asyncio.run(run(cfg))
            else:
                failure = uvloop.run(run(cfg))
    except (CtdbError, TransportError, OSError) as exc:
        # A refusal, or the host's trouble (a full disk, a socket in use):
        # one line, as every tool of ours says it. A bug keeps its traceback.
        log.error("%s", exc)
        print(f"ctdbd: {exc}", file=sys.stderr)
        return 1
    if failure is not None:
        print(f"ctdbd: stopped: {failure} (the log has its traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
