"""Durable counters (the recovery epoch survives kill -9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.storage.durable import read_counter, write_counter


def test_missing_file_reads_zero(tmp_path: Path) -> None:
    assert read_counter(tmp_path / "epoch") == 0


def test_written_value_reads_back_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "epoch"
    write_counter(path, 7)
    assert read_counter(path) == 7
    write_counter(path, 8)
    assert read_counter(path) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch"]  # no temp file left


@pytest.mark.parametrize("text", ["", "seven", "-3\n"])
def test_corrupt_file_is_an_io_error_naming_it(tmp_path: Path, text: str) -> None:
    path = tmp_path / "epoch"
    path.write_text(text)
    with pytest.raises(CtdbError) as info:
        read_counter(path)
    assert info.value.code == ErrorCode.IO
    assert str(path) in info.value.message
