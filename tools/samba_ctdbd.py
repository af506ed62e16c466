"""A local cluster of Samba's real ctdbd on loopback addresses, for side-by-side runs.

pyctdb is measured against the daemon it imitates: Samba's ctdbd (Debian
package `ctdb` 4.17, installed by `tools/setup.sh --test`). This launcher
starts N of them on one host the way Samba's own test suite does
(ctdb/tests/local_daemons.sh):

* `CTDB_TEST_MODE=yes` makes ctdbd and the `ctdb` tool take every path from
  `CTDB_BASE` (config, nodes file, run dir with the socket, helpers from
  `CTDB_TEST_HELPER_BINDIR`), so each node gets its own directory
  `DIR/node.<pnn>/` with `ctdb.conf`, `nodes`, `db/{volatile,persistent,state}`
  and `run/`;
* node i listens on `<base>.<i+1>`, one loopback address per node, with a
  random base (127.X.Y) like tests/conftest.py. Samba 4.17 takes the port
  from /etc/services (`ctdb`, else 4379) and its nodes file has no port
  column, so every node uses that port and the base address is what keeps
  clusters of different people apart;
* a `cluster lock` file shared by the nodes of one cluster (one host: the
  fcntl helper suffices), no event scripts, no public addresses (failover
  disabled), no real-time scheduling (the host is shared; pyctdb runs at
  normal priority too);
* `ctdbd --interactive` in the foreground, its log in `DIR/node.<pnn>/log.ctdb`.

Each ctdbd is started in a session of its own, so it and the helpers it
forks (event daemon, recovery daemon, lock helpers) share one process group
whose id is the PID recorded here: stopping a node stops that ctdbd, then
whatever of its group still runs with its CTDB_BASE, and nothing else.

    with SambaCluster.start(Path("/tmp/x"), size=3) as c:
        c.attach("test.tdb")
        c.ctdb(0, "writekey", "test.tdb", "k", "v")
        c.ctdb(2, "readkey", "test.tdb", "k")
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

CTDBD = Path("/usr/sbin/ctdbd")
CTDB = Path("/usr/bin/ctdb")
HELPER_DIR = Path("/usr/libexec/ctdb")

# `ctdb uptime`: "Time of last recovery/failover: (000 00:00:03) Wed Dec  2 13:22:20 2026"
_LAST_RECOVERY = re.compile(r"Time of last recovery/failover: \([^)]*\) (.*)")
_DURATION = re.compile(r"Duration of last recovery/failover: ([0-9.]+) seconds")


def available() -> bool:
    """True when Samba's ctdbd and ctdb tool are installed."""
    return CTDBD.exists() and CTDB.exists()


def random_base() -> str:
    return f"127.{random.randint(10, 250)}.{random.randint(0, 250)}"


class SambaCtdbError(RuntimeError):
    """A `ctdb` command failed, or a Samba node did not reach the state asked for."""


@dataclass(frozen=True)
class LastRecovery:
    """What `ctdb uptime` says about the last recovery a node took part in."""

    #: When it finished, as ctdbd prints it (one-second resolution): a new
    #: value means another recovery has finished since.
    finished: str
    #: ctdbd's own measure of that recovery, in seconds.
    duration: float


@dataclass(frozen=True)
class SambaStatus:
    """`ctdb status` of one node, parsed."""

    #: pnn -> flags as ctdb prints them ("OK", "DISCONNECTED|UNHEALTHY|INACTIVE", ...).
    flags: dict[int, str]
    generation: int | None  # None: INVALID (a recovery is under way)
    vnnmap: list[int]
    recovery_mode: str  # NORMAL or RECOVERY
    leader: int | None

    @classmethod
    def parse(cls, text: str) -> SambaStatus:
        flags = {int(p): f for p, f in re.findall(r"^pnn:(\d+) \S+\s+(\S+)", text, re.M)}
        gen = re.search(r"^Generation:(\S+)", text, re.M)
        mode = re.search(r"^Recovery mode:(\w+)", text, re.M)
        leader = re.search(r"^(?:Leader|Recovery master):(\d+)", text, re.M)
        if gen is None or mode is None:
            raise SambaCtdbError(f"unexpected `ctdb status` output: {text!r}")
        return cls(
            flags=flags,
            generation=None if gen.group(1) == "INVALID" else int(gen.group(1)),
            vnnmap=[int(p) for p in re.findall(r"^hash:\d+ lmaster:(\d+)", text, re.M)],
            recovery_mode=mode.group(1),
            leader=int(leader.group(1)) if leader else None,
        )


@dataclass
class SambaCluster:
    directory: Path
    size: int = 3
    #: First three octets of the node addresses; node i gets `<base>.<i+1>`.
    base: str = field(default_factory=random_base)
    #: Written to each node's ctdb.tunables (Samba's names, integer values).
    tunables: dict[str, int] = field(default_factory=dict)
    log_level: str = "NOTICE"
    #: pnn -> PID of its ctdbd (also the id of its process group).
    pids: dict[int, int] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        directory: Path,
        size: int = 3,
        tunables: dict[str, int] | None = None,
        timeout: float = 60.0,
    ) -> SambaCluster:
        """A started, healthy cluster under `directory`, retried on a fresh base address."""
        last: Exception | None = None
        for attempt in range(3):
            c = cls(directory / f"samba{attempt}", size, tunables=dict(tunables or {}))
            try:
                c.up(timeout)
                return c
            except (SambaCtdbError, TimeoutError, OSError) as exc:
                last = exc
        raise SambaCtdbError(f"Samba cluster did not come up: {last}")

    def __enter__(self) -> SambaCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    # -- layout ------------------------------------------------------------------------

    def address(self, pnn: int) -> str:
        return f"{self.base}.{pnn + 1}"

    def node_dir(self, pnn: int) -> Path:
        return self.directory / f"node.{pnn}"

    def socket(self, pnn: int) -> Path:
        return self.node_dir(pnn) / "run" / "ctdbd.socket"

    def log_path(self, pnn: int) -> Path:
        return self.node_dir(pnn) / "log.ctdb"

    def env(self, pnn: int) -> dict[str, str]:
        """The environment in which ctdbd and `ctdb` act as node `pnn`."""
        return {
            **os.environ,
            "CTDB_TEST_MODE": "yes",
            "CTDB_BASE": str(self.node_dir(pnn)),
            "CTDB_SOCKET": str(self.socket(pnn)),
            "CTDB_TEST_HELPER_BINDIR": str(HELPER_DIR),
        }

    def write_configs(self) -> None:
        nodes = "".join(f"{self.address(p)}\n" for p in range(self.size))
        for pnn in range(self.size):
            d = self.node_dir(pnn)
            for sub in ("db/volatile", "db/persistent", "db/state", "run", "events/legacy"):
                (d / sub).mkdir(parents=True, exist_ok=True)
            (d / "nodes").write_text(nodes)
            # ctdbd runs this on every state change and logs when it is missing.
            notify = d / "notify.sh"
            notify.write_text("#!/bin/sh\nexit 0\n")
            notify.chmod(0o755)
            (d / "ctdb.tunables").write_text(
                "".join(f"{k}={v}\n" for k, v in self.tunables.items())
            )
            (d / "ctdb.conf").write_text(
                "[logging]\n"
                f"\tlocation = file:{self.log_path(pnn)}\n"
                f"\tlog level = {self.log_level}\n"
                "[cluster]\n"
                f"\tnode address = {self.address(pnn)}\n"
                f"\tcluster lock = {self.directory / 'cluster.lock'}\n"
                "[database]\n"
                f"\tvolatile database directory = {d / 'db/volatile'}\n"
                f"\tpersistent database directory = {d / 'db/persistent'}\n"
                f"\tstate database directory = {d / 'db/state'}\n"
                "[failover]\n"
                "\tdisabled = true\n"
                "[legacy]\n"
                "\trealtime scheduling = false\n"
            )

    # -- processes ------------------------------------------------------------------------

    def up(self, timeout: float = 60.0) -> None:
        """Start every node and wait until all are OK; stops them again on failure."""
        if not available():
            raise SambaCtdbError(f"Samba's ctdbd is not installed ({CTDBD})")
        self.write_configs()
        try:
            for pnn in range(self.size):
                self.start_node(pnn)
            self.wait_healthy(timeout)
        except BaseException:
            self.down()
            raise

    def start_node(self, pnn: int) -> int:
        if self.alive(pnn):
            raise SambaCtdbError(f"node {pnn} is already running (pid {self.pids[pnn]})")
        self.socket(pnn).unlink(missing_ok=True)
        with open(self.node_dir(pnn) / "ctdbd.stderr", "ab") as log:
            proc = subprocess.Popen(
                [str(CTDBD), "--interactive"],
                env=self.env(pnn),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.pids[pnn] = proc.pid
        return proc.pid

    def alive(self, pnn: int) -> bool:
        pid = self.pids.get(pnn)
        return pid is not None and _is_ctdbd(pid, self.node_dir(pnn))

    def kill_node(self, pnn: int) -> None:
        """kill -9 the node: ctdbd and every helper it forked, as a crash of the host would."""
        self.stop_node(pnn, signal.SIGKILL)

    def stop_node(self, pnn: int, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Signal ctdbd, wait until it is gone, then end what is left of its process group."""
        pid = self.pids.pop(pnn, None)
        if pid is None:
            return
        if _is_ctdbd(pid, self.node_dir(pnn)):
            os.kill(pid, sig)
            if not _wait_gone(pid, timeout):
                os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 5.0)
        # The event daemon and lock helpers notice their parent's death only
        # after seconds; they are in the group the node was started in.
        _kill_leftovers(pid, self.node_dir(pnn))

    def restart_node(self, pnn: int) -> int:
        """Stop the node if it runs (SIGTERM) and start it again; returns the new PID."""
        self.stop_node(pnn)
        return self.start_node(pnn)

    def down(self) -> None:
        for pnn in list(self.pids):
            self.stop_node(pnn)

    # -- the ctdb tool --------------------------------------------------------------------

    def run_ctdb(
        self, pnn: int, *args: str, input: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run Samba's `ctdb` tool against node `pnn`'s socket; never raises on failure."""
        return subprocess.run(
            [str(CTDB), *args],
            env=self.env(pnn),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ctdb(self, pnn: int, *args: str, input: str | None = None, timeout: float = 60.0) -> str:
        """`ctdb ARGS` against node `pnn`; its stdout, or SambaCtdbError if it failed."""
        proc = self.run_ctdb(pnn, *args, input=input, timeout=timeout)
        if proc.returncode != 0:
            raise SambaCtdbError(
                f"ctdb {' '.join(args)} on node {pnn} exited {proc.returncode}: "
                f"{(proc.stderr or proc.stdout).strip()}"
            )
        return proc.stdout

    def attach(self, db: str, kind: str = "volatile", pnn: int = 0) -> None:
        """Attach a database on every node (`persistent` or `replicated` as kind)."""
        self.ctdb(pnn, "attach", db, *([] if kind == "volatile" else [kind]))

    def recover(self, pnn: int = 0, timeout: float = 120.0) -> None:
        """Force a recovery; `ctdb recover` returns once it has finished."""
        self.ctdb(pnn, "recover", timeout=timeout)

    def status(self, pnn: int) -> SambaStatus:
        """Slow (about a second): ctdb waits for the leader's broadcast to name it."""
        return self.statuses([pnn])[pnn]

    def statuses(self, pnns: list[int], timeout: float = 30.0) -> dict[int, SambaStatus]:
        """`ctdb status` of several nodes, asked concurrently (each takes about a second)."""
        procs = {
            p: subprocess.Popen(
                [str(CTDB), "status"],
                env=self.env(p),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for p in pnns
        }
        outputs = {}
        try:
            for p, proc in procs.items():
                out, err = proc.communicate(timeout=timeout)
                if proc.returncode != 0:
                    raise SambaCtdbError(
                        f"ctdb status on node {p} exited {proc.returncode}: {err.strip()}"
                    )
                outputs[p] = SambaStatus.parse(out)
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return outputs

    def leader(self, pnn: int = 0) -> int:
        """The leader (recovery master). Slow: ctdb waits for the leader's broadcast."""
        return int(self.ctdb(pnn, "leader").strip())

    def last_recovery(self, pnn: int) -> LastRecovery:
        out = self.ctdb(pnn, "uptime", timeout=10)
        when, duration = _LAST_RECOVERY.search(out), _DURATION.search(out)
        if when is None or duration is None:
            raise SambaCtdbError(f"unexpected `ctdb uptime` output from node {pnn}: {out!r}")
        return LastRecovery(when.group(1).strip(), float(duration.group(1)))

    def nodes_ok(self, observer: int, nodes: list[int] | None = None) -> bool:
        """True if `observer` sees every listed node (default: all) OK."""
        spec = "all" if nodes is None else ",".join(str(p) for p in nodes)
        return self.run_ctdb(observer, "nodestatus", spec, timeout=10).returncode == 0

    def wait_healthy(self, timeout: float = 60.0, nodes: list[int] | None = None) -> None:
        """Until every listed node runs, sees the others OK, and all are NORMAL in one generation.

        Like tools.cluster.LocalCluster.wait_healthy: a node that has just
        died is DISCONNECTED at once, but the survivors are healthy only
        once the recovery that follows has installed a vnnmap without it.
        """
        want = sorted(nodes if nodes is not None else self.pids)
        deadline = time.monotonic() + timeout
        while True:
            problem = self._health_problem(want)
            if problem is None:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"Samba cluster not healthy after {timeout:.0f}s: {problem}")
            time.sleep(0.05)

    def _health_problem(self, want: list[int]) -> str | None:
        """Cheap checks first; `ctdb status` (slow) on every node only once they pass."""
        for pnn in want:
            if not self.alive(pnn):
                return f"node {pnn} is not running (see {self.log_path(pnn)})"
            try:
                runstate = self.run_ctdb(pnn, "runstate", timeout=10)
                if runstate.stdout.strip() != "RUNNING":
                    return f"node {pnn} runstate {runstate.stdout.strip() or runstate.stderr}"
                if not self.nodes_ok(pnn, want):
                    return f"node {pnn} does not see nodes {want} OK"
            except subprocess.TimeoutExpired:
                return f"node {pnn} not answering"
        try:
            statuses = self.statuses(want)
        except (SambaCtdbError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        generations = set()
        for pnn, st in statuses.items():
            if st.recovery_mode != "NORMAL" or st.generation is None:
                return f"node {pnn} in recovery"
            if sorted(st.vnnmap) != want:
                return f"node {pnn} vnnmap {st.vnnmap}"
            generations.add(st.generation)
        if len(generations) > 1:
            return "generations differ"
        return None


def _is_ctdbd(pid: int, node_dir: Path) -> bool:
    """True only if `pid` is a live ctdbd whose CTDB_BASE is `node_dir`."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        return False
    return f"CTDB_BASE={node_dir}".encode() in environ


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            _reap(pid)
            return True
        time.sleep(0.01)
    return False


def _node_processes(pgid: int, node_dir: Path) -> list[int]:
    """Live processes of group `pgid` that run as the node in `node_dir` (ctdbd and helpers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid or fields[0] == "Z":
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if f"CTDB_BASE={node_dir}".encode() in environ:
            found.append(int(entry.name))
    return found


def _kill_leftovers(pgid: int, node_dir: Path) -> None:
    """SIGKILL the helpers a stopped node left behind and wait until they are gone."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        pids = _node_processes(pgid, node_dir)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)
