"""The vs member's lease (`CpgStream.confirmed_until`), mostly without corosync.

A member may answer from its copy only while nobody can have expelled it:
until the send time of its latest message that came back plus the shortest
silence after which any member expels, less one tick. Members announce that
silence (HELLO, ALIVE; `Agreed.silences`), so `setvar` on one node cannot
make the lease outlive an expel (tools.chaos found stale reads when the
lease was wrong). corosync itself may leave a member the network cut off
out of its ring sooner: after its token and consensus timeouts, or after
the consensus timeout alone when a node joins that reaches the others and
not that member; it tells both through cmap (`transport.libcmap`), and the
lease ends before the sooner (tools.simulate found stale reads when it did
not).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from transport.corosync import PrivateCorosync, enter_netns
from transport.cpg_connection import Connection
from transport.cpg_group import Group
from transport.cpg_wire import BROADCAST, HDR, K_ALIVE, SILENCE, Event, Member
from transport.libcmap import ring_timeouts


@pytest.fixture
def conn() -> Iterator[Connection]:
    loop = asyncio.new_event_loop()
    c = Connection(loop, "lease-test", 1024)  # no transports: default options (1 s x 5)
    c.reform = 20.0  # a ring that re-forms slowly: the silences decide
    c.machine = Group(c.me, c, {})
    founders = [c.me, (2, 20), (3, 30), (4, 40)]
    c.machine.event((founders, [], founders, []))  # the group, founded together
    yield c
    loop.close()


def handled(conn: Connection, *events: Event) -> None:
    """`events` delivered in one batch, as `CpgStream._on_readable` hands them on."""
    assert conn.machine is not None
    for ev in events:
        conn.machine.event(ev)
    conn.lease_stale = True


def came_back(conn: Connection, sent: float) -> None:
    """Our message sent at loop time `sent` was delivered back to us."""
    conn.confirmed_sent = sent
    handled(conn)


def alive(conn: Connection, member: Member, seconds: float) -> None:
    """`member`'s ALIVE, delivered."""
    handled(conn, (member, HDR.pack(K_ALIVE, 0, 0, BROADCAST) + SILENCE.pack(seconds)))


def test_nothing_is_confirmed_before_a_message_of_ours_came_back(conn: Connection) -> None:
    assert conn.confirmed_until() == 0.0
    came_back(conn, 100.0)
    assert conn.confirmed_until() == pytest.approx(104.0)  # 100 + 5 s - one 1 s tick


def test_the_shortest_silence_announced_by_a_member_bounds_the_lease(
    conn: Connection, caplog: pytest.LogCaptureFixture
) -> None:
    came_back(conn, 100.0)
    alive(conn, (2, 20), 8.0)  # longer than ours: ours still bounds it
    assert conn.confirmed_until() == pytest.approx(104.0)
    alive(conn, (3, 30), 3.0)
    assert conn.confirmed_until() == pytest.approx(102.0)
    # The member that expels soonest left: the lease is as long as the rest allow.
    handled(conn, ([conn.me, (2, 20), (4, 40)], [(3, 30)], [], []))
    assert conn.confirmed_until() == pytest.approx(104.0)
    with caplog.at_level(logging.WARNING, logger="transport.cpg"):
        alive(conn, (4, 40), 0.3)  # below our tick: we are expelled whenever idle
    assert conn.confirmed_until() < 100.0
    assert "same KeepaliveInterval and KeepaliveLimit" in caplog.text


def test_the_ring_re_forming_sooner_than_any_expel_bounds_the_lease(conn: Connection) -> None:
    came_back(conn, 100.0)
    assert conn._lease_timing()[1] == 1.0  # ticks every keepalive interval
    conn.reform = 1.2  # corosync's defaults: token 1 s, consensus 1.2 s
    handled(conn)
    assert conn.confirmed_until() == pytest.approx(100.9)  # three quarters of it
    # Three ticks per lease, so that an idle member's lease does not lapse.
    assert conn._lease_timing()[1] == pytest.approx(0.3)
    alive(conn, (3, 30), 1.5)  # a member that expels sooner still bounds it
    assert conn.confirmed_until() == pytest.approx(100.5)


def test_corosync_tells_how_long_its_ring_takes_to_re_form(
    private_corosync: PrivateCorosync,
) -> None:
    """The real values: the shared test corosync runs a 300 ms token alone,
    and consensus defaults to 1.2 x token."""
    assert private_corosync.holder_pid is not None
    with enter_netns(private_corosync.holder_pid):
        timeouts = ring_timeouts()
    assert timeouts.token == pytest.approx(0.3)
    assert timeouts.consensus == pytest.approx(0.36)
    assert timeouts.shortest_reform == pytest.approx(0.36)
