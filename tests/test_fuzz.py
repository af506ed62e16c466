"""A short live fuzzing campaign against real daemons, as CI runs it.

`python -m tools.fuzz` starts its own daemons, throws random and mutated
frames at them while a witness client works, and exits non-zero if any
frame met another fate than the daemon's own decoders say it must, if the
witness failed, an acknowledged record changed or a daemon died. The long
campaigns (a million frames) are run by hand; see the README.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def campaign(tmp_path: Path, *args: str) -> dict[str, object]:
    out = tmp_path / "summary.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.fuzz", *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary: dict[str, object] = json.loads(out.read_text())
    assert summary["problems"] == [] and summary["crashes"] == []
    assert summary["witness_failures"] == [] and summary["changed_records"] == []
    assert isinstance(summary["witness_ops"], int) and summary["witness_ops"] > 0
    return summary


@pytest.mark.parametrize("seed", [11])
def test_client_socket_campaign(tmp_path: Path, seed: int) -> None:
    s = campaign(tmp_path, "--target", "client", "--frames", "4000", "--seed", str(seed))
    assert isinstance(s["frames"], int) and s["frames"] >= 4000
    codes = s["reply_codes"]
    assert isinstance(codes, dict)
    # valid requests answered, and the decoders' refusals seen
    assert {"OK", "INVALID", "PROTOCOL"} <= set(codes)


@pytest.mark.parametrize("seed", [12])
def test_node_link_campaign(tmp_path: Path, seed: int) -> None:
    s = campaign(tmp_path, "--target", "node", "--frames", "3000", "--seed", str(seed))
    assert isinstance(s["frames"], int) and s["frames"] >= 3000
    assert isinstance(s["link_drops"], int) and s["link_drops"] > 20
    # every refused frame was counted by the daemon it was sent to
    assert s["bad_messages_counted_by_daemons"] == [s["link_drops"], 0]
