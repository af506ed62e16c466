"""Network-namespace harness: a small virtual LAN for real partition tests.

Why: partition and split-brain behaviour (leader election, quorum, corosync
view changes) can only be tested honestly when the nodes really lose packets.
This module builds, on one host, a switch namespace holding a Linux bridge and
``n`` node namespaces, each plugged into the bridge by a veth pair, and lets a
test cut nodes off and heal them again.

Safety rules that the code follows on purpose:

* Every interface is created *inside* namespaces that this module creates
  (``ip -n NS link add ... peer ... netns OTHER``); the host's interfaces,
  routes and firewall are never touched.  The only host-visible side effects
  are the namespace names (``<prefix>-sw``, ``<prefix>-<i>``) and one
  directory per node (``<base>/<prefix>-run-<i>``).
* ``down`` kills only processes that live in our namespaces (``ip netns
  pids``), which by construction are ours, and it also removes leftovers of a
  crashed earlier run that used the same prefix.

Private ``/run`` (``private_run=True``): several corosync daemons on one host
collide in ``/run`` (pid file, libqb IPC) and ``/dev/shm`` (libqb ring
buffers).  Each node therefore has an on-disk directory ``node_dir(i)`` with
``run/``, ``shm/`` and ``state/`` sub-directories.  A command started with
``private_run=True`` runs in a fresh mount namespace in which ``run/`` is
bind-mounted over ``/run`` and ``shm/`` over ``/dev/shm``.  Because the
directory, not the mount namespace, is the shared object, a corosync and the
ctdbd clients of node ``i`` that are started separately (both with
``private_run=True``) see the same ``/run`` and ``/dev/shm``, while node
``j`` sees a different one.  The directories live in ``/tmp`` (not in the
host's ``/dev/shm`` or ``/run``, which private_run commands cannot see) and
stay visible at the same path inside private_run commands, so config files
and ``state/`` can be put there.  ``down`` deletes them, which also disposes
of the shm files libqb leaves behind when a client is SIGKILLed.

Run ``python -m tools.netns --help`` for the command-line interface.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = [
    "NetnsCluster",
    "available",
    "cleanup",
    "existing_nodes",
    "sweep_stale",
    "unique_prefix",
]

BRIDGE = "br0"
NODE_IF = "eth0"
DEFAULT_PREFIX = "ctdbt"
DEFAULT_SUBNET = "10.213.0.0/24"
#: A locally administered unicast MAC no interface has (see `cut_link`).
_NOWHERE_MAC = "02:00:5e:00:de:ad"

_File = int | IO[Any] | None

# Wrapper executed (by `sh`) inside a fresh mount namespace: bind the node's
# directories over /run and /dev/shm, then exec the real command so that the
# Popen pid *is* the command's pid (signals reach it directly).
_PRIVATE_RUN_SH = 'mount --bind "$1" /run && mount --bind "$2" /dev/shm && shift 2 && exec "$@"'


def _run_base() -> Path:
    """Where node directories live: /tmp.

    Why not RAM-backed /dev/shm: a private_run command has its own /dev/shm
    (and /run) bind-mounted over the host's, so node directories placed
    there would be invisible to exactly the commands that need their
    ``state/`` directory and config files.
    """
    return Path("/tmp")


def _check_prefix(prefix: str) -> str:
    """Reject prefixes that could match foreign names or break `ip` syntax."""
    if (
        not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.]*(?:-[A-Za-z0-9_.]+)*", prefix)
        or len(prefix) > 40
    ):
        raise ValueError(f"invalid namespace prefix {prefix!r}")
    return prefix


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip` (optionally `ip -n NS`), capturing output; raise with stderr on failure."""
    cmd = ["ip"] + (["-n", ns] if ns else []) + list(args)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def _list_netns() -> list[str]:
    """Names of all network namespaces known to `ip netns` (first word of each line)."""
    res = _ip("netns", "list", check=False)
    return [line.split()[0] for line in res.stdout.splitlines() if line.strip()]


def _ns_pids(name: str) -> list[int]:
    """PIDs of processes whose network namespace is `name` (ours by construction)."""
    res = _ip("netns", "pids", name, check=False)
    me = os.getpid()
    return [int(p) for p in res.stdout.split() if p.isdigit() and int(p) != me]


def _our_names(prefix: str) -> tuple[list[str], list[str]]:
    """(namespaces, node directories) that belong to `prefix`, matched exactly.

    Why exact regexes: prefix ``a`` must not claim ``a-1-sw`` of prefix ``a-1``.
    """
    _check_prefix(prefix)
    pat = re.compile(rf"{re.escape(prefix)}-(?:sw|\d+)")
    nss = [n for n in _list_netns() if pat.fullmatch(n)]
    dpat = re.compile(rf"{re.escape(prefix)}-run-\d+")
    dirs = []
    base = _run_base()
    if base.is_dir():
        dirs += [str(p) for p in base.iterdir() if dpat.fullmatch(p.name) and p.is_dir()]
    return nss, sorted(dirs)


def existing_nodes(prefix: str = DEFAULT_PREFIX) -> list[int]:
    """Indices of node namespaces that currently exist for `prefix`."""
    nss, _ = _our_names(prefix)
    out = []
    for n in nss:
        tail = n[len(prefix) + 1 :]
        if tail.isdigit():
            out.append(int(tail))
    return sorted(out)


def _kill_ns_processes(names: Sequence[str], grace: float = 2.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds, every process in `names`.

    Why both: corosync and ctdbd clean up (libqb files, TDB locks) on SIGTERM,
    but a wedged process must not keep a namespace alive forever.
    """
    pids = [p for n in names for p in _ns_pids(n)]
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not [p for n in names for p in _ns_pids(n)]:
            return
        time.sleep(0.05)
    for _ in range(20):
        left = [p for n in names for p in _ns_pids(n)]
        if not left:
            return
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def cleanup(prefix: str = DEFAULT_PREFIX, keep: Sequence[str] = ()) -> list[str]:
    """Remove everything of `prefix`: processes, namespaces and node directories.

    Works without any in-memory state, so it also removes leftovers of a run
    that crashed.  Namespaces in `keep` are spared (used by ``up`` to shrink a
    cluster).  Returns what was removed, for the CLI's report.
    """
    nss, dirs = _our_names(prefix)
    nss = [n for n in nss if n not in keep]
    keep_idx = {n.rsplit("-", 1)[1] for n in keep}
    dirs = [d for d in dirs if d.rsplit("-", 1)[1] not in keep_idx]
    _kill_ns_processes(nss)
    removed: list[str] = []
    for n in nss:
        res = _ip("netns", "del", n, check=False)
        if res.returncode == 0 or n not in _list_netns():
            removed.append(n)
        else:
            print(f"netns: could not delete {n}: {res.stderr.strip()}", file=sys.stderr)
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


TEST_STEM = "ctt"


def unique_prefix(tag: str = "") -> str:
    """A prefix unique to this process (``ctt<pid><tag>``) for tests.

    Why a convention: parallel test runs must not collide, and a run that was
    SIGKILLed leaves namespaces behind under a prefix no later run would
    reuse; ``sweep_stale`` recognises them by the dead pid.  `tag` must start
    with a letter so it cannot merge with the pid digits.
    """
    if tag and not re.fullmatch(r"[a-z][a-z0-9]*", tag):
        raise ValueError(f"test prefix tag must be [a-z][a-z0-9]*: {tag!r}")
    return f"{TEST_STEM}{os.getpid()}{tag}"


def sweep_stale(stem: str = TEST_STEM) -> list[str]:
    """Clean up every ``unique_prefix`` cluster whose creating process is gone."""
    pat = re.compile(rf"({re.escape(stem)}(\d+)(?:[a-z][a-z0-9]*)?)-(?:sw|\d+|run-\d+)")
    prefixes: set[str] = set()
    names = _list_netns() + [p.name for p in _run_base().iterdir()]
    for name in names:
        m = pat.fullmatch(name)
        if m and not Path(f"/proc/{m.group(2)}").exists():
            prefixes.add(m.group(1))
    removed: list[str] = []
    for prefix in sorted(prefixes):
        removed += cleanup(prefix)
    return removed


@functools.lru_cache(maxsize=1)
def available() -> tuple[bool, str]:
    """Whether namespaces, bridges and veths can be created here, and why not.

    Why a real probe instead of just checking euid: containers often run as
    root without CAP_SYS_ADMIN, or without the bridge/veth kernel modules.
    Tests call this to skip with a clear message.
    """
    if sys.platform != "linux":
        return False, "network namespaces need Linux"
    if os.geteuid() != 0:
        return False, "network namespaces need root (run the tests as root)"
    for tool in ("ip", "unshare", "mount", "sh"):
        if shutil.which(tool) is None:
            return False, f"'{tool}' not found (install iproute2/util-linux)"
    probe = f"ctdbtprobe-{os.getpid()}"
    try:
        res = _ip("netns", "add", probe, check=False)
        if res.returncode != 0:
            return False, f"cannot create a network namespace: {res.stderr.strip()}"
        for args in (
            ("link", "add", "pbr", "type", "bridge"),
            ("link", "add", "pva", "type", "veth", "peer", "name", "pvb"),
            ("link", "set", "pva", "master", "pbr"),
        ):
            res = _ip(*args, ns=probe, check=False)
            if res.returncode != 0:
                return False, f"'ip {' '.join(args)}' failed: {res.stderr.strip()}"
        return True, "ok"
    finally:
        _ip("netns", "del", probe, check=False)


class NetnsCluster:
    """A switch namespace with a bridge plus `n` node namespaces on one subnet.

    Use as a context manager (``with NetnsCluster(3, prefix=...) as c:``) so
    that everything is removed even when the test fails; ``up`` also
    registers an ``atexit`` hook as a second line of defence, and
    ``cleanup(prefix)`` / ``python -m tools.netns down`` clear what a killed
    interpreter left behind.
    """

    def __init__(self, n: int, prefix: str = DEFAULT_PREFIX, subnet: str = DEFAULT_SUBNET):
        self.prefix = _check_prefix(prefix)
        self.net = ipaddress.ip_network(subnet)
        if not isinstance(self.net, ipaddress.IPv4Network):
            raise ValueError("only IPv4 subnets are supported")
        if n < 1 or n > self.net.num_addresses - 2:
            raise ValueError(f"cannot fit {n} nodes into {subnet}")
        self.n = n
        self.base = _run_base()
        self._atexit = False

    # -- names ---------------------------------------------------------------
    @property
    def switch(self) -> str:
        """Name of the switch namespace that holds the bridge."""
        return f"{self.prefix}-sw"

    def ns(self, i: int) -> str:
        """Name of node `i`'s network namespace."""
        self._check(i)
        return f"{self.prefix}-{i}"

    def address(self, i: int) -> str:
        """IPv4 address of node `i` (the (i+1)-th host of the subnet)."""
        self._check(i)
        return str(self.net.network_address + i + 1)

    def addresses(self) -> list[str]:
        """All node addresses, index order."""
        return [self.address(i) for i in range(self.n)]

    def node_dir(self, i: int) -> Path:
        """Per-node directory with ``run/`` (private /run), ``shm/`` and ``state/``.

        ``state/`` is meant for corosync's ``system.state_dir`` and the
        ctdbd's database directory; it is removed by ``down``.
        """
        self._check(i)
        return self.base / f"{self.prefix}-run-{i}"

    def _port(self, i: int) -> str:
        """Bridge-side veth name of node `i` (in the switch namespace; <=15 chars)."""
        return f"p{i}"

    def _check(self, i: int) -> None:
        if not 0 <= i < self.n:
            raise IndexError(f"node {i} out of range 0..{self.n - 1}")

    # -- lifecycle ---------------------------------------------------------
    def up(self, *, fresh: bool = True) -> NetnsCluster:
        """Create (or repair) the switch, bridge, node namespaces and links.

        fresh=True (the default, what tests want) first removes anything left
        with this prefix, including processes of a crashed run.  fresh=False
        is the idempotent CLI mode: existing pieces are kept and missing ones
        created; nodes beyond `n` are removed and every node is (re)plugged
        into the bridge, so a re-run also heals all cuts.
        """
        if fresh:
            cleanup(self.prefix)
        else:
            cleanup(self.prefix, keep=[self.switch] + [self.ns(i) for i in range(self.n)])
        if not self._atexit:
            atexit.register(self.down)
            self._atexit = True
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def _build(self) -> None:
        existing = set(_list_netns())
        for name in [self.switch] + [self.ns(i) for i in range(self.n)]:
            if name not in existing:
                _ip("netns", "add", name)
        sw = self.switch
        _ip("link", "set", "lo", "up", ns=sw)
        if _ip("link", "show", BRIDGE, ns=sw, check=False).returncode != 0:
            # No STP (ports forward at once); no multicast snooping (corosync
            # multicast must be flooded even without an IGMP querier).
            _ip(
                "link",
                "add",
                BRIDGE,
                "type",
                "bridge",
                "stp_state",
                "0",
                "mcast_snooping",
                "0",
                ns=sw,
            )
        _ip("link", "set", BRIDGE, "up", ns=sw)
        prefixlen = self.net.prefixlen
        for i in range(self.n):
            node, port = self.ns(i), self._port(i)
            if _ip("link", "show", port, ns=sw, check=False).returncode != 0:
                # Remove a stale node-side end, then create both ends inside
                # our namespaces: nothing ever appears in the host namespace.
                _ip("link", "del", NODE_IF, ns=node, check=False)
                _ip(
                    "link",
                    "add",
                    port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    NODE_IF,
                    "netns",
                    node,
                    ns=sw,
                )
            _ip("link", "set", port, "master", BRIDGE, "up", ns=sw)
            _ip("link", "set", "lo", "up", ns=node)
            _ip("addr", "replace", f"{self.address(i)}/{prefixlen}", "dev", NODE_IF, ns=node)
            _ip("link", "set", NODE_IF, "up", ns=node)
            d = self.node_dir(i)
            for sub in ("run", "shm", "state"):
                (d / sub).mkdir(parents=True, exist_ok=True)
            os.chmod(d / "shm", 0o1777)  # like the real /dev/shm

    def down(self) -> list[str]:
        """Kill our processes and delete namespaces and node directories.

        Safe to call twice, after a partial ``up`` and from ``atexit``; it
        works from the prefix alone, so crashed runs' leftovers go too.
        """
        self.detach()
        return cleanup(self.prefix)

    def detach(self) -> None:
        """Drop the atexit hook so the namespaces outlive this process (CLI ``up``)."""
        if self._atexit:
            atexit.unregister(self.down)
            self._atexit = False

    def __enter__(self) -> NetnsCluster:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    # -- running commands ----------------------------------------------------
    def command(self, i: int, argv: Sequence[str], *, private_run: bool = False) -> list[str]:
        """The full argv that runs `argv` inside node `i` (see module doc for private_run)."""
        cmd = ["ip", "netns", "exec", self.ns(i)]
        if private_run:
            d = self.node_dir(i)
            # `ip netns exec` already unshares the mount namespace, but say it
            # explicitly (and private) so our bind mounts can never propagate.
            cmd += [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                _PRIVATE_RUN_SH,
                "netns-run",
                str(d / "run"),
                str(d / "shm"),
            ]
        return cmd + list(argv)

    def popen(
        self,
        i: int,
        argv: Sequence[str],
        *,
        private_run: bool = False,
        env: dict[str, str] | None = None,
        stdout: _File = None,
        stderr: _File = None,
        **kwargs: Any,
    ) -> subprocess.Popen[Any]:
        """Start `argv` inside node `i`; the returned Popen's pid is the command's.

        Extra keyword arguments (cwd, stdin, text, start_new_session...) go to
        ``subprocess.Popen``.  The process is killed by ``down`` at the latest.
        """
        return subprocess.Popen(
            self.command(i, argv, private_run=private_run),
            env=env,
            stdout=stdout,
            stderr=stderr,
            **kwargs,
        )

    def run(
        self,
        i: int,
        argv: Sequence[str],
        *,
        private_run: bool = False,
        env: dict[str, str] | None = None,
        check: bool = False,
        capture_output: bool = True,
        text: bool = True,
        timeout: float | None = 60,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[Any]:
        """Run `argv` inside node `i` to completion (output captured by default)."""
        return subprocess.run(
            self.command(i, argv, private_run=private_run),
            env=env,
            check=check,
            capture_output=capture_output,
            text=text,
            timeout=timeout,
            **kwargs,
        )

    # -- faults --------------------------------------------------------------
    def cut(self, i: int) -> None:
        """Isolate node `i`: its packets are silently dropped, both ways.

        Why detach the port from the bridge rather than set a link down: the
        node keeps carrier and its address, as when a switch or a remote path
        fails, so daemons see lost packets and timeouts, not a local
        link-down event they might special-case.  Only the switch namespace
        is touched.
        """
        _ip("link", "set", self._port(i), "nomaster", ns=self.switch)

    def heal(self, i: int) -> None:
        """Undo ``cut(i)`` (or a ``partition``): plug node `i` back into the bridge."""
        _ip("link", "set", self._port(i), "master", BRIDGE, ns=self.switch)
        self._forget_failed_neighbours()

    def cut_link(self, i: int, j: int) -> None:
        """Silently drop the traffic between nodes `i` and `j` only, both ways.

        Both keep talking to every other node: with three nodes, cutting
        0-1 leaves 0-2 and 1-2 up, a non-transitive partition.  Why
        neighbour entries: this machine's kernel has no tc actions, no
        nftables and no bridge VLAN filtering (all probed).  Each of the two
        nodes gets a permanent ARP entry mapping the other's address to a
        MAC nobody owns, so their frames to each other are flooded by the
        bridge and dropped by every receiver: no RST, no ICMP, no
        link-down.  Only the two node namespaces are touched.
        """
        self.cut_oneway(i, j)
        self.cut_oneway(j, i)

    def cut_oneway(self, i: int, j: int) -> None:
        """Silently drop what node `i` sends node `j` (`cut_link`'s way, one side).

        Node `j` stops hearing `i` while `i` still hears `j` (its TCP data
        arrives; only `i`'s acknowledgements are lost). ``heal_link`` undoes it.
        """
        _ip(
            "neigh",
            "replace",
            self.address(j),
            "lladdr",
            _NOWHERE_MAC,
            "nud",
            "permanent",
            "dev",
            NODE_IF,
            ns=self.ns(i),
        )

    def heal_link(self, i: int, j: int) -> None:
        """Undo ``cut_link(i, j)``: the nodes resolve each other by ARP again."""
        for a, b in ((i, j), (j, i)):
            _ip("neigh", "del", self.address(b), "dev", NODE_IF, ns=self.ns(a), check=False)

    def heal_all(self) -> None:
        """Plug every node back into the main bridge and drop partition bridges."""
        for i in range(self.n):
            _ip("link", "set", self._port(i), "master", BRIDGE, ns=self.switch)
        for br in self._extra_bridges():
            _ip("link", "del", br, ns=self.switch, check=False)
        self._forget_failed_neighbours()

    def _forget_failed_neighbours(self) -> None:
        """Drop ARP entries that failed while cut, in every node.

        Why: an entry left INCOMPLETE/FAILED by probes during the cut is only
        retried on the kernel's 1 s ARP timer, so the first connection after
        a heal could take ~1 s.  Flushing makes "healed" mean reachable now.
        """
        for j in range(self.n):
            _ip(
                "neigh",
                "flush",
                "dev",
                NODE_IF,
                "nud",
                "failed",
                "nud",
                "incomplete",
                ns=self.ns(j),
                check=False,
            )

    def partition(self, *groups: Sequence[int]) -> None:
        """Split the cluster: nodes within a group talk, across groups they don't.

        Each group gets its own bridge in the switch namespace; nodes in no
        group are isolated.  E.g. ``partition([0, 1, 2], [3, 4])`` for a 3|2
        split-brain test.  ``heal_all()`` undoes it.
        """
        target: dict[int, str | None] = dict.fromkeys(range(self.n))
        for k, g in enumerate(groups):
            for i in g:
                self._check(i)
                if target[i] is not None:
                    raise ValueError(f"node {i} is in two groups")
                # the first group stays on the main bridge, others get brpK
                target[i] = BRIDGE if k == 0 else f"brp{k}"
        current = {i: s["bridge"] for i, s in self.status().items()}
        moving = [i for i in range(self.n) if current.get(i) != target[i]]
        # Detach every moving node first, so that no transient state ever
        # joins nodes that are separated both before and after the change.
        for i in moving:
            self.cut(i)
        existing = set(self._extra_bridges())
        for br in {b for b in target.values() if b and b != BRIDGE} - existing:
            _ip(
                "link",
                "add",
                br,
                "type",
                "bridge",
                "stp_state",
                "0",
                "mcast_snooping",
                "0",
                ns=self.switch,
            )
            _ip("link", "set", br, "up", ns=self.switch)
        for i in moving:
            dest = target[i]
            if dest is not None:
                _ip("link", "set", self._port(i), "master", dest, ns=self.switch)
        for br in existing - set(target.values()):
            _ip("link", "del", br, ns=self.switch, check=False)
        self._forget_failed_neighbours()

    def _extra_bridges(self) -> list[str]:
        res = _ip("-o", "link", "show", "type", "bridge", ns=self.switch, check=False)
        names = [
            ln.split(":")[1].strip().split("@")[0]
            for ln in res.stdout.splitlines()
            if ln.count(":") >= 2
        ]
        return [b for b in names if re.fullmatch(r"brp\d+", b)]

    def status(self) -> dict[int, dict[str, Any]]:
        """Per-node state: namespace present, address, attached bridge, pids."""
        return _status(self.prefix)


def _status(prefix: str) -> dict[int, dict[str, Any]]:
    """Status derived from the system alone (the CLI has no saved state)."""
    sw = f"{prefix}-sw"
    nodes = existing_nodes(prefix)
    out: dict[int, dict[str, Any]] = {}
    for i in nodes:
        name = f"{prefix}-{i}"
        addr = _ip("-o", "-4", "addr", "show", "dev", NODE_IF, ns=name, check=False).stdout.split()
        master = None
        link = _ip("-o", "link", "show", f"p{i}", ns=sw, check=False).stdout.split()
        if "master" in link:
            master = link[link.index("master") + 1]
        out[i] = {
            "ns": name,
            "address": addr[3] if len(addr) > 3 else None,
            "bridge": master,
            "pids": _ns_pids(name),
        }
    return out


# -- command line --------------------------------------------------------------
_EPILOG = """\
examples:
  python -m tools.netns up 3                 # ctdbt-sw + ctdbt-0..2, 10.213.0.1..3/24
  python -m tools.netns exec 0 -- ip -br addr
  python -m tools.netns exec --private-run 1 -- corosync -f -c /tmp/ctdbt-run-1/corosync.conf
  python -m tools.netns exec --private-run 1 -- ctdbd ...   # same /run as that corosync
  python -m tools.netns cut 1                # node 1 isolated (silent drop)
  python -m tools.netns heal 1
  python -m tools.netns status
  python -m tools.netns down                 # also clears a crashed run's leftovers
  python -m tools.netns sweep                # remove leftovers of dead test runs (ctt<pid>*)

Only namespaces named <prefix>-sw and <prefix>-<i> and directories
/tmp/<prefix>-run-<i> (with run/, shm/, state/) are created or removed; the host's interfaces,
routes and firewall are never modified.  Needs root.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: ``python -m tools.netns COMMAND ...``."""
    p = argparse.ArgumentParser(
        prog="python -m tools.netns",
        description="Build a throw-away LAN of network namespaces (one Linux bridge in a "
        "switch namespace, one veth per node) to run cluster nodes on one host and "
        "cut/heal them for partition tests.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help=f"namespace name prefix (default {DEFAULT_PREFIX})"
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="create or repair N nodes (idempotent; heals cuts)")
    up.add_argument("n", type=int, help="number of nodes")
    up.add_argument("--subnet", default=DEFAULT_SUBNET, help="IPv4 subnet of the LAN")
    up.add_argument(
        "--fresh",
        action="store_true",
        help="remove everything with this prefix first (kills its processes)",
    )
    sub.add_parser("down", help="kill our processes, delete namespaces and node dirs")
    for name, text in (
        ("cut", "isolate node I (drop all its packets)"),
        ("heal", "reconnect node I"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("i", type=int, help="node index")
    ex = sub.add_parser("exec", help="run a command inside node I: exec I -- CMD...")
    ex.add_argument(
        "--private-run",
        action="store_true",
        help="bind the node's private dirs over /run and /dev/shm (for corosync and its clients)",
    )
    ex.add_argument("i", type=int, help="node index")
    ex.add_argument("argv", nargs=argparse.REMAINDER, help="command (after --)")
    sub.add_parser("status", help="show nodes, addresses, bridge attachment and pids")
    sub.add_parser("sweep", help="remove clusters of dead test runs (unique_prefix names)")
    for sp in list(sub.choices.values()):
        sp.add_argument("--prefix", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.cmd in ("up", "cut", "heal", "exec"):
        ok, why = available()
        if not ok:
            print(f"netns: {why}", file=sys.stderr)
            return 2
    if a.cmd == "up":
        c = NetnsCluster(a.n, prefix=a.prefix, subnet=a.subnet)
        c.up(fresh=a.fresh)
        c.detach()  # the CLI's cluster must outlive the CLI process
        for i in range(a.n):
            print(f"{c.ns(i)}\t{c.address(i)}\t{c.node_dir(i)}")
        return 0
    if a.cmd == "down":
        for item in cleanup(a.prefix):
            print(f"removed {item}")
        return 0
    if a.cmd == "sweep":
        for item in sweep_stale():
            print(f"removed {item}")
        return 0
    if a.cmd == "status":
        st = _status(a.prefix)
        if not st:
            print(f"no namespaces with prefix {a.prefix!r}")
        for i, s in st.items():
            state = "connected" if s["bridge"] == BRIDGE else f"cut ({s['bridge'] or 'no bridge'})"
            print(f"{i}\t{s['ns']}\t{s['address']}\t{state}\tpids={s['pids']}")
        return 0
    nodes = existing_nodes(a.prefix)
    if a.i not in nodes:
        print(f"netns: node {a.i} does not exist (have {nodes})", file=sys.stderr)
        return 2
    c = NetnsCluster(max(nodes) + 1, prefix=a.prefix)
    if a.cmd == "cut":
        c.cut(a.i)
    elif a.cmd == "heal":
        c.heal(a.i)
    elif a.cmd == "exec":
        cmd = list(a.argv)
        if cmd and cmd[0] == "--":
            cmd = cmd[1:]
        if not cmd:
            p.error("exec needs a command after --")
        full = c.command(a.i, cmd, private_run=a.private_run)
        os.execvp(full[0], full)
    return 0


if __name__ == "__main__":
    sys.exit(main())
