"""ctdbd that cannot start says why in one line and exits non-zero.

A node restarted on a full disk cannot count its start (the incarnation
file, fsync'd before it serves): it used to die with a traceback ending in
"No space left on device", naming no file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import random_port, run_ctdbd, tmpfs
from tools.chaos import fill


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, filled."""
    with tmpfs(tmp_path / "state", "1m") as disk:
        fill(disk / "filler")
        yield disk


def test_ctdbd_on_a_full_disk_says_which_file_it_could_not_write(
    tmp_path: Path, full_disk: Path
) -> None:
    (tmp_path / "nodes").write_text("127.0.0.1\n127.0.0.2\n")
    conf = tmp_path / "ctdb.conf"
    conf.write_text(
        f"[cluster]\nnodes = nodes\naddress = 127.0.0.1\nport = {random_port()}\n"
        f"[database]\nstate dir = {full_disk}\n"
    )
    proc = run_ctdbd(conf)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ctdbd: ") and "No space left on device" in last
    assert str(full_disk / "incarnation") in last
