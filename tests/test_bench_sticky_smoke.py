"""Smoke test of the StickyPindown benchmark: its quick mode measures every pin,
keeps every increment, and a pin cuts the calls per acquisition."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_bench

pytestmark = pytest.mark.timeout(300)


def test_sticky_quick(tmp_path: Path) -> None:
    out = tmp_path / "sticky"
    run_bench(["bench.sticky", "--quick", "--pins", "0,10", "--out", str(out)], timeout=280)
    r = json.loads((out / "results.json").read_text())
    assert list(r["summary"]) == ["0", "10"]
    unpinned, pinned = r["summary"]["0"], r["summary"]["10"]
    assert unpinned["counters_ok"] and pinned["counters_ok"]
    assert unpinned["ratio"] == 1.0 and unpinned["per_s"] > 0 and pinned["ring_per_s"] > 0
    # Without a pin the record moves about once per acquisition between three
    # contending nodes; a 10 ms pin serves many acquisitions per visit.
    assert unpinned["calls_per_acquisition"] > 0.5
    assert pinned["calls_per_acquisition"] < 0.5 * unpinned["calls_per_acquisition"]
    assert (out / "sticky.png").stat().st_size > 0
    assert "| 10 ms |" in (out / "summary.md").read_text()
