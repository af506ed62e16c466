"""A clustered Samba: three smbd (Debian's, `clustering = yes`) on either transport.

Each smbd talks to its own node's daemon through CTDB's protocol
(`ctdbd socket`) and serves one directory that all three share. smbd keeps
its clustered databases there: the open files and share modes
(`locking.tdb`, volatile: REQ_CALL brings a record to the node whose smbd
locks it, migrated over tcp, lent through its replicated lock over vs), the
sessions (`smbXsrv_*`), and the users (`passdb.tdb`, persistent: the user
added through node 0 logs in on every node).

smbd, smbpasswd and the `smbprotocol` client are installed by
`tools/setup.sh --test` (with Samba's `ctdb` tool, which reads the daemons'
statistics here); without them these tests fail, they do not skip.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ctdb.common.config import CTDB_SOCKET_NAME
from tests.conftest import start_cluster
from tools.cluster import LocalCluster

SMBD = shutil.which("smbd") or "/usr/sbin/smbd"
SMBPASSWD = shutil.which("smbpasswd") or "/usr/bin/smbpasswd"
CTDB = shutil.which("ctdb") or "/usr/bin/ctdb"
PASSWORD = "pyctdb-smb"
#: NTSTATUS of an open that conflicts with another open's share mode
STATUS_SHARING_VIOLATION = 0xC0000043
#: NTSTATUS of a read or write into a range another open has locked
STATUS_FILE_LOCK_CONFLICT = 0xC0000054


def _missing_tools() -> str | None:
    missing = [p for p in (SMBD, SMBPASSWD, CTDB) if not os.access(p, os.X_OK)]
    try:
        import smbprotocol  # noqa: F401
    except ImportError:
        missing.append("the smbprotocol Python package")
    if missing:
        return (
            f"{', '.join(missing)} missing: run tools/setup.sh --test "
            "(installs Debian's samba, smbclient and ctdb, and smbprotocol into .venv)"
        )
    if os.geteuid() != 0:
        return "smbd needs to run as root"
    return None


def ready(samba: SambaCluster | None) -> SambaCluster:
    """The cluster, or this test fails: what it needs is not installed."""
    if samba is None:
        pytest.fail(str(_missing_tools()), pytrace=False)
    return samba


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: All three smbd run on this host and share one directory: locks the
#: kernel holds on the files (fcntl byte ranges, flock share modes) would
#: show one smbd's locks to the others by themselves. They are off, so
#: share modes and byte-range locks reach another node only through
#: pyctdb's locking.tdb and brlock.tdb.
SMB_CONF = """\
[global]
clustering = yes
ctdbd socket = {ctdb_socket}
netbios name = PYCTDB
workgroup = PYCTDB
server role = standalone server
passdb backend = tdbsam
smb ports = {port}
interfaces = 127.0.0.1
bind interfaces only = yes
disable netbios = yes
server min protocol = SMB2
load printers = no
printcap name = /dev/null
disable spoolss = yes
lock directory = {d}/lock
state directory = {d}/state
cache directory = {d}/cache
private dir = {d}/private
pid directory = {d}/pid
ncalrpc dir = {d}/ncalrpc
log file = {d}/log.%m

[share]
path = {share}
read only = no
kernel share modes = no
posix locking = no
kernel oplocks = no
"""


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _exited(pid: int) -> bool:
    """Whether our child `pid` has exited, leaving it to be reaped."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


@dataclass
class Smbd:
    pnn: int
    port: int
    conf: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            # Its own session: smbd's children (per client, notifyd, cleanupd,
            # samba-dcerpcd) are in the process group this PID leads.
            self.proc = subprocess.Popen(
                [SMBD, "-F", "--no-process-group", "--debug-stdout", "-d", "1", "-s", self.conf],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_listening(self, deadline: float) -> None:
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"smbd {self.pnn} exited:\n{self.tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"smbd {self.pnn} is not listening:\n{self.tail()}"
                    ) from exc
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM to its process group, SIGKILL to what is left of it after
        10 s. The group is signalled only while the leader, our child, is not
        reaped yet, so its id cannot be anybody else's."""
        if self.proc is None or self.proc.returncode is not None:
            return
        pid = self.proc.pid
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _exited(pid):
            time.sleep(0.05)
        _signal_group(pid, signal.SIGKILL)
        self.proc.wait()

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])


@dataclass
class SambaCluster:
    cluster: LocalCluster
    smbds: list[Smbd]
    user: str


@pytest.fixture(scope="module", params=["tcp", "vs"])
def samba(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[SambaCluster | None]:
    """Three smbd on a cluster of each transport; None if what they need is
    not installed (each test then fails, saying so)."""
    if _missing_tools():
        yield None
        return
    directory = tmp_path_factory.mktemp("smbd")
    cluster: LocalCluster | None = None
    smbds: list[Smbd] = []
    try:
        cluster = start_cluster(directory, str(request.param))
        share = directory / "share"
        share.mkdir()
        share.chmod(0o777)
        for pnn in range(cluster.size):
            d = directory / f"smb{pnn}"
            for sub in ("lock", "state", "cache", "private", "pid", "ncalrpc"):
                (d / sub).mkdir(parents=True)
            port = _free_port()
            ctdb_socket = cluster.node_dir(pnn) / CTDB_SOCKET_NAME
            conf = d / "smb.conf"
            conf.write_text(SMB_CONF.format(ctdb_socket=ctdb_socket, port=port, d=d, share=share))
            smbds.append(Smbd(pnn, port, conf, d / "smbd.out"))
        user = pwd.getpwuid(os.geteuid()).pw_name
        # passdb.tdb is a persistent clustered database: one node adds the
        # user (a transaction through pyctdb), every node knows it.
        added = subprocess.run(
            [SMBPASSWD, "-c", str(smbds[0].conf), "-s", "-a", user],
            input=f"{PASSWORD}\n{PASSWORD}\n",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert added.returncode == 0, added.stdout + added.stderr
        for smbd in smbds:
            smbd.start()
        deadline = time.monotonic() + 30
        for smbd in smbds:
            smbd.wait_listening(deadline)
        yield SambaCluster(cluster, smbds, user)
    finally:
        for smbd in smbds:
            smbd.stop()
        if cluster is not None:
            cluster.down()
        shutil.rmtree(directory, ignore_errors=True)


class Share:
    """One SMB2 session on one node's smbd, connected to [share]."""

    def __init__(self, samba: SambaCluster, pnn: int) -> None:
        from smbprotocol.connection import Connection
        from smbprotocol.session import Session
        from smbprotocol.tree import TreeConnect

        self.connection = Connection(uuid.uuid4(), "127.0.0.1", samba.smbds[pnn].port)
        self.connection.connect(timeout=10)
        session = Session(self.connection, samba.user, PASSWORD)
        session.connect()
        self.tree = TreeConnect(session, r"\\127.0.0.1\share")
        self.tree.connect()

    def open(self, name: str, *, write: bool, share_write: bool) -> Any:
        """Open (create if absent) `name` for reading (and writing), letting
        others read (and write) it meanwhile."""
        from smbprotocol.open import (
            CreateDisposition,
            CreateOptions,
            FileAttributes,
            FilePipePrinterAccessMask,
            ImpersonationLevel,
            Open,
            ShareAccess,
        )

        access = FilePipePrinterAccessMask.GENERIC_READ
        if write:
            access |= FilePipePrinterAccessMask.GENERIC_WRITE
        share = ShareAccess.FILE_SHARE_READ
        if share_write:
            share |= ShareAccess.FILE_SHARE_WRITE
        handle = Open(self.tree, name)
        handle.create(
            ImpersonationLevel.Impersonation,
            access,
            FileAttributes.FILE_ATTRIBUTE_NORMAL,
            share,
            CreateDisposition.FILE_OPEN_IF,
            CreateOptions.FILE_NON_DIRECTORY_FILE,
        )
        return handle

    def close(self) -> None:
        self.connection.disconnect()


@pytest.fixture
def share_on(samba: SambaCluster | None) -> Iterator[Any]:
    """`share_on(pnn)`: a session on node `pnn`'s smbd, disconnected after the test."""
    opened: list[Share] = []

    def make(pnn: int) -> Share:
        opened.append(Share(ready(samba), pnn))
        return opened[-1]

    try:
        yield make
    finally:
        for s in opened:
            s.close()


def test_a_file_written_through_node_0_is_read_through_node_2(
    samba: SambaCluster | None, share_on: Any
) -> None:
    ready(samba)
    name = f"w{uuid.uuid4().hex[:8]}.txt"
    payload = b"written through node 0\n" * 100
    writer = share_on(0).open(name, write=True, share_write=False)
    assert writer.write(payload, 0) == len(payload)
    writer.close()
    reader = share_on(2).open(name, write=False, share_write=True)
    try:
        assert reader.read(0, len(payload)) == payload
    finally:
        reader.close()


def test_a_deny_write_open_through_node_0_holds_off_writers_on_node_1(
    samba: SambaCluster | None, share_on: Any
) -> None:
    cluster = ready(samba).cluster
    from smbprotocol.exceptions import SMBResponseException

    name = f"d{uuid.uuid4().hex[:8]}.txt"
    node0, node1 = share_on(0), share_on(1)
    calls = _record_calls(cluster, 1)
    # node 0: open for reading and writing, letting others only read
    held = node0.open(name, write=True, share_write=False)
    with pytest.raises(SMBResponseException) as refused:
        node1.open(name, write=True, share_write=True)
    assert refused.value.status == STATUS_SHARING_VIOLATION
    # reading is what node 0 allows
    node1.open(name, write=False, share_write=True).close()
    held.close()
    node1.open(name, write=True, share_write=True).close()
    # The share modes travelled in pyctdb's locking.tdb: node 1's smbd asked
    # its daemon to bring the file's record over (REQ_CALL) before it could
    # see node 0's open.
    assert _record_calls(cluster, 1) > calls


def _record_calls(cluster: LocalCluster, pnn: int) -> int:
    """REQ_CALLs node `pnn`'s clients sent, as Samba's `ctdb statistics` shows them."""
    env = dict(os.environ, CTDB_SOCKET=str(cluster.node_dir(pnn) / CTDB_SOCKET_NAME))
    out = subprocess.run(
        [CTDB, "statistics"], env=env, capture_output=True, text=True, timeout=30, check=True
    )
    found = re.search(r"^ client\n\s+req_call\s+(\d+)$", out.stdout, re.MULTILINE)
    assert found, out.stdout
    return int(found.group(1))


def test_a_byte_range_lock_through_node_0_holds_off_writes_through_node_1(
    samba: SambaCluster | None, share_on: Any
) -> None:
    ready(samba)
    from smbprotocol.exceptions import SMBResponseException
    from smbprotocol.open import LockFlags, SMB2LockElement

    def byte_range(offset: int, length: int, *flags: LockFlags) -> SMB2LockElement:
        element = SMB2LockElement()
        element["offset"] = offset
        element["length"] = length
        for flag in flags:
            element["flags"].set_flag(flag)
        return element

    name = f"b{uuid.uuid4().hex[:8]}.txt"
    ours = share_on(0).open(name, write=True, share_write=True)
    theirs = share_on(1).open(name, write=True, share_write=True)
    assert ours.write(b"x" * 100, 0) == 100
    assert theirs.write(b"y" * 10, 0) == 10  # node 1's smbd reads (and caches) no locks
    ours.lock(
        [
            byte_range(
                0,
                50,
                LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK,
                LockFlags.SMB2_LOCKFLAG_FAIL_IMMEDIATELY,
            )
        ]
    )
    # At once: the brlock.tdb record left node 1 for node 0, which moved
    # node 1's sequence number, so its smbd reads the locks afresh.
    with pytest.raises(SMBResponseException) as refused:
        theirs.write(b"z" * 10, 0)
    assert refused.value.status == STATUS_FILE_LOCK_CONFLICT
    assert theirs.write(b"z" * 10, 60) == 10  # outside the range
    ours.lock([byte_range(0, 50, LockFlags.SMB2_LOCKFLAG_UNLOCK)])
    assert theirs.write(b"z" * 10, 0) == 10
    ours.close()
    theirs.close()
