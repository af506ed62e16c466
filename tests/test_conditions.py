"""The conditions of conditional append, one table each.

The share_mode and byte_range tables are Samba's conflict rules written out
(source3/smbd/open.c share_conflict(); source3/locking/brlock.c
brl_conflict() and byte_range_overlap()): each row names the rule it shows.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.conditions import (
    DELETE_ACCESS,
    FILE_APPEND_DATA,
    FILE_EXECUTE,
    FILE_READ_DATA,
    FILE_SHARE_DELETE,
    FILE_SHARE_READ,
    FILE_SHARE_WRITE,
    FILE_WRITE_DATA,
    READ_LOCK,
    REGISTRY,
    U64_MAX,
    WRITE_LOCK,
    Conflict,
    RecordView,
    byte_range_overlap,
    byte_range_payload,
    check_request,
    condition,
    evaluate,
    share_conflict,
    share_mode_payload,
)
from ctdb.storage.entries import MAX_ENTRIES, Entry, decode_entries, encode_entries

A = (0, 1)
A2 = (0, 2)  # same node as A, another client: another owner
B = (1, 1)


def entry(owner: tuple[int, int], payload: bytes = b"") -> Entry:
    return Entry(owner[0], owner[1], payload)


def record(*entries: Entry, rsn: int = 1) -> RecordView:
    return RecordView(rsn, entries)


def test_the_registry_holds_the_issue_conditions() -> None:
    assert set(REGISTRY) == {
        "always",
        "empty",
        "rsn_equals",
        "max_entries",
        "share_mode",
        "byte_range",
    }


def test_a_name_is_registered_once() -> None:
    with pytest.raises(ValueError, match="twice"):
        condition("always", arg=lambda name, arg: None)(lambda record, new, arg: None)


# always, empty, rsn_equals, max_entries: (condition, argument, entries held, RSN, appended?)

SIMPLE = [
    ("always", None, 0, 0, True),
    ("always", None, 5, 9, True),
    ("empty", None, 0, 0, True),
    ("empty", None, 0, 7, True),  # every entry removed: the RSN does not matter
    ("empty", None, 1, 7, False),
    ("rsn_equals", 0, 0, 0, True),  # a record that does not exist has RSN 0
    ("rsn_equals", 7, 3, 7, True),
    ("rsn_equals", 7, 3, 8, False),
    ("rsn_equals", 8, 3, 7, False),
    ("rsn_equals", "7", 3, 7, True),  # the command line passes text
    ("rsn_equals", U64_MAX, 0, U64_MAX, True),
    ("max_entries", 0, 0, 0, False),
    ("max_entries", 1, 0, 0, True),
    ("max_entries", 1, 1, 0, False),
    ("max_entries", 3, 2, 0, True),
    ("max_entries", 3, 3, 0, False),
    ("max_entries", 3, 4, 0, False),
    ("max_entries", "3", 2, 0, True),
    ("max_entries", MAX_ENTRIES, MAX_ENTRIES - 1, 0, True),
]


@pytest.mark.parametrize(("name", "arg", "held", "rsn", "appended"), SIMPLE)
def test_simple_conditions(name: str, arg: object, held: int, rsn: int, appended: bool) -> None:
    view = record(*[entry((0, i)) for i in range(held)], rsn=rsn)
    result = evaluate(name, arg, view, entry(B))
    assert (result is None) == appended
    if result is not None:
        assert result.reason


def test_empty_names_the_holder() -> None:
    assert evaluate("empty", None, record(entry(A), entry(B)), entry(B)) == Conflict(
        "the record is not empty", 0
    )


# share_mode: (held access, held share, new access, new share, conflict?, the rule)

R, W, AP, X, D = FILE_READ_DATA, FILE_WRITE_DATA, FILE_APPEND_DATA, FILE_EXECUTE, DELETE_ACCESS
SR, SW, SD = FILE_SHARE_READ, FILE_SHARE_WRITE, FILE_SHARE_DELETE
READ_ATTRIBUTES, READ_CONTROL, SYNCHRONIZE = 0x80, 0x20000, 0x100000

SHARE_MODE_TABLE = [
    (R, SR, R, SR, False, "readers sharing read"),
    (R, SR, R, 0, True, "check 3: held read, new open does not share read"),
    (R, 0, R, SR, True, "check 4: new read, held open does not share read"),
    (R, SR | SW, W, SR | SW, False, "reader and writer sharing both"),
    (R, SR, W, SR | SW, True, "check 2: new write, held open does not share write"),
    (W, SW, W, SW, False, "writers sharing write"),
    (W, SR, R, SR, True, "check 1: held write, new open does not share write"),
    (AP, SR | SW | SD, R, SR, True, "append counts as write (check 1)"),
    (R, SR | SW | SD, W | AP, SR, False, "new append-writer, held shares all"),
    (X, SR, R, SR, False, "execute counts as read, both share read"),
    (X, 0, R, SR | SW | SD, True, "check 4: held execute does not share read"),
    (R, SR, X, 0, True, "check 3: new execute does not share read"),
    (D, SD, D, SD, False, "deleters sharing delete"),
    (D, 0, D, SD, True, "check 6: new delete, held does not share delete"),
    (D, SR | SW | SD, R, SR | SW, True, "check 5: held delete, new does not share delete"),
    (W, SR | SW | SD, D, SR | SW, False, "new delete, held shares delete; no write wanted"),
    (R | W | D, SR | SW, R | W | D, SR | SW, True, "full access, delete not shared"),
    (R | W | D, SR | SW | SD, R | W | D, SR | SW | SD, False, "full access, all shared"),
    (READ_ATTRIBUTES, 0, R | W | D, 0, False, "held stat open: no data access"),
    (R | W | D, 0, READ_ATTRIBUTES | SYNCHRONIZE, 0, False, "new stat open: no data access"),
    (READ_CONTROL, 0, W, 0, False, "read control is not a data access"),
    (R, SR, R | READ_CONTROL, 0, True, "other bits do not excuse the data bits"),
]


@pytest.mark.parametrize(
    ("held_access", "held_share", "access", "share", "conflict"),
    [row[:5] for row in SHARE_MODE_TABLE],
    ids=[row[5] for row in SHARE_MODE_TABLE],
)
def test_share_mode_table(
    held_access: int, held_share: int, access: int, share: int, conflict: bool
) -> None:
    assert share_conflict(held_access, held_share, access, share) == conflict
    held = entry(A, share_mode_payload(held_access, held_share))
    new = entry(B, share_mode_payload(access, share))
    result = evaluate("share_mode", None, record(held), new)
    assert (result is not None) == conflict
    # Samba checks a process's own opens too: the owner changes nothing.
    same_owner = evaluate("share_mode", None, record(held), entry(A, new.payload))
    assert (same_owner is not None) == conflict


@given(st.integers(0, 2**32 - 1), st.integers(0, 7), st.integers(0, 2**32 - 1), st.integers(0, 7))
def test_share_conflict_is_checked_both_ways(a1: int, s1: int, a2: int, s2: int) -> None:
    assert share_conflict(a1, s1, a2, s2) == share_conflict(a2, s2, a1, s1)


def test_share_mode_reports_the_first_conflicting_open() -> None:
    held = record(
        entry(A, share_mode_payload(R, SR | SW)),
        entry(A2, share_mode_payload(W, SR | SW)),
        entry(B, share_mode_payload(W, SR)),
    )
    result = evaluate("share_mode", None, held, entry(B, share_mode_payload(R, SR)))
    assert result is not None and result.index == 1
    assert "sharing violation" in result.reason
    # Reading and writing while sharing both: only the third open, which
    # does not share write, is in the way.
    result = evaluate("share_mode", None, held, entry(B, share_mode_payload(R | W, SR | SW)))
    assert result is not None and result.index == 2
    first_two = record(*held.entries[:2])
    assert (
        evaluate("share_mode", None, first_two, entry(B, share_mode_payload(R | W, SR | SW)))
        is None
    )


# byte_range: (held owner, start, size, type; new owner, start, size, type; conflict?, the rule)

RD, WR = READ_LOCK, WRITE_LOCK
END = U64_MAX  # the last byte of 64-bit file space

BYTE_RANGE_TABLE = [
    (A, 0, 10, RD, B, 5, 10, RD, False, "read locks never conflict"),
    (A, 0, 10, RD, B, 5, 10, WR, True, "new write over another's read"),
    (A, 0, 10, WR, B, 5, 10, RD, True, "new read over another's write"),
    (A, 0, 10, WR, B, 5, 10, WR, True, "write over write"),
    (A, 0, 10, WR, A, 5, 10, RD, False, "read stacks on the same owner's write"),
    (A, 0, 10, RD, A, 5, 10, WR, True, "new write over the same owner's read"),
    (A, 0, 10, WR, A, 5, 10, WR, True, "new write over the same owner's write"),
    (A, 0, 10, WR, A2, 5, 10, RD, True, "another client of the same node is another owner"),
    (A, 0, 10, WR, B, 10, 5, WR, False, "adjacent after: [0,9] and [10,14]"),
    (A, 10, 5, WR, B, 0, 10, WR, False, "adjacent before"),
    (A, 0, 10, WR, B, 9, 1, WR, True, "the last byte of the held range"),
    (A, 5, 5, WR, B, 0, 100, WR, True, "held inside new"),
    (A, 0, 10, WR, B, 5, 0, WR, True, "zero size strictly inside a range"),
    (A, 5, 10, WR, B, 5, 0, WR, False, "zero size at a range's start"),
    (A, 0, 10, WR, B, 10, 0, WR, False, "zero size at a range's end"),
    (A, 5, 0, WR, B, 0, 10, WR, True, "held zero size strictly inside the new range"),
    (A, 5, 0, WR, B, 5, 0, WR, False, "two zero-size locks at one offset"),
    (A, 0, 10, WR, B, 0, 0, WR, False, "{0, 0} overlaps nothing"),
    (A, 0, 0, WR, B, 0, 10, WR, False, "a held {0, 0} overlaps nothing"),
    (A, 0, 1, WR, B, 0, 1, WR, True, "one byte at offset 0"),
    (A, END, 1, WR, B, END - 9, 10, WR, True, "the last byte of 64-bit space"),
    (A, END - 9, 9, WR, B, END, 1, WR, False, "up to the byte before the last"),
    (A, 0, END, WR, B, END, 1, RD, False, "size 2**64-1 from 0 ends at 2**64-2"),
    (A, 1, END, WR, B, END, 1, RD, True, "size 2**64-1 from 1 ends at the last byte"),
    (A, 10, END, WR, B, END, 1, WR, True, "a held invalid range runs to the end"),
]


@pytest.mark.parametrize(
    (
        "held_owner",
        "h_start",
        "h_size",
        "h_type",
        "owner",
        "start",
        "size",
        "lock_type",
        "conflict",
    ),
    [row[:9] for row in BYTE_RANGE_TABLE],
    ids=[row[9] for row in BYTE_RANGE_TABLE],
)
def test_byte_range_table(
    held_owner: tuple[int, int],
    h_start: int,
    h_size: int,
    h_type: int,
    owner: tuple[int, int],
    start: int,
    size: int,
    lock_type: int,
    conflict: bool,
) -> None:
    held = entry(held_owner, byte_range_payload(h_start, h_size, h_type))
    new = entry(owner, byte_range_payload(start, size, lock_type))
    result = evaluate("byte_range", None, record(held), new)
    assert (result is not None) == conflict
    if result is not None:
        assert result.index == 0 and "lock not granted" in result.reason


def bytes_overlap(start1: int, size1: int, start2: int, size2: int) -> bool:
    """The table's rule by counting bytes: ranges share a byte; a zero-size
    range overlaps a range it lies strictly inside."""
    if size1 == 0 and size2 == 0:
        return False
    if size1 == 0:
        return start2 < start1 < start2 + size2
    if size2 == 0:
        return start1 < start2 < start1 + size1
    return bool(set(range(start1, start1 + size1)) & set(range(start2, start2 + size2)))


@given(st.integers(0, 12), st.integers(0, 12), st.integers(0, 12), st.integers(0, 12))
def test_byte_range_overlap_counts_bytes(start1: int, size1: int, start2: int, size2: int) -> None:
    assert byte_range_overlap(start1, size1, start2, size2) == bytes_overlap(
        start1, size1, start2, size2
    )


def test_byte_range_against_many_locks() -> None:
    held = record(
        entry(B, byte_range_payload(0, 100, RD)),
        entry(A, byte_range_payload(50, 10, WR)),
        entry(B, byte_range_payload(200, 10, WR)),
    )
    # A's read over its own write and B's read: granted.
    assert evaluate("byte_range", None, held, entry(A, byte_range_payload(55, 2, RD))) is None
    # A's write over its own write conflicts first with B's read (index 0).
    result = evaluate("byte_range", None, held, entry(A, byte_range_payload(55, 2, WR)))
    assert result is not None and result.index == 0
    result = evaluate("byte_range", None, held, entry(A, byte_range_payload(150, 60, RD)))
    assert result is not None and result.index == 2
    # Through the record encoding: the same decisions.
    stored = RecordView(3, decode_entries(encode_entries(held.entries)))
    assert evaluate("byte_range", None, stored, entry(A, byte_range_payload(55, 2, RD))) is None


# Errors: unknown condition, bad argument, bad payload.


@pytest.mark.parametrize("name", ["nope", "EMPTY", "", None, 3, b"empty"])
def test_an_unknown_condition_is_not_supported(name: object) -> None:
    for call in (
        lambda: evaluate(name, None, record(), entry(A)),
        lambda: check_request(name, None, entry(A)),
    ):
        with pytest.raises(CtdbError, match="unknown condition") as info:
            call()
        assert info.value.code == ErrorCode.NOT_SUPPORTED


BAD_ARGUMENTS = [
    ("always", 1),
    ("empty", "x"),
    ("share_mode", 0),
    ("byte_range", ""),
    ("rsn_equals", None),
    ("rsn_equals", -1),
    ("rsn_equals", U64_MAX + 1),
    ("rsn_equals", "-1"),
    ("rsn_equals", "0x10"),
    ("rsn_equals", "1" * 21),
    ("rsn_equals", "9" * 5000),  # int() of it would raise ValueError
    ("rsn_equals", "٣"),  # a digit, but not ASCII
    ("rsn_equals", True),
    ("rsn_equals", 1.0),
    ("max_entries", None),
    ("max_entries", -1),
    ("max_entries", MAX_ENTRIES + 1),
    ("max_entries", [1]),
]


@pytest.mark.parametrize(("name", "arg"), BAD_ARGUMENTS)
def test_a_bad_argument_is_invalid(name: str, arg: object) -> None:
    for call in (
        lambda: evaluate(name, arg, record(), entry(A)),
        lambda: check_request(name, arg, entry(A)),
    ):
        with pytest.raises(CtdbError, match=f"condition {name} takes") as info:
            call()
        assert info.value.code == ErrorCode.INVALID


SHARE = share_mode_payload(R, SR)
LOCK = byte_range_payload(0, 10, RD)
BAD_PAYLOADS = [
    # (condition, held payloads, new payload, words of the message)
    ("share_mode", [], SHARE[:7], "the new entry is not a share_mode entry"),
    ("share_mode", [], SHARE + b"\0", "the new entry is not a share_mode entry"),
    ("share_mode", [], b"", "the new entry"),
    ("share_mode", [SHARE, LOCK], SHARE, "entry 1 of the record is not a share_mode"),
    ("byte_range", [], LOCK[:16], "the new entry is not a byte_range entry"),
    ("byte_range", [], byte_range_payload(0, 1, 2), "the new entry has lock type 2"),
    ("byte_range", [LOCK, SHARE], LOCK, "entry 1 of the record is not a byte_range"),
    ("byte_range", [byte_range_payload(0, 1, 9)], LOCK, "entry 0 of the record has lock type 9"),
    ("byte_range", [], byte_range_payload(2, END, WR), "invalid lock range"),
    ("byte_range", [], byte_range_payload(END, 2, RD), "invalid lock range"),
]


@pytest.mark.parametrize(("name", "held", "payload", "words"), BAD_PAYLOADS)
def test_a_bad_payload_is_invalid(name: str, held: list[bytes], payload: bytes, words: str) -> None:
    view = record(*[entry(B, p) for p in held])
    with pytest.raises(CtdbError, match=words) as info:
        evaluate(name, None, view, entry(A, payload))
    assert info.value.code == ErrorCode.INVALID


@pytest.mark.parametrize(
    ("name", "arg", "payload", "refused"),
    [
        ("share_mode", None, SHARE, False),
        ("share_mode", None, LOCK, True),
        ("byte_range", None, LOCK, False),
        ("byte_range", None, byte_range_payload(2, END, WR), True),
        ("rsn_equals", 5, b"anything", False),  # holds on no empty record, still a valid request
        ("max_entries", 0, b"", False),
    ],
)
def test_check_request_refuses_what_no_record_could_accept(
    name: str, arg: object, payload: bytes, refused: bool
) -> None:
    if refused:
        with pytest.raises(CtdbError) as info:
            check_request(name, arg, entry(A, payload))
        assert info.value.code == ErrorCode.INVALID
    else:
        check_request(name, arg, entry(A, payload))
