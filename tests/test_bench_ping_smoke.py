"""Smoke test of the warm ping benchmark: its quick mode measures every daemon
under every CPU placement, local and forwarded, and writes every output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_bench
from tools.samba_ctdbd import available as samba_available

DAEMONS = ("samba ctdbd", "pyctdb tcp", "pyctdb vs")

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not samba_available(), reason="needs Samba's ctdbd (Debian: ctdb)"),
]


def test_ping_quick(tmp_path: Path) -> None:
    out = tmp_path / "ping"
    run_bench(["bench.ping", "--quick", "--out", str(out)], timeout=280)
    r = json.loads((out / "results.json").read_text())
    placements = ["unpinned", "one CPU", "two CPUs"][: 3 if (os.cpu_count() or 1) >= 2 else 2]
    assert r["placements"] == placements
    assert list(r["summary"]) == [f"{p} / {t}" for p in placements for t in ("local", "node 1")]
    for row in r["summary"].values():
        assert row["samba ctdbd"]["speed_vs_samba"] == 1.0
        for daemon in DAEMONS:
            assert 0 < row[daemon]["p50_us"] <= row[daemon]["p99_us"], row
    # every measurement is 100 round trips of its own
    for daemon in DAEMONS:
        for placement in placements:
            for target in ("local", "node 1"):
                (entry,) = r["runs"][daemon][placement][target]
                assert entry["per_s"] > 0
    assert (out / "ping.png").stat().st_size > 0
    assert "| one CPU / node 1 |" in (out / "summary.md").read_text()
