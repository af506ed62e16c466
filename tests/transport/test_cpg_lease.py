"""The vs member's lease (`CpgStream.confirmed_until`) without corosync.

A member may answer from its copy only while nobody can have expelled it:
until the send time of its latest message that came back plus the shortest
silence after which any member expels, less one tick. Members announce that
silence in their ALIVEs, so `setvar` on one node cannot make the lease
outlive its expel (tools.chaos found stale reads when the lease was wrong).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from transport.cpg_connection import Connection


@pytest.fixture
def conn() -> Iterator[Connection]:
    loop = asyncio.new_event_loop()
    yield Connection(loop, "lease-test", 1024)  # no transports: default options (1 s x 5)
    loop.close()


def test_nothing_is_confirmed_before_a_message_of_ours_came_back(conn: Connection) -> None:
    assert conn.confirmed_until() == 0.0
    conn.confirmed_sent = 100.0
    assert conn.confirmed_until() == pytest.approx(104.0)  # 100 + 5 s - one 1 s tick


def test_the_shortest_silence_announced_by_a_member_bounds_the_lease(
    conn: Connection, caplog: pytest.LogCaptureFixture
) -> None:
    conn.confirmed_sent = 100.0
    conn.silence_announced((2, 20), 8.0)  # longer than ours: ours still bounds it
    assert conn.confirmed_until() == pytest.approx(104.0)
    conn.silence_announced((3, 30), 3.0)
    assert conn.confirmed_until() == pytest.approx(102.0)
    conn.silence_announced(conn.me, 0.5)  # our own ALIVE, come back: not another member's
    assert conn.confirmed_until() == pytest.approx(102.0)
    # The member that expels soonest left: the lease is as long as the rest allow.
    conn.members_changed([conn.me, (2, 20)], left=[(3, 30)], joined=[])
    assert conn.confirmed_until() == pytest.approx(104.0)
    with caplog.at_level(logging.WARNING, logger="transport.cpg"):
        conn.silence_announced((4, 40), 0.3)  # below our tick: we are expelled when idle
    assert conn.confirmed_until() < conn.confirmed_sent
    assert "same KeepaliveInterval and KeepaliveLimit" in caplog.text
