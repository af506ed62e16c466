"""Smoke test of the `ptrans` benchmark: its quick mode (1,000 records, one
round) against Samba's ctdbd and pyctdb writes every output, times every
configuration, and the identical rewrite commits nothing on pyctdb (the
sequence number stays put, with ctdbtool as with Samba's ctdb tool). No
timing is asserted beyond being positive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_bench
from tools.samba_ctdbd import available as samba_available

CONFIGS = ("samba ctdbd", "pyctdb", "pyctdb + samba ctdb")
PHASES = ("first", "identical", "changed")

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not samba_available(), reason="needs Samba's ctdbd and ctdb (Debian: ctdb)"),
]


def test_ptrans_quick(tmp_path: Path) -> None:
    out = tmp_path / "ptrans"
    run_bench(["bench.ptrans", "--quick", "--out", str(out)], timeout=240)
    r = json.loads((out / "results.json").read_text())
    assert r["records"] == 1000 and r["rounds"] == 1
    assert list(r["summary"]) == list(CONFIGS)
    for name in CONFIGS:
        s = r["summary"][name]
        (entry,) = r["runs"][name]
        assert entry["errors"] == [], (name, entry["errors"])
        for key in ("startup", *PHASES):
            assert s[f"{key}_s"] is not None and s[f"{key}_s"] > 0, (name, key, s)
            assert s["ratio_to_samba"][key] > 0, (name, key)
        assert set(entry["seqnum"]) == {"attached", *PHASES}, (name, entry["seqnum"])
    for name in ("pyctdb", "pyctdb + samba ctdb"):
        seq = r["runs"][name][0]["seqnum"]
        assert seq["identical"] == seq["first"], (name, seq)
        assert r["summary"][name]["identical_committed"] == [False]
    assert r["summary"]["samba ctdbd"]["ratio_to_samba"]["identical"] == 1.0
    assert isinstance(r["target"]["met"], bool)
    assert (out / "ptrans.png").stat().st_size > 10_000
    summary = (out / "summary.md").read_text()
    assert all(f"| {name} |" in summary for name in CONFIGS) and "Target" in summary
