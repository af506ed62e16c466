"""Smoke test of the admin tool start-up benchmark: `--quick` runs against
both daemons and writes every output with sane numbers (no timing asserted)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import run_bench

pytestmark = pytest.mark.timeout(180)


def test_cli_startup_quick(tmp_path: Path) -> None:
    out = tmp_path / "cli_startup"
    run_bench(["bench.cli_startup", "--quick", "--out", str(out)], timeout=170)
    r = json.loads((out / "results.json").read_text())
    from bench.cli_startup import BASELINE, commands

    assert list(r["commands"]) == list(commands("any.socket"))
    for name, e in r["commands"].items():
        assert e["runs"] == r["runs"] == 5 and len(e["walls_s"]) == 5, name
        for stat in ("p50_s", "p90_s", "min_s", "max_s"):
            assert math.isfinite(e[stat]) and 0 < e[stat] < 60, (name, stat, e[stat])
        assert e["min_s"] <= e["p50_s"] <= e["p90_s"] <= e["max_s"], name
        assert e["ratio_to_samba"] > 0, name
    assert r["commands"][BASELINE]["ratio_to_samba"] == 1.0
    assert r["target"]["value"] == r["commands"]["ctdbtool pnn"]["ratio_to_samba"]
    assert isinstance(r["target"]["met"], bool)
    assert (out / "cli_startup.png").stat().st_size > 10_000
    summary = (out / "summary.md").read_text()
    assert "| `ctdbtool pnn` |" in summary and "Target:" in summary
