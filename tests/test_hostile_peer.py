"""A node that breaks the protocol, against real daemons.

On tcp the test process is node 2 of a three-node cluster whose node 2
daemon is not running (`tools.fuzz.NodeLink`: the same fake node the fuzzer
uses). Every malformed message must cut its link, change nothing, and be
logged once; replies nobody asked for must be ignored. On vs the test
process joins the cluster's CPG group as node 2: every member must drop its
malformed broadcast alike and log it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from ctdb.client import Client
from ctdb.common.errors import CtdbError
from ctdb.protocol import message_codec as codec
from ctdb.protocol import messages as m
from tests.conftest import random_base, random_port, unique
from tools.cluster import LocalCluster
from tools.fuzz import NodeLink, cluster_key
from tools.fuzzframes import STOPPED
from transport.framing import frame

FAKE = 2
LOGGED = "node 2 sent an invalid message"


def packed(*items: object) -> bytes:
    return msgpack.packb(list(items), use_bin_type=True)


def start_two_of_three(transport: str, directory: Path) -> LocalCluster:
    """A cluster of three whose node 2 is not running: its place is ours."""
    c = LocalCluster(
        directory,
        size=3,
        transport=transport,
        port=random_port(),
        base=random_base(),
        tunables={"KeepaliveInterval": 0.5, "KeepaliveLimit": 4},
    )
    c.write_configs()
    try:
        if transport == "vs":
            c._ensure_corosync(lambda _msg: None)
        for pnn in (0, 1):
            c.start_node(pnn)
        c.wait_healthy(60, nodes=[0, 1])
    except BaseException:
        c.down()
        raise
    return c


@pytest.fixture
def two_of_three(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    transport = request.param
    if transport == "vs":
        request.getfixturevalue("host_corosync")
    directory = Path(tempfile.mkdtemp(prefix="ctdb-hostile-"))
    c = start_two_of_three(transport, directory)
    try:
        yield c
    finally:
        c.down()
        shutil.rmtree(directory, ignore_errors=True)


class Witness:
    """Records written before the intruder arrives, read back after it left."""

    def __init__(self, c: LocalCluster) -> None:
        self.c = c
        self.volatile, self.persistent = unique("hv"), unique("hp")
        self.values = {f"k{i}".encode(): f"v{i}".encode() for i in range(20)}
        with c.client(0) as cl:
            cl.attach(self.volatile)
            cl.attach(self.persistent, "persistent")
            for k, v in self.values.items():
                cl.store(self.volatile, k, v)
            cl.transact(self.persistent, self.values)

    def check(self) -> None:
        self.c.wait_healthy(30, nodes=[0, 1])
        for pnn in (0, 1):
            with self.c.client(pnn) as cl:
                st = cl.call("status")
                assert [n["state"] for n in st["nodes"][:2]] == ["OK", "OK"], st
                for k, v in self.values.items():
                    assert cl.fetch(self.volatile, k) == v
                    assert cl.fetch(self.persistent, k) == v


def bad_messages(c: LocalCluster, pnn: int) -> int:
    with c.client(pnn) as cl:
        return int(cl.call("statistics").get("bad_messages", 0))


def log_lines(c: LocalCluster, pnn: int, text: str) -> int:
    return sum(text in line for line in c.log_path(pnn).read_text().splitlines())


# -- tcp: a bad message cuts the link -----------------------------------------------------------

STATE = codec.encode(m.NodeState(FAKE, STOPPED, 1, 0, -1, 0.0, {}, 4.0))

BAD: list[tuple[str, bytes]] = [
    ("not msgpack", b"\xc1\xc1"),
    ("an unknown message type", packed(99, 1)),
    ("a Call whose key is text", packed(3, 1, "k", 9, FAKE, 0)),
    (
        "a Call whose key is 2**40 (bytes(n) would allocate a terabyte)",
        packed(3, 1, 2**40, 9, 2, 0),
    ),
    ("a Call from pnn 7 of 3", packed(3, 1, b"k", 9, 7, 0)),
    ("a key above the largest MaxKeySize", codec.encode(m.Call(1, b"k" * (2**20 + 1), 9, FAKE, 0))),
    ("a NodeState speaking for node 1", codec.encode(m.NodeState(1, 0x08, 5, 0, 1, 0.0, {}, 4.0))),
    ("a ClientMessage claiming node 0 sent it", codec.encode(m.ClientMessage(5, b"x", 0))),
    ("a control with an unknown op", codec.encode(m.Control(1, "frobnicate", {}))),
    ("setflags BANNED as text", packed(1, 1, "setflags", {"set": "BANNED"})),
    ("a ban of NaN seconds", codec.encode(m.Control(1, "ban", {"seconds": math.nan}))),
    ("shutdown with an argument", codec.encode(m.Control(1, "shutdown", {"now": True}))),
    (
        "a push without its records",
        codec.encode(m.Control(1, "push", {"db_id": 1, "generation": 2})),
    ),
    ("an ordered operation on tcp", codec.encode(m.Ordered(FAKE, 1, "sync", {}))),
    ("a msgpack extension type", packed(2, 1, 0, msgpack.ExtType(1, b""))),
    ("an array announcing 4G items", b"\xdd\xff\xff\xff\xff"),
]


async def _open(link: NodeLink, target: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Our link to `target`, with the daemon's link to us up as well (we are in its view)."""
    seen = link.inbound.get(target, 0)
    reader, writer = await link.connect(target, frame(STATE))
    deadline = time.monotonic() + 20
    while link.inbound.get(target, 0) <= seen:
        assert time.monotonic() < deadline, f"node {target} did not connect back"
        link.inbound_changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(link.inbound_changed.wait(), 1)
    return reader, writer


async def _ping(link: NodeLink, writer: asyncio.StreamWriter, reqid: int) -> bool:
    link.pongs.add(reqid)
    writer.write(frame(codec.encode(m.Control(reqid, "ping", {}))))
    deadline = time.monotonic() + 20
    while reqid in link.pongs and time.monotonic() < deadline:
        link.pong.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(link.pong.wait(), 1)
    return reqid not in link.pongs


async def _cut(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), 20) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("two_of_three", ["tcp"], indirect=True)
def test_every_malformed_message_cuts_the_link_and_changes_nothing(
    two_of_three: LocalCluster,
) -> None:
    c = two_of_three
    witness = Witness(c)
    nodes = [c.address(p) for p in range(3)]
    outcome: dict[str, tuple[bool, bool]] = {}

    async def intrude() -> None:
        link = NodeLink(nodes, FAKE, c.port, cluster_key(c))
        await link.listen()
        try:
            for i, (what, payload) in enumerate(BAD):
                reader, writer = await _open(link, 0)
                answered = await _ping(link, writer, 1000 + i)  # the link works...
                writer.write(frame(payload))  # ...until this
                outcome[what] = (answered, await _cut(reader))
                writer.close()
            # and a node that behaves again is served again
            reader, writer = await _open(link, 0)
            outcome["good again"] = (await _ping(link, writer, 1), True)
            writer.close()
        finally:
            await link.close()
        assert not link.problems, link.problems

    asyncio.run(intrude())
    assert outcome == {what: (True, True) for what in [*(w for w, _ in BAD), "good again"]}
    assert bad_messages(c, 0) == len(BAD)
    assert log_lines(c, 0, LOGGED) == 1  # logged once, not once per message
    witness.check()


@pytest.mark.parametrize("two_of_three", ["tcp"], indirect=True)
def test_replies_nobody_asked_for_are_ignored(two_of_three: LocalCluster) -> None:
    """Forged control replies, with the request ids node 0 is using for its own
    pings to node 1, neither answer those pings nor cost the forger its link."""
    c = two_of_three
    nodes = [c.address(p) for p in range(3)]
    results: list[object] = []

    def pinger() -> None:
        with Client(c.socket(0), timeout=30) as cl:
            for _ in range(200):
                try:
                    results.append(cl.call("ping", pnn=1)["pnn"])
                except CtdbError as exc:
                    results.append(exc)

    async def forge() -> None:
        link = NodeLink(nodes, FAKE, c.port, cluster_key(c))
        await link.listen()
        try:
            _, writer = await _open(link, 0)
            thread = threading.Thread(target=pinger)
            thread.start()
            reqid = 0
            while thread.is_alive():
                batch = [
                    frame(codec.encode(m.ControlReply(reqid + k, 5, "forged"))) for k in range(200)
                ]
                batch.append(frame(codec.encode(m.ControlReply(reqid + 1, 0, {"epoch": "x"}))))
                writer.write(b"".join(batch))
                reqid = (reqid + 200) % 5000
                await asyncio.sleep(0.01)
            await asyncio.to_thread(thread.join)
            assert await _ping(link, writer, 77), "the forger's link was cut"
            writer.close()
        finally:
            await link.close()

    asyncio.run(forge())
    assert results == [1] * 200
    assert bad_messages(c, 0) == 0


# -- vs: every member drops the same bad broadcast ----------------------------------------------


@pytest.mark.parametrize("two_of_three", ["vs"], indirect=True)
def test_a_bad_broadcast_is_dropped_by_every_member_and_logged_once(
    two_of_three: LocalCluster,
) -> None:
    from transport.base import TransportOptions
    from transport.cpg import CpgTransport

    c = two_of_three
    witness = Witness(c)
    nodes = [c.address(p) for p in range(3)]
    # (a sync barrier from node 2 is valid here: vs is where ordered operations live)
    bad = [payload for what, payload in BAD if what != "an ordered operation on tcp"] + [
        codec.encode(
            m.Ordered(FAKE, 1, "store", {"db": 1, "key": 5, "value": b"v", "owner": [2, 1]})
        ),
        codec.encode(m.Ordered(1, 1, "sync", {})),  # speaking for node 1
        codec.encode(m.Ordered(FAKE, 1, "vacuum", {"db": 1, "records": [[b"k", -1]]})),
        packed(7, FAKE, 1, "store", {"db": 1, "key": b"k", "value": b"v", "owner": [2, 1], "x": 1}),
    ]

    async def member() -> None:
        # (the daemons' version: a member of another is in another group)
        options = TransportOptions(protocol=m.NODE_PROTOCOL, extra={"group": f"ctdb-{c.port}"})
        t = CpgTransport(FAKE, nodes, options)
        await t.start()
        try:
            # the sync round of the new view waits for our offer: a node with
            # nothing, stopped
            offer = {
                "view_id": t.view.view_id,
                "synced": False,
                "damaged": False,
                "epoch": 0,
                "position": 0,
                "numbered": 0,
                "incarnation": 1,
                "flags": STOPPED,
                "dbs": [],
            }
            t.broadcast(codec.encode(m.Ordered(FAKE, 1, "offer", offer)))
            await asyncio.sleep(1)
            for i, payload in enumerate(bad):
                t.broadcast(payload)
                if i % 5 == 0:
                    await asyncio.sleep(0.05)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if all(bad_messages(c, p) >= len(bad) for p in (0, 1)):
                    break
                await asyncio.sleep(0.2)
        finally:
            await t.stop()

    asyncio.run(member())
    assert [bad_messages(c, p) for p in (0, 1)] == [len(bad), len(bad)]
    assert [log_lines(c, p, LOGGED) for p in (0, 1)] == [1, 1]
    witness.check()
    with c.client(0) as a, c.client(1) as b:
        assert a.traverse(witness.volatile) == b.traverse(witness.volatile)


@pytest.mark.parametrize("two_of_three", ["vs"], indirect=True)
def test_malformed_group_control_messages_are_ignored_by_every_member(
    two_of_three: LocalCluster,
) -> None:
    """HELLO, EXPEL, STATE, MERGE and FOUND bodies that are not what they
    should be: each member logs and ignores each, and goes on serving."""
    from transport.base import TransportOptions
    from transport.cpg import CpgTransport
    from transport.cpg_wire import BROADCAST, K_EXPEL, K_FOUND, K_HELLO, K_MERGE, K_STATE

    c = two_of_three
    witness = Witness(c)
    nodes = [c.address(p) for p in range(3)]
    control = [
        (K_HELLO, b"\xc1"),
        (K_HELLO, msgpack.packb({"pnn": "0", "last_view_id": 0})),
        (K_EXPEL, msgpack.packb(["n", "p"])),
        (K_STATE, msgpack.packb({"target": 1})),
        (K_MERGE, msgpack.packb({"tag": 1})),
        (K_FOUND, msgpack.packb([])),
    ]
    ignored = "ignored a malformed"

    async def member() -> None:
        options = TransportOptions(protocol=m.NODE_PROTOCOL, extra={"group": f"ctdb-{c.port}"})
        t = CpgTransport(FAKE, nodes, options)
        await t.start()
        try:
            conn = t._conn
            assert conn is not None
            for kind, body in control:
                conn._enqueue(kind, t.lid, BROADCAST, body)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if all(log_lines(c, p, ignored) >= len(control) for p in (0, 1)):
                    break
                await asyncio.sleep(0.2)
        finally:
            await t.stop()

    asyncio.run(member())
    assert [log_lines(c, p, ignored) for p in (0, 1)] == [len(control), len(control)]
    witness.check()
    with c.client(0) as a, c.client(1) as b:
        a.store(witness.volatile, b"after", b"it")
        assert b.fetch(witness.volatile, b"after") == b"it"
        assert a.traverse(witness.volatile) == b.traverse(witness.volatile)
