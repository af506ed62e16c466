"""The README's main job: real work on a fresh local cluster, then its status."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from tools.cluster import LocalCluster


def run_demo(c: LocalCluster, say: Callable[[str], None]) -> None:
    clients = [c.client(p) for p in range(c.size)]
    first, last = clients[0], clients[-1]
    first.attach("demo")
    first.attach("demo_persistent", "persistent")

    first.store("demo", "greeting", f"hello from node {first.pnn}")
    say(f"node {last.pnn} reads greeting: {last.fetch('demo', 'greeting')!r}")

    say(f"{c.size} clients on {c.size} nodes add 1 to one counter 100 times under fetch_lock")
    started = time.perf_counter()

    def bump(pnn: int) -> None:
        with c.client(pnn) as client:
            for _ in range(100):
                with client.locked("demo", "counter") as rec:
                    rec.value = str(int(rec.value or b"0") + 1)

    threads = [threading.Thread(target=bump, args=(p,)) for p in range(c.size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    total = int(first.fetch("demo", "counter") or b"0")
    say(f"counter = {total} (expected {100 * c.size}), {100 * c.size / elapsed:.0f} increments/s")

    with first.transaction("demo_persistent") as tx:
        for i in range(10):
            tx.store(f"user{i}", f"uid={1000 + i}")
    seqnum = last.call("getdbseqnum", db="demo_persistent")
    say(
        f"persistent transaction of 10 records committed, sequence number {seqnum}; "
        f"node {last.pnn} reads user7 = {last.call('fetch', db='demo_persistent', key=b'user7')!r}"
    )

    st = first.call("status")
    say("")
    say(f"Number of nodes:{len(st['nodes'])}")
    for n in st["nodes"]:
        say(f"pnn:{n['pnn']} {n['address']:<16} {n['state']}")
    say(
        f"Generation:{st['generation']}  Recovery mode:{st['recovery_mode']}  "
        f"Leader:{st['leader']}  vnnmap:{st['vnnmap']}  Transport:{st['transport']}"
    )
    for client in clients:
        client.close()
