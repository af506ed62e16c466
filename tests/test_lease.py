"""The tcp serving lease (ctdb.server.lease), without sockets: stamps echoed back confirm it."""

from __future__ import annotations

from ctdb.server.lease import Lease

DURATION = 4.0


def test_a_lone_node_of_one_holds_it_and_of_three_does_not() -> None:
    assert Lease(0, 1, DURATION).holds(10.0)
    assert not Lease(0, 3, DURATION).holds(10.0)


def test_an_echo_of_our_stamp_from_a_peer_of_our_generation_confirms_a_majority() -> None:
    lease = Lease(0, 3, DURATION)
    first = lease.on_state(1, stamp=5.0, echo=9.0, same_generation=True, now=10.0, lease=DURATION)
    assert first  # the caller answers at once so that the peer is confirmed too
    assert not lease.on_state(
        1, stamp=6.0, echo=9.5, same_generation=True, now=10.5, lease=DURATION
    )
    assert lease.holds(10.0)
    # The lease runs from when we sent the stamp (9.5), not from when it came back.
    assert lease.holds(13.4)
    assert not lease.holds(13.6)


def test_old_echoes_read_after_a_hang_do_not_renew_it() -> None:
    """Frames buffered while we were stopped echo stamps from before the stop."""
    lease = Lease(0, 3, DURATION)
    lease.on_state(1, stamp=1.0, echo=2.0, same_generation=True, now=2.1, lease=DURATION)
    # Woken at 60 s, we read the peer's old frames: echoes of our stamps from before.
    lease.on_state(1, stamp=3.0, echo=2.5, same_generation=True, now=60.0, lease=DURATION)
    assert not lease.holds(60.0)


def test_peers_of_another_generation_confirm_nothing() -> None:
    lease = Lease(0, 3, DURATION)
    assert not lease.on_state(
        1, stamp=5.0, echo=9.9, same_generation=False, now=10.0, lease=DURATION
    )
    assert not lease.holds(10.0)
    assert lease.seen == {1: 5.0}  # but its stamp is echoed back to it


def test_a_stamp_from_our_future_counts_as_now() -> None:
    lease = Lease(0, 3, DURATION)
    lease.on_state(1, stamp=5.0, echo=1e9, same_generation=True, now=10.0, lease=DURATION)
    assert not lease.holds(14.5)


def test_a_new_generation_or_a_departure_starts_from_nothing() -> None:
    lease = Lease(0, 3, DURATION)
    lease.on_state(1, stamp=5.0, echo=9.0, same_generation=True, now=10.0, lease=DURATION)
    lease.new_generation()
    assert not lease.holds(10.0)
    assert lease.on_state(1, stamp=6.0, echo=9.5, same_generation=True, now=10.0, lease=DURATION)
    lease.forget(1)
    assert not lease.holds(10.0)
    assert lease.seen == {}


def test_with_a_cluster_lock_the_leader_confirms() -> None:
    lease = Lease(2, 5, DURATION)
    lease.configure(5, leader=2, own=DURATION)
    assert lease.holds(10.0)  # we hold the lock
    lease.configure(5, leader=0, own=DURATION)
    assert not lease.holds(10.0)
    lease.on_state(1, stamp=5.0, echo=9.0, same_generation=True, now=10.0, lease=DURATION)
    assert not lease.holds(10.0)  # a follower does not count
    lease.on_state(0, stamp=5.0, echo=9.0, same_generation=True, now=10.0, lease=DURATION)
    assert lease.holds(10.0)


def test_five_nodes_need_two_peers() -> None:
    lease = Lease(0, 5, DURATION)
    lease.on_state(1, stamp=1.0, echo=9.0, same_generation=True, now=10.0, lease=DURATION)
    assert not lease.holds(10.0)
    lease.on_state(2, stamp=1.0, echo=8.0, same_generation=True, now=10.0, lease=DURATION)
    assert lease.holds(11.9)  # runs from the older of the two: 8.0
    assert not lease.holds(12.1)


def test_an_echo_sent_while_serving_grants_a_lease_that_outlives_a_departure() -> None:
    """What a recovery that leaves a node out must wait for (ctdb.engines.recovery)."""
    lease = Lease(2, 3, DURATION)
    lease.on_state(1, stamp=100.0, echo=None, same_generation=True, now=10.0, lease=DURATION)
    assert lease.echoes(serving=False, duration=DURATION) == {1: 100.0}
    assert lease.granted_for(10.0) == {}  # a frozen node's echo confirms nothing
    lease.on_state(1, stamp=101.0, echo=None, same_generation=True, now=11.0, lease=DURATION)
    assert lease.echoes(serving=True, duration=DURATION) == {1: 101.0}
    # The peer's lease runs from its stamp, sent before 11.0 on our clock.
    assert lease.granted_for(12.0) == {1: 3.0}
    lease.forget(1)  # it left our view, but may still serve on what we echoed
    assert lease.echoes(serving=True, duration=DURATION) == {}
    assert lease.granted_for(14.0) == {1: 1.0}
    assert lease.granted_for(15.0) == {}


def test_a_peer_with_a_shorter_lease_shortens_ours_and_grants_follow_the_holders() -> None:
    """Nodes may run different keepalive tunables (`setvar` is per node): a
    peer with a 2 s lease drops us after under 3 s of silence, so our lease
    may not outlast 2 s on its confirmation, and what we grant a peer runs
    for the lease it announced, not for ours."""
    lease = Lease(0, 3, DURATION)
    lease.on_state(1, stamp=5.0, echo=9.0, same_generation=True, now=10.0, lease=2.0)
    assert lease.until - lease.since == 2.0
    assert lease.holds(10.9)
    assert not lease.holds(11.1)  # 9.0 + 2.0, not 9.0 + 4.0
    lease.on_state(2, stamp=5.0, echo=9.5, same_generation=True, now=10.0, lease=8.0)
    assert lease.until - lease.since == 2.0  # the shortest of everyone's
    assert lease.echoes(serving=True, duration=DURATION) == {1: 5.0, 2: 5.0}
    assert lease.granted_for(10.0) == {1: DURATION, 2: 8.0}  # never under ours
    lease.forget(1)
    assert lease.until - lease.since == DURATION
