"""Smoke test of the contention benchmark: `--quick` runs on both transports and
reports every lock in every configuration of its grid, with the counter check."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import run_bench

pytestmark = pytest.mark.timeout(240)


def test_contention_quick(tmp_path: Path) -> None:
    from bench.contention import TRANSPORTS, VARIANTS, Plan

    out = tmp_path / "contention"
    proc = run_bench(["bench.contention", "--quick", "--out", str(out)], timeout=220)
    assert "[contention" in proc.stderr  # progress goes to stderr
    assert (out / "contention.png").stat().st_size > 10_000
    summary = (out / "summary.md").read_text()
    assert "## Headline" in summary and "Samba's real ctdbd is not measured" in summary
    r = json.loads((out / "results.json").read_text())

    plan = Plan.make(quick=True)
    grid = {(n, c) for n in plan.nodes for c in plan.clients}
    assert set(r["transports"]) == set(TRANSPORTS)
    for transport, data in r["transports"].items():
        for variant in VARIANTS:
            rows = data["contention"][variant]
            assert {(x["nodes"], x["clients"]) for x in rows} == grid, (transport, variant)
            for x in rows:
                where = (transport, variant, x["nodes"], x["clients"])
                assert "error" not in x, (where, x.get("error"))
                assert x["acquisitions"] > 0 and x["per_s"] > 0, where
                assert 0 < x["p50_s"] <= x["p99_s"], where
                assert sum(x["per_client"]) == x["acquisitions"], where
                assert len(x["per_client"]) == x["clients"], where
                assert x["counter"] == x["acquisitions"] and x["counter_ok"], where
                assert 0 < x["driver_cpu_fraction"] and x["servers_cpu_fraction"] > 0, where
                migrations = x["migrations_per_acquisition"]
                if transport == "vs":
                    assert migrations == 0, where  # no record migrates over vs
                elif variant == "fetch_lock" and x["nodes"] > 1 and x["clients"] > 1:
                    assert migrations > 0, where
        assert len(data["uncontended"]) == 2 * len(plan.clients)
        for x in data["uncontended"]:
            assert x["appends_per_s"] > 0, (transport, x)
        assert data["ping_remote"]["rtt_p50_s"] > 0
        assert data["unlocked_increment"]["per_s"] > 0
    assert [e["clients"] for e in r["baselines"]["echo"]] == [1, max(plan.clients)]
    ratios = {(x["transport"], x["variant"], x["nodes"], x["clients"]): x for x in r["ratios"]}
    assert len(ratios) == len(TRANSPORTS) * len(VARIANTS) * len(grid)
    for (transport, variant, _, _), x in ratios.items():
        assert x["ratio"] is not None and math.isfinite(x["ratio"]) and x["ratio"] > 0
        if (transport, variant) == ("tcp", "fetch_lock"):
            assert x["ratio"] == 1.0
    assert len(r["headline"]) == len(TRANSPORTS) * len(VARIANTS)
    assert r["checks"]["counter_ok"] is True
    assert r["samba_ctdbd"]["measured"] is False
