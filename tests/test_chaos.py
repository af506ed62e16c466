"""`python -m tools.chaos`: its checker, and a short campaign on each transport.

The checker's tests show that it can fail (a lost or an invented increment
is a violation); the campaigns run real daemons through kills, hangs,
recoveries, full disks (and on tcp majority kills) and must end with no
violation.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from ctdb.common.errors import CtdbError, ErrorCode
from tests.conftest import PYTHON, REPO
from tools.chaos import (
    PERSISTENT_DB,
    SAMBA_CTDB,
    VOLATILE_DB,
    Campaign,
    Plan,
    SharedCounter,
)
from tools.cluster import LocalCluster


def campaign(tmp_path: Path) -> Campaign:
    plan = Plan("tcp", 1.0, ("recover",), seed=1)
    return Campaign(LocalCluster(tmp_path), plan, say=lambda _message: None)


def counter_at(acknowledged: int, in_doubt: int = 0, in_flight: int = 0) -> SharedCounter:
    counter = SharedCounter("counter0", PERSISTENT_DB)
    for outcome, times in (("acknowledged", acknowledged), ("in doubt", in_doubt)):
        for _ in range(times):
            counter.started()
            counter.ended(outcome, outcome)
    for _ in range(in_flight):
        counter.started()
    return counter


def reads(value: int) -> Callable[[str, str], bytes]:
    return lambda _db, _key: str(value).encode()


def test_a_read_below_what_was_acknowledged_is_a_lost_write(tmp_path: Path) -> None:
    c = campaign(tmp_path)
    counter = counter_at(acknowledged=5)
    assert c.read(counter, "here", True, reads(5)) == 5
    assert not c.violations
    c.read(counter, "there", True, reads(4))
    assert [(v.value, v.floor, v.ceiling, v.where) for v in c.violations] == [(4, 5, 5, "there")]


def test_a_loss_the_design_allows_is_not_a_violation(tmp_path: Path) -> None:
    c = campaign(tmp_path)
    c.read(counter_at(acknowledged=5), "here", False, reads(0))
    assert not c.violations


def test_a_read_above_what_was_started_is_an_invented_write(tmp_path: Path) -> None:
    c = campaign(tmp_path)
    # In doubt and in flight may or may not have happened: up to 5 + 1 + 1.
    counter = counter_at(acknowledged=5, in_doubt=1, in_flight=1)
    c.read(counter, "here", True, reads(7))
    assert not c.violations
    c.read(counter, "here", False, reads(8))
    assert [(v.value, v.ceiling) for v in c.violations] == [(8, 7)]


def test_a_refused_commit_raises_no_bound(tmp_path: Path) -> None:
    counter = counter_at(acknowledged=2)
    counter.started()
    counter.ended("refused", "commit failed", CtdbError(ErrorCode.BUSY, "conflict"))
    assert (counter.floor(), counter.ceiling()) == (2, 2)
    assert counter.errors == {"BUSY": 1}


def daemon_logs(kept: Path, lines: int = 40) -> str:
    """The last `lines` lines of each node's log that say more than routine:
    view changes, syncs, warnings, errors (a campaign keeps its logs on
    failure only)."""
    out = []
    for log in sorted(kept.glob("cluster/node*/ctdbd.log")):
        said = [
            line
            for line in log.read_text(errors="replace").splitlines()
            if " INFO: " not in line or "view" in line or "sync" in line
        ]
        out.append(f"--- {log.parent.name}, last {lines} lines of note ---")
        out += [line[:300] for line in said[-lines:]]
    return "\n".join(out) + "\n" if out else ""


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("transport", "faults", "netns"),
    [
        ("tcp", "kill,hang,recover,majority,disk-full", False),
        ("vs", "kill,hang,recover,disk-full", False),
        # one node's corosync killed and restarted: that node goes solo, then joins again
        ("vs", "corosync", True),
    ],
)
def test_a_short_campaign_keeps_every_acknowledged_increment(
    transport: str, faults: str, netns: bool, tmp_path: Path
) -> None:
    # Samba's own tool writes too where it is installed (the README's test set-up installs it).
    samba = ["--samba"] if os.access(SAMBA_CTDB, os.X_OK) else []
    keep = tmp_path / "kept"
    done = subprocess.run(
        [PYTHON, "-m", "tools.chaos", "--transport", transport, "--faults", faults, *samba]
        + (["--netns"] if netns else [])
        + ["--duration", "5", "--min-faults", "2", "--seed", "11", "--json"]
        + ["--log-level", "INFO", "--keep", str(keep)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=220,
    )
    # A failure seen once in CI is worth its daemons' account, first.
    assert done.returncode == 0, daemon_logs(keep) + done.stderr[-4000:] + done.stdout
    result = json.loads(done.stdout)
    assert result["violations"] == [] and result["healthy_at_end"]
    assert sum(result["faults"].values()) >= 2
    # On vs with StableVolatileWrites the volatile counters are promised too.
    assert result["volatile_checked"] == (transport == "vs")
    for db in (PERSISTENT_DB, VOLATILE_DB):
        done_here = [v["acknowledged"] for k, v in result["increments"].items() if k.startswith(db)]
        assert sum(done_here) > 0, result
    for values in result["final_values"].values():
        assert len(set(values)) == 1
    if samba:
        assert sum(w["acknowledged"] for w in result["samba_writes"].values()) > 0, result
