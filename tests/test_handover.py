"""Dmaster migration's decisions on their own (ctdb.engines.handover): no node, no loop."""

from __future__ import annotations

from ctdb.engines import handover
from ctdb.protocol.messages import DmasterReply, DmasterRequest
from ctdb.storage.ltdb import Record
from ctdb.storage.placement import lmaster

VNNMAP = [0, 1, 2]


def key_with_lmaster(pnn: int) -> bytes:
    return next(k for i in range(1000) if lmaster(k := f"k{i}".encode(), VNNMAP) == pnn)


def test_a_record_nobody_wrote_belongs_to_its_lmaster() -> None:
    key = key_with_lmaster(1)
    assert handover.is_dmaster(1, key, None, VNNMAP)
    assert not handover.is_dmaster(0, key, None, VNNMAP)
    assert handover.is_dmaster(2, key, Record(5, 2, b"v"), VNNMAP)
    assert not handover.is_dmaster(1, key, Record(5, 2, b"v"), VNNMAP)


def test_a_call_goes_to_the_lmaster_which_sends_it_to_the_dmaster() -> None:
    key = key_with_lmaster(1)
    assert handover.next_hop(0, key, Record(3, 2, b"v"), VNNMAP) == 1  # to the lmaster
    assert handover.next_hop(1, key, Record(3, 2, b"v"), VNNMAP) == 2  # on to the dmaster
    assert handover.max_hops(3) == 20


def test_the_dmaster_keeps_a_copy_naming_the_new_one_and_sends_through_the_lmaster() -> None:
    key = key_with_lmaster(1)
    kept, dest, msg = handover.give_away(2, 9, key, Record(3, 2, b"v"), 0, 4, VNNMAP, 77)
    assert kept == Record(4, 0, b"v")
    assert (dest, msg) == (1, DmasterRequest(9, key, 77, 0, 4, b"v"))
    # The lmaster itself hands the record straight to the new dmaster.
    kept, dest, msg = handover.give_away(1, 9, key, None, 0, 1, VNNMAP, 77)
    assert kept == Record(1, 0, b"")
    assert (dest, msg) == (0, DmasterReply(9, key, 77, 1, b""))


def test_the_lmaster_notes_the_new_dmaster_and_passes_the_record_on() -> None:
    request = DmasterRequest(9, b"k", 77, 0, 4, b"v")
    assert handover.at_lmaster(1, request) == (
        Record(4, 0, b"v"),
        DmasterReply(9, b"k", 77, 4, b"v"),
    )
    arrived, reply = handover.at_lmaster(0, request)  # the lmaster is the new dmaster
    assert arrived == Record(4, 0, b"v") and reply is None


def test_a_handed_over_record_replaces_only_an_older_copy() -> None:
    assert handover.takes_reply(None, 1)
    assert handover.takes_reply(Record(4, 2, b"old"), 4)
    assert not handover.takes_reply(Record(5, 2, b"newer"), 4)
