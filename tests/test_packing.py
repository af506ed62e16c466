"""The per-thread msgpack packer (`ctdb.protocol.packing`) packs what
`msgpack.packb` packs, byte for byte, also after a failed pack, and does not
keep a packer that grew large."""

from __future__ import annotations

import threading

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctdb.protocol import packing

VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)


@given(VALUES)
def test_it_packs_what_packb_packs(value: object) -> None:
    assert packing.pack(value) == msgpack.packb(value, use_bin_type=True)


def test_a_failed_pack_leaves_nothing_behind_for_the_next() -> None:
    with pytest.raises(TypeError):
        packing.pack([b"x" * 1000, object()])
    assert packing.pack([1, b"k"]) == msgpack.packb([1, b"k"], use_bin_type=True)


def test_a_packer_that_packed_something_large_is_not_kept() -> None:
    packing.pack([1])
    kept = packing._local.packer
    packing.pack([1])
    assert packing._local.packer is kept  # reused while small
    packing.pack(b"x" * packing.KEEP_BELOW)
    assert packing._local.packer is None
    packing.pack([1])
    assert packing._local.packer is not None and packing._local.packer is not kept


def test_each_thread_has_its_own_packer() -> None:
    packing.pack([1])
    mine = packing._local.packer
    theirs: list[object] = []

    def other() -> None:
        packing.pack([2])
        theirs.append(packing._local.packer)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert theirs and theirs[0] is not None and theirs[0] is not mine
