"""One cluster member for the transport conformance suite.

Run as a script (``.venv/bin/python tests/transport/member.py --transport tcp
--pnn 0 --nodes 127.0.0.1,127.0.0.2 --port 4379``) it starts one transport,
prints every delivery and view as a JSON line on stdout and follows JSON
commands from stdin. The suite runs the TCP and VS members this way because a
member failure is only honest when a real process dies by SIGKILL: sockets
and corosync connections are then torn down by the kernel, not by our code.

The same `execute`/`Recorder` code also drives in-process (memory) members,
so every backend is exercised by the same command implementation.

Payloads are ``label|filler``; the filler is derived from the label, so the
receiver can check integrity of large messages without shipping them back.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import sys
from collections.abc import Callable
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from ctdb.server.liveness import DEPARTURE_WAIT  # noqa: E402
from transport.base import Transport, TransportOptions, View, transport_class  # noqa: E402

Event = dict[str, Any]


def make_payload(label: str, size: int = 0) -> bytes:
    """`label|filler`, padded to `size` bytes (at least the header)."""
    head = label.encode() + b"|"
    n = max(0, size - len(head))
    digest = hashlib.sha256(head).digest()
    return head + (digest * (n // len(digest) + 1))[:n]


def check_payload(payload: bytes) -> tuple[str, bool]:
    """The label and whether the filler is intact."""
    head, sep, _ = payload.partition(b"|")
    if not sep:
        return payload[:40].decode(errors="replace"), False
    label = head.decode(errors="replace")
    return label, make_payload(label, len(payload)) == payload


class Recorder:
    """Turns transport callbacks into events (dicts) handed to `emit`."""

    def __init__(self, transport: Transport, emit: Callable[[Event], None]) -> None:
        self.transport = transport
        self.emit = emit
        transport.on_message = self.on_message
        transport.on_view = self.on_view

    def on_message(self, src: int, payload: bytes) -> None:
        label, ok = check_payload(payload)
        self.emit({"ev": "msg", "src": src, "label": label, "size": len(payload), "ok": ok})

    def on_view(self, view: View) -> None:
        self.emit({"ev": "view", "id": view.view_id, "members": list(view.members)})


def max_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def execute(
    t: Transport, cmd: dict[str, Any], pending: Callable[[], int] | None = None
) -> dict[str, Any]:
    """Carry out one command; returns its result (sent back as the `done` event).

    Commands: broadcast / send (`prefix`, `count`, `size`, optional `start`,
    `pause_every` + `pause` to spread a stream over time, `drain`), flood
    (send with `drain()` after every message: the back-pressure check),
    left_in_order (which of `peers` left the view by closing in order, once
    the transport knows: `Transport.departed`).
    """
    kind = cmd["cmd"]
    count = int(cmd.get("count", 1))
    size = int(cmd.get("size", 0))
    start = int(cmd.get("start", 1))
    prefix = str(cmd.get("prefix", f"n{t.pnn}"))
    pause_every = int(cmd.get("pause_every", 0))
    pause = float(cmd.get("pause", 0.0))
    if kind in ("broadcast", "send"):
        for i in range(start, start + count):
            payload = make_payload(f"{prefix}:{i}", size)
            if kind == "broadcast":
                t.broadcast(payload)
            else:
                t.send(int(cmd["dst"]), payload)
            if cmd.get("drain"):
                await t.drain()
            if pause_every and i % pause_every == 0:
                await asyncio.sleep(pause)
        return {}
    if kind == "flood":
        rss_before = max_rss_kb()
        max_pending = 0
        for i in range(start, start + count):
            t.send(int(cmd["dst"]), make_payload(f"{prefix}:{i}", size))
            await t.drain()
            if pending is not None:
                max_pending = max(max_pending, pending())
        return {"rss_growth_kb": max_rss_kb() - rss_before, "max_pending": max_pending}
    if kind == "left_in_order":  # asked as a frozen tcp member asks it
        for p in cmd["peers"]:
            await t.departed(p, DEPARTURE_WAIT)
        return {"left_in_order": [p for p in cmd["peers"] if t.left_in_order(p)]}
    raise ValueError(f"unknown command {kind!r}")


async def serve(args: argparse.Namespace) -> int:
    extra = dict(item.split("=", 1) for item in args.extra)
    options = TransportOptions(port=args.port, extra=extra)
    if args.keepalive:
        options.keepalive_interval = args.keepalive
    t = transport_class(args.transport)(args.pnn, args.nodes.split(","), options)
    out = sys.stdout

    def emit(event: Event) -> None:
        out.write(json.dumps(event) + "\n")
        out.flush()

    Recorder(t, emit)
    await t.start()
    emit({"ev": "ready", "pid": os.getpid()})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: set[asyncio.Task[None]] = set()

    async def run(cmd: dict[str, Any]) -> None:
        try:
            result = await execute(t, cmd)
            emit({"ev": "done", "id": cmd.get("id"), **result})
        except Exception as exc:  # report, do not die: the test decides
            emit({"ev": "error", "id": cmd.get("id"), "error": repr(exc)})

    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        if cmd["cmd"] == "stop":
            break
        task = asyncio.create_task(run(cmd))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    for task in list(tasks):
        task.cancel()
    await t.stop()
    emit({"ev": "stopped"})
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", required=True)
    parser.add_argument("--pnn", type=int, required=True)
    parser.add_argument("--nodes", required=True, help="comma-separated node addresses")
    parser.add_argument("--port", type=int, default=4379)
    parser.add_argument("--keepalive", type=float, default=0.0)
    parser.add_argument("--extra", action="append", default=[], help="KEY=VALUE option")
    return asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
