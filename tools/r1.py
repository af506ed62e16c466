"""Dake's R1 scenario (CTDB mailing list, 2006), on a local 3-node cluster.

Clients on nodes A, B and C ask for lock R1 at the same moment, with the
fair FIFO lock of `ctdb.client.entry_locks` (conditional append under
`always`: the queue's first entry holds). Each prints who won and the
queue as its node sees it. Then the holder's node is killed with SIGKILL:
the cluster purges the dead node's entries, and the next in line, told by
the head message, holds the lock. Then it releases and the last one holds.
Timings: how long until the first winner was decided, the hand-over after
the kill, and an ordinary hand-over (a release) for comparison. The kill
of a daemon is noticed at once on one host (its links close, it leaves
its CPG group); a machine that loses power is noticed only after the
keepalive or token timeout, which the hand-over here does not include.

The tcp limitation, shown rather than hidden: on tcp an entry list lives
at the record's dmaster, which for a list is the key's lmaster (appends
never move it), and a volatile record dies with its dmaster as in CTDB.
If the holder's node is also that home node, the kill takes the whole
queue with it: the waiters find their entries gone and queue again, in
whatever order their re-appends arrive, so the lock still passes on but
FIFO order across the failure is not kept. On tcp the client on the home
node also answers its own append locally and so nearly always wins the
race, and the kill then loses the queue: that is the tcp answer to Dake's
scenario. `--spare-home` lets the client on the home node queue after the
other two instead, so the holder is elsewhere and the queue survives its
kill on tcp too. On vs every node holds the list and the queue survives
any one node. `--persistent` keeps the lock in a persistent database, where
every change of the list is a commit every node makes: the queue survives
the kill on tcp as well, wherever the holder ran, for a commit per change.

    python -m tools.r1 [--transport tcp|vs] [--key R1] [--spare-home] [--persistent] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from ctdb.client import Client, Ticket
from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.storage.placement import lmaster
from tools.cluster import LocalCluster, free_port

NAMES = "ABC"
#: How the survivors learn of the kill here, and how that differs from losing a machine.
DETECTION = {
    "tcp": "the killed daemon's TCP links close at once, so the survivors know at once; "
    "a machine that loses power is noticed after KeepaliveInterval x KeepaliveLimit (5 s)",
    "vs": "all nodes here share one corosync, so the killed daemon leaves its CPG group "
    "at once; a machine that loses power is noticed after corosync's token timeout",
}
DB = "r1_locks"
#: Seconds a waiter waits for the lock before giving up (a failed run, not a hang).
WAIT = 120.0


@dataclass
class Contender:
    """One node's client in the race."""

    pnn: int
    client: Client
    ticket: Ticket | None = None
    #: seconds from the start signal to its append's answer
    queued_after: float = 0.0
    #: its ticket when it came to hold the lock, and when (monotonic)
    held: Ticket | None = None
    held_at: float = 0.0
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def name(self) -> str:
        return NAMES[self.pnn]


def new_cluster(directory: Path, transport: str) -> LocalCluster:
    base = f"127.{random.randint(10, 250)}.{random.randint(0, 250)}"
    return LocalCluster(
        directory,
        size=3,
        transport=transport,
        port=free_port([f"{base}.{i + 1}" for i in range(3)]),
        base=base,
        log_level="WARNING",
    )


def owners_by_name(contenders: list[Contender]) -> dict[tuple[int, int], str]:
    return {c.ticket.owner: c.name for c in contenders if c.ticket is not None}


def queue_seen(c: Contender, key: bytes, names: dict[tuple[int, int], str]) -> list[str]:
    return [names.get(e.owner, "?") for e in c.client.entries(DB, key).entries]


def race(contenders: list[Contender], key: bytes) -> None:
    """Every contender appends at once (a barrier releases them together)."""
    start: list[float] = []
    barrier = threading.Barrier(len(contenders), action=lambda: start.append(time.monotonic()))

    def join(c: Contender) -> None:
        try:
            barrier.wait()
            c.ticket = c.client.enqueue(DB, key, payload=c.name)
            c.queued_after = time.monotonic() - start[0]
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            c.error = exc

    threads = [threading.Thread(target=join, args=(c,), daemon=True) for c in contenders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    for c in contenders:
        if c.error is not None:
            raise c.error
        if c.ticket is None:
            raise CtdbError(ErrorCode.TIMEOUT, f"{c.name} could not queue")


def wait_turn(c: Contender) -> None:
    """In its own thread: wait until it holds the lock."""
    try:
        assert c.ticket is not None
        c.held = c.client.wait_turn(c.ticket, timeout=WAIT)
        c.held_at = time.monotonic()
    except BaseException as exc:  # noqa: BLE001 - reported by the main thread
        c.error = exc
    finally:
        c.done.set()


def first_to_hold(waiters: list[Contender]) -> Contender:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        holding = [c for c in waiters if c.done.is_set()]
        if holding:
            c = min(holding, key=lambda c: c.held_at if c.held else float("inf"))
            if c.error is not None:
                raise c.error
            return c
        time.sleep(0.001)
    raise CtdbError(ErrorCode.TIMEOUT, "nobody took the lock over")


def how(c: Contender) -> str:
    assert c.held is not None
    return "told by the head message" if c.held.told else "found by re-reading the list"


def run(
    transport: str,
    key: bytes,
    say: Callable[[str], None],
    spare_home: bool = False,
    persistent: bool = False,
) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="ctdb-r1-"))
    cluster: LocalCluster | None = None
    contenders: list[Contender] = []
    try:
        cluster = new_cluster(directory, transport)
        say(f"starting a 3-node {transport} cluster on {cluster.base}.1-3 in {directory}")
        cluster.up(timeout=60)  # after the assignment: an interrupted start is cleaned up too
        home = lmaster(key, [0, 1, 2])
        contenders = [Contender(p, cluster.client(p, timeout=WAIT)) for p in range(3)]
        contenders[0].client.attach(DB, "persistent" if persistent else "volatile")
        if persistent:
            say(f"{transport}: every node holds the list (persistent: each change is a commit)")
        elif transport == "tcp":
            say(f"tcp: {key.decode()}'s list lives at node {NAMES[home]} (lmaster of the key)")
        else:
            say("vs: every node holds the list")

        spared = spare_home and transport == "tcp"
        if spared:
            racing = [c for c in contenders if c.pnn != home]
            say(
                f"{' and '.join(c.name for c in racing)} request lock {key.decode()} at the "
                f"same moment; {NAMES[home]}, on the list's home, queues after them"
            )
            race(racing, key)
            race([contenders[home]], key)
        else:
            say(f"A, B and C request lock {key.decode()} at the same moment")
            race(contenders, key)
        names = owners_by_name(contenders)
        queues = {c.name: queue_seen(c, key, names) for c in contenders}
        for c in contenders:
            seen = queues[c.name]
            say(f"  node {c.name}: {seen[0]} won; queue {' '.join(seen)}")
        order = queues["A"]
        holder = next(c for c in contenders if c.name == order[0])
        decided = holder.queued_after
        slowest = max(c.queued_after for c in contenders)
        all_queued = "" if spared else f" (all three queued after {slowest * 1000:.1f} ms)"
        say(f"first winner decided {decided * 1000:.1f} ms after the start{all_queued}")

        waiters = [c for c in contenders if c is not holder]
        threads = [threading.Thread(target=wait_turn, args=(c,), daemon=True) for c in waiters]
        for t in threads:
            t.start()
        queue_lost = transport == "tcp" and holder.pnn == home and not persistent
        if queue_lost:
            say(
                f"tcp limitation: the holder's node {holder.name} is also the list's home; "
                "killing it loses the whole queue (a volatile record dies with its dmaster), "
                "so the waiters will queue again in whatever order they get there"
            )
        say(f"kill -9 node {holder.name} (the holder)")
        say(f"  ({DETECTION[transport]})")
        killed_at = time.monotonic()
        cluster.kill_node(holder.pnn)
        holder.client.close()
        nxt = first_to_hold(waiters)
        handover = nxt.held_at - killed_at
        in_line = nxt.name == order[1]
        say(
            f"{nxt.name} holds {key.decode()} {handover * 1000:.0f} ms after the kill, {how(nxt)}"
            f" ({'the next in line' if in_line else f'the next in line was {order[1]}'})"
        )

        last = next(c for c in waiters if c is not nxt)
        released_at = time.monotonic()
        assert nxt.held is not None
        nxt.client.release(nxt.held)
        last.done.wait(WAIT)
        if last.error is not None:
            raise last.error
        if last.held is None:
            raise CtdbError(ErrorCode.TIMEOUT, f"{last.name} never took the lock over")
        ordinary = last.held_at - released_at
        say(f"{nxt.name} releases; {last.name} holds after {ordinary * 1000:.1f} ms, {how(last)}")
        last.client.release(last.held)
        return {
            "transport": transport,
            "key": key.decode(),
            "home": NAMES[home] if transport == "tcp" else None,
            "spare_home": spared,
            "persistent": persistent,
            "queues": queues,
            "winner": holder.name,
            "decided_ms": decided * 1000,
            "queue_lost": queue_lost,
            "next": nxt.name,
            "next_in_line": in_line,
            "next_told": bool(nxt.held and nxt.held.told),
            "handover_after_kill_ms": handover * 1000,
            "last": last.name,
            "handover_after_release_ms": ordinary * 1000,
        }
    finally:
        if cluster is not None:
            cluster.down()  # first: a waiter blocked on its socket sees it close
        for c in contenders:
            c.client.close()
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.r1",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog=(
            "tcp limitation: a list lives at its key's lmaster; if the holder runs there, "
            "the kill loses the queue and the waiters queue again (FIFO order is not kept "
            "across that failure). vs keeps the queue on every node, and so does a "
            "persistent list (--persistent) on both transports."
        ),
    )
    parser.add_argument("--transport", choices=["tcp", "vs"], default="tcp")
    parser.add_argument("--key", default="R1", help="the lock's name (default R1)")
    parser.add_argument(
        "--spare-home",
        action="store_true",
        help="tcp: the client on the list's home node queues after the other two "
        "(so the holder is not the home, and the FIFO hand-over shows on tcp too)",
    )
    parser.add_argument(
        "--persistent",
        action="store_true",
        help="keep the lock in a persistent database: every change of the list is a "
        "commit on every node, so the queue survives any one node on tcp too",
    )
    parser.add_argument(
        "--json", action="store_true", help="the story on stderr, a JSON summary on stdout"
    )
    ns = parser.parse_args(argv)

    def say(line: str) -> None:
        print(line, file=sys.stderr if ns.json else sys.stdout, flush=True)

    def interrupted(_sig: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        summary = run(ns.transport, ns.key.encode(), say, ns.spare_home, ns.persistent)
    except KeyboardInterrupt:
        say("interrupted; the cluster is stopped")
        return 130
    except (CtdbError, TimeoutError) as exc:
        say(f"r1: {exc}")
        return 1
    if ns.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
