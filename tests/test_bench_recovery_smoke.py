"""Smoke test of the recovery benchmark: `--quick` runs and reports every figure.

Including the side-by-side run with Samba's ctdbd (2k records in --quick),
which CI has: without Samba's ctdbd the benchmark says so and skips it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_bench
from tools.samba_ctdbd import available as samba_available

pytestmark = pytest.mark.timeout(300)


def _positive(where: str, value: Any) -> None:
    assert isinstance(value, int | float) and value > 0, f"{where} = {value!r}"


def test_quick_run_writes_every_metric(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_bench(["bench.recovery", "--quick", "--out", str(out)], timeout=280)
    assert "[recovery" in proc.stderr  # progress goes to stderr
    assert (out / "recovery.png").stat().st_size > 1000
    summary = (out / "summary.md").read_text()
    assert "## Targets" in summary and "raw tdb" in summary
    r = json.loads((out / "results.json").read_text())

    for name in ("default", "tuned"):
        d = r["detection"][name]
        for how in ("kill9", "hang"):
            for stat in ("median", "min", "max"):
                _positive(f"detection.{name}.{how}.{stat}", d[how][stat])
    # The keepalive timeout is what the tunables change: 1 s x 5 vs 0.1 s x 3.
    assert r["detection"]["default"]["hang"]["median"] > r["detection"]["tuned"]["hang"]["median"]
    for section, fields in (
        ("kill_to_served", ("served", "normal")),
        ("forced", ("wall", "daemon")),
    ):
        for f in fields:
            _positive(f"{section}.{f}.median", r[section][f]["median"])
    assert [e["records"] for e in r["sizes"]["volatile"]] == [1000, 10000]
    assert [e["records"] for e in r["sizes"]["persistent"]] == [1000]
    for kind, entries in r["sizes"].items():
        for e in entries:
            assert e["completed"], e
            for f in (
                "wall",
                "daemon",
                "repeat_wall",
                "load_s",
                "baseline_copy",
                "baseline_recovery_io",
            ):
                _positive(f"sizes.{kind}[{e['records']}].{f}", e[f])
    names = [t["name"] for t in r["targets"]]
    assert len(names) == 4
    for t in r["targets"]:
        if t["target_s"] is not None:
            _positive(t["name"], t["measured_s"])
            assert t["met"] in (True, False)

    side = r["side_by_side"]
    assert side["available"] is samba_available()
    if not side["available"]:
        return
    assert "## Side by side with Samba's ctdbd" in summary
    assert "error" not in side, side["error"]
    for daemon in ("pyctdb", "ctdbd"):
        d = side["full"][daemon]
        assert d["records"] == 2000
        for scenario, figures in (
            ("kill", ("s", "daemon", "step")),
            ("restart", ("s", "step")),
            ("forced", ("tool", "seen", "daemon", "step")),
        ):
            for f in figures:
                _positive(f"side.{daemon}.{scenario}.{f}", d[scenario][f]["median"])
            assert d[scenario]["verified"], (daemon, scenario, d[scenario]["runs"])
        _positive(f"tool_start.{daemon}", side["tool_start"][daemon]["median"])
    rows = r["side_ratios"]
    assert len(rows) == 6  # one phase (--quick has no empty-database phase)
    for row in rows:
        _positive(row["name"], row["ratio"])
        assert row["met"] is None  # targets are judged on 160k records only
    differs = side["differs"]
    _positive("differs.full_copy", differs["full_copy"]["wall"])
    for kind in ("volatile", "persistent"):
        assert [e["changed"] for e in differs[kind]] == [0, 200]
        for e in differs[kind]:
            _positive(f"differs.{kind}[{e['changed']}]", e["wall"])
    assert [e["missed"] for e in differs["missed"]] == [200]
    _positive("differs.missed", differs["missed"][0]["s"])
