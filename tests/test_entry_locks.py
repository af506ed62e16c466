"""Locks on entry lists (`ctdb.client.entry_locks`) on real daemons, both transports."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from ctdb.client import AsyncClient, Client, Ticket
from ctdb.common.errors import CtdbError, ErrorCode
from tests.conftest import unique
from tools.cluster import LocalCluster


class Exclusion:
    """Counts how many are inside at once: mutual exclusion means never two."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self.inside = 0
        self.most = 0

    def enter(self) -> None:
        with self._mutex:
            self.inside += 1
            self.most = max(self.most, self.inside)

    def leave(self) -> None:
        with self._mutex:
            self.inside -= 1


def bump(client: Client, db: str) -> None:
    """Read-modify-write of a plain record: exact only if nobody else does it meanwhile."""
    value = int(client.fetch(db, "counter") or b"0")
    client.store(db, "counter", str(value + 1))


@pytest.mark.parametrize("kind", ["lock", "queue_lock"])
def test_threads_on_three_nodes_exclude_each_other(cluster: LocalCluster, kind: str) -> None:
    db, rounds = unique(), 8
    clients = [cluster.client(p % 3) for p in range(6)]
    exclusion = Exclusion()
    errors: list[BaseException] = []
    try:
        clients[0].attach(db)
        barrier = threading.Barrier(len(clients))

        def work(c: Client) -> None:
            try:
                barrier.wait()
                for _ in range(rounds):
                    with getattr(c, kind)(db, "L", timeout=120):
                        exclusion.enter()
                        bump(c, db)
                        exclusion.leave()
            except BaseException as exc:  # noqa: BLE001 - reported by the test thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not errors, errors
        assert exclusion.most == 1
        assert int(clients[1].fetch(db, "counter") or b"0") == rounds * len(clients)
        assert clients[2].entries(db, "L").entries == []
    finally:
        for c in clients:
            c.close()


def test_the_queue_serves_in_append_order_and_wakes_waiters_by_message(
    cluster: LocalCluster,
) -> None:
    db = unique()
    clients = [cluster.client(p % 3) for p in (2, 0, 1, 1, 0, 2)]
    try:
        clients[0].attach(db)
        tickets = [c.enqueue(db, "Q") for c in clients]
        assert [t.position for t in tickets] == list(range(len(clients)))
        order: list[int] = []
        told: list[bool] = []
        errors: list[BaseException] = []

        def take(i: int) -> None:
            try:
                # A long recheck: in time, only the head message can wake the waiter.
                held = clients[i].wait_turn(tickets[i], timeout=120, recheck=60)
                order.append(i)
                told.append(held.told)
                clients[i].release(held)
            except BaseException as exc:  # noqa: BLE001 - reported by the test thread
                errors.append(exc)

        threads = [threading.Thread(target=take, args=(i,)) for i in range(len(clients))]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(150)
        assert not errors, errors
        assert order == list(range(len(clients)))
        assert told == [False] + [True] * (len(clients) - 1)
        assert time.monotonic() - started < 60, "a waiter was woken by its re-read, not told"
    finally:
        for c in clients:
            c.close()


def test_a_waiter_whose_entry_vanished_queues_again(cluster: LocalCluster) -> None:
    """What a waiter does when a tcp dmaster died with the list, made happen by an admin."""
    db = unique()
    with cluster.client(0) as holder, cluster.client(1) as waiter, cluster.client(2) as admin:
        holder.attach(db)
        first = holder.enqueue(db, "Q")
        ticket = waiter.enqueue(db, "Q")
        assert (first.position, ticket.position) == (0, 1)
        assert admin.remove_entries(db, "Q", owner=ticket.owner) == 1
        result: list[Ticket] = []
        thread = threading.Thread(target=lambda: result.append(waiter.wait_turn(ticket, 60)))
        thread.start()

        def queued_again() -> bool:
            return [e.owner for e in admin.entries(db, "Q").entries] == [first.owner, ticket.owner]

        deadline = time.monotonic() + 30
        while not queued_again():
            assert time.monotonic() < deadline, admin.entries(db, "Q")
            time.sleep(0.05)
        assert not result  # it waits behind the holder
        holder.release(first)
        thread.join(60)
        assert result and result[0].holds and result[0].payload == ticket.payload


def test_timeouts_leave_nothing_behind(cluster: LocalCluster) -> None:
    db = unique()
    with cluster.client(0) as a, cluster.client(1) as b:
        a.attach(db)
        with a.lock(db, "X") as held:
            assert held.holds and held.owner[0] == 0
            started = time.monotonic()
            with pytest.raises(CtdbError) as exc:
                with b.lock(db, "X", timeout=0.5):
                    pass
            assert exc.value.code == ErrorCode.TIMEOUT
            assert 0.4 < time.monotonic() - started < 30
            with pytest.raises(CtdbError) as exc:
                with b.queue_lock(db, "X", timeout=0.5):
                    pass
            assert exc.value.code == ErrorCode.TIMEOUT
            assert [e.owner for e in b.entries(db, "X").entries] == [held.owner]
        assert b.entries(db, "X").entries == []


def test_asyncio_tasks_sharing_connections_exclude_each_other(cluster: LocalCluster) -> None:
    """Two tasks on one AsyncClient are two acquisitions (distinct payloads), not one.

    Three rounds: equal payloads would let both tasks hold from the first one.
    """
    db, rounds = unique(), 3

    async def main() -> tuple[int, int, list[object]]:
        clients = [await AsyncClient.connect(cluster.socket(p)) for p in range(3)]
        inside, most = 0, 0
        try:
            await clients[0].attach(db)

            async def work(c: AsyncClient, kind: str) -> None:
                nonlocal inside, most
                for _ in range(rounds):
                    async with getattr(c, kind)(db, "A", timeout=120):
                        inside += 1
                        most = max(most, inside)
                        value = int(await c.fetch(db, "counter") or b"0")
                        await asyncio.sleep(0.001)
                        await c.store(db, "counter", str(value + 1))
                        inside -= 1

            await asyncio.gather(
                *(work(c, kind) for c in clients for kind in ("queue_lock", "queue_lock", "lock"))
            )
            total = int(await clients[1].fetch(db, "counter") or b"0")
            left = (await clients[2].entries(db, "A")).entries
            return most, total, list(left)
        finally:
            for c in clients:
                await c.close()

    most, total, left = asyncio.run(main())
    assert most == 1
    assert total == rounds * 9
    assert left == []


def test_head_messages_do_not_pile_up(cluster: LocalCluster) -> None:
    """The daemon tells every appender that starts a list; the helpers drop those."""
    db = unique()
    with cluster.client(1) as c:
        c.attach(db)
        for _ in range(20):
            with c.lock(db, "P"):
                pass
            with c.queue_lock(db, "P"):
                pass
        assert len(c.messages) <= 2, c.messages
