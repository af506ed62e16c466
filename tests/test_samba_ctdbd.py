"""The launcher of Samba's real ctdbd (tools/samba_ctdbd.py) on a local 3-node cluster.

Other work reuses it to run Samba's daemon next to ours (benchmarks, Samba's
`ctdb` tool and test programs), so this test checks what they rely on: the
nodes form one cluster, a record written on one node is read on another,
and tear-down leaves no process. Its kill -9, restart and forced recover are
checked by the recovery benchmark's smoke test, which runs them on Samba's
ctdbd and verifies each (`tests/test_bench_recovery_smoke.py`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.samba_ctdbd import SambaCluster, _node_processes, available

pytestmark = [
    pytest.mark.skipif(not available(), reason="Samba's ctdbd is not installed (/usr/sbin/ctdbd)"),
    pytest.mark.timeout(240),
]


@pytest.fixture
def samba(tmp_path: Path) -> Iterator[SambaCluster]:
    c = SambaCluster.start(tmp_path, size=3)
    try:
        yield c
    finally:
        c.down()


def test_writekey_on_node0_readkey_on_node2_then_down(samba: SambaCluster) -> None:
    samba.attach("samba_launcher_test.tdb")
    samba.ctdb(0, "writekey", "samba_launcher_test.tdb", "greeting", "hello from node 0")
    out = samba.ctdb(2, "readkey", "samba_launcher_test.tdb", "greeting")
    assert out.strip() == "Data: size:17 ptr:[hello from node 0]"

    samba.attach("samba_launcher_test_p.tdb", "persistent")
    samba.ctdb(1, "pstore", "samba_launcher_test_p.tdb", "k", "persistent value")
    assert samba.ctdb(2, "pfetch", "samba_launcher_test_p.tdb", "k").strip() == "persistent value"

    started = {p: (pid, samba.node_dir(p)) for p, pid in samba.pids.items()}
    assert all(_node_processes(pid, d) for pid, d in started.values())
    samba.down()  # ctdbd and the helpers it forked, nothing else
    assert samba.pids == {}
    assert all(_node_processes(pid, d) == [] for pid, d in started.values())
