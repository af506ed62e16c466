"""The launcher of Samba's real ctdbd (tools/samba_ctdbd.py) on a local 3-node cluster.

Other work reuses it to run Samba's daemon next to ours (benchmarks, Samba's
`ctdb` tool and test programs), so these tests check what they rely on: the
nodes form one cluster, a record written on one node is read on another,
kill -9 / restart / forced recover behave, and tear-down leaves no process.
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


def test_kill_restart_and_recover(samba: SambaCluster) -> None:
    samba.attach("samba_launcher_kill.tdb", "persistent")
    samba.ctdb(0, "pstore", "samba_launcher_kill.tdb", "k", "v1")
    generation = samba.status(0).generation

    samba.kill_node(2)
    assert not samba.alive(2)
    samba.wait_healthy(60, nodes=[0, 1])  # the survivors recovered without node 2
    st = samba.status(1)
    assert "DISCONNECTED" in st.flags[2]
    assert sorted(st.vnnmap) == [0, 1] and st.generation != generation

    samba.start_node(2)
    samba.wait_healthy(90)
    assert samba.ctdb(2, "pfetch", "samba_launcher_kill.tdb", "k").strip() == "v1"

    before = samba.status(0).generation
    samba.recover(0)  # returns once the recovery has finished
    after = samba.status(0)
    assert after.generation != before and after.recovery_mode == "NORMAL"
