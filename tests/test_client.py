"""Both client front ends offer every operation, and behave alike against real daemons."""

from __future__ import annotations

import asyncio
import inspect
import socket
import threading
import time
from pathlib import Path

import pytest

from ctdb.client import AsyncClient, Client, operations
from ctdb.client.aio import AsyncTransaction
from ctdb.client.blocking import Transaction
from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol import client as protocol
from tests.conftest import unique
from tools.cluster import LocalCluster

#: Requests a client never sends by name: the handshake and the per-transaction
#: steps, which `Transaction` offers as its own methods.
_NOT_CLIENT_METHODS = {"trans_start", "trans_fetch", "trans_store", "trans_delete", "trans_write"}
_NOT_CLIENT_METHODS |= {"trans_commit", "trans_cancel"}
#: asked by the front ends themselves when a client uses records in place
_NOT_CLIENT_METHODS |= {"in_place"}


def _public(cls: type) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_")}


def test_every_operation_is_offered_by_both_front_ends() -> None:
    defined = {
        name
        for name, fn in vars(operations).items()
        if inspect.isfunction(fn)
        and fn.__module__ == operations.__name__
        and str(inspect.signature(fn).return_annotation).startswith(("Op[", "Plan["))
    }
    assert {"fetch", "store", "transact", "send_message"} <= defined
    for name in defined - _NOT_CLIENT_METHODS:
        assert hasattr(Client, name), name
        assert hasattr(AsyncClient, name), name
    assert _public(Client) - {"messages", "pnn", "path"} == _public(AsyncClient) - {
        "messages",
        "pnn",
        "connect",
    }
    assert _public(Transaction) == _public(AsyncTransaction)


def test_the_async_client_does_what_the_blocking_one_does(cluster: LocalCluster) -> None:
    vdb, pdb = unique("vol"), unique("per")

    async def scenario() -> None:
        c = await AsyncClient.connect(cluster.socket(0))
        try:
            await c.attach(vdb)
            await c.attach(pdb, "persistent")
            await c.store(vdb, "k", "v")
            assert await c.fetch(vdb, "k") == b"v"
            async with c.locked(vdb, "counter") as rec:
                rec.value = b"1"
            assert await c.fetch(vdb, "counter") == b"1"
            await c.delete(vdb, "k")
            assert await c.traverse(vdb) == [(b"counter", b"1")]
            async with await c.transaction(pdb) as tx:
                await tx.store("a", "1")
            seqnum = await c.transact(pdb, {"b": "2", "a": None})
            assert await c.getdbseqnum(pdb) == seqnum
            await c.register_srvid(77)
            await c.send_message(0, 77, "hello")
            message = await c.wait_message(10)
            assert (message.srvid, message.data) == (77, b"hello")
            with pytest.raises(CtdbError) as err:
                await c.unlock(vdb, "counter")
            assert err.value.code == ErrorCode.NOT_LOCKED
        finally:
            await c.close()

    asyncio.run(scenario())
    with Client(cluster.socket(2)) as c:
        assert c.fetch(vdb, "counter") == b"1"
        assert c.fetch(pdb, "a") is None
        assert c.fetch(pdb, "b") == b"2"


def _silent_daemon(path: str) -> tuple[socket.socket, threading.Thread]:
    """A daemon that answers `hello`, then reads requests and never answers them."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)  # the hello
            conn.sendall(protocol.encode_reply(1, {"version": protocol.VERSION, "pnn": 0}))
            while conn.recv(65536):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def test_the_blocking_client_gives_up_after_its_timeout(tmp_path: Path) -> None:
    """Each wait for the daemon is bounded by the client's timeout: a daemon
    that never answers costs the caller the timeout, then TIMEOUT, not a hang."""
    path = str(tmp_path / "silent.socket")
    listener, thread = _silent_daemon(path)
    try:
        with Client(path, timeout=0.3) as c:
            started = time.monotonic()
            with pytest.raises(CtdbError) as err:
                c.fetch("db", "k")
            took = time.monotonic() - started
            assert err.value.code == ErrorCode.TIMEOUT
            assert 0.25 <= took < 10
            started = time.monotonic()
            with pytest.raises(CtdbError) as err:
                c.wait_message(timeout=0.2)
            assert err.value.code == ErrorCode.TIMEOUT
            assert 0.15 <= time.monotonic() - started < 10
    finally:
        listener.close()
        thread.join(10)
    assert not thread.is_alive()


def _sleeps() -> int:
    """How often this thread has given up the CPU to wait."""
    for line in Path("/proc/thread-self/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc/thread-self/status")


def test_the_blocking_client_sleeps_once_per_request_not_twice(cluster: LocalCluster) -> None:
    """The client waits for a reply in poll(), not asleep in recv(): the kernel
    wakes a Unix socket's sleepers whenever its peer reads what it was sent,
    so a client asleep in recv() was woken for nothing each time the daemon
    read its request, and slept again (two sleeps per request, and a wake-up
    that cost the daemon about 5 us of a local store's 75)."""
    db = unique("sleeps")
    n = 400
    with Client(cluster.socket(0), timeout=10) as c:
        c.attach(db)
        for _ in range(50):  # the record is here, the paths are warm
            c.store(db, "k", "v")
        before = _sleeps()
        for _ in range(n):
            c.store(db, "k", "v")
        per_request = (_sleeps() - before) / n
    assert per_request <= 1.25, f"{per_request:.2f} sleeps per request"


def test_async_tasks_listening_for_one_srvid_are_all_woken_by_a_message() -> None:
    """Two tasks on one AsyncClient wait for the same srvid (entry-list head
    messages): one message wakes both, since it is a hint for each to look
    again; a message to another srvid stays queued; one that came before a
    task listened is taken at once, and a listen of 0 s never waits."""

    async def main() -> None:
        client = AsyncClient()
        srvid, other = 0xF00, 0xBAA

        async def listen(seconds: float) -> object:
            return await client.follow(_listen_once(srvid, seconds))

        waiters = [asyncio.create_task(listen(30)) for _ in range(2)]
        await asyncio.sleep(0)  # both are listening
        client._on_data(protocol.encode_event(other, 1, b"for someone else"))
        client._on_data(protocol.encode_event(srvid, 2, b"look again"))
        heard = await asyncio.wait_for(asyncio.gather(*waiters), 5)
        assert [m.data for m in heard] == [b"look again", b"look again"]  # type: ignore[attr-defined]
        assert client.messages.qsize() == 1
        client._on_data(protocol.encode_event(srvid, 2, b"early"))
        assert await asyncio.wait_for(listen(30), 5) is not None
        assert await listen(0) is None
        assert (await client.messages.get()).srvid == other

    asyncio.run(main())


def _listen_once(srvid: int, seconds: float) -> operations.Plan[object]:
    return (yield operations.Listen(srvid, seconds))
