"""An older revision of this repository beside this checkout, for benchmarks that compare.

`bench.cpu_per_op` and `bench.regression` run an older revision's daemons
next to this checkout's, in one run on one machine, because two runs on a
shared machine at different times differ by more than most changes do. Each
needs a worktree of that revision, made for the run and removed after it,
and over vs one corosync that both checkouts' clusters use: each revision's
own `LocalCluster` would start the corosync it configures (b7714d4 ran udpu
without crypto, which alone makes a vs ping three times faster), and the
difference measured would be corosync's.

Not imported by `bench.cpu_per_op`'s worker, which runs inside the older
checkout (PYTHONPATH) where this module may not exist.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
#: before the acknowledged-write fixes of issue 8: what its speed clause compares against
DEFAULT_BASE = "b7714d4"


def short_rev(rev: str) -> str:
    """`rev` as a short commit id (ValueError if this repository has no such revision)."""
    proc = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "--verify", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise ValueError(f"no revision {rev!r} in {REPO}: {proc.stderr.strip()}")
    return proc.stdout.strip()


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """A detached worktree of `rev`, removed again (with its directory) on exit."""
    path = Path(tempfile.mkdtemp(prefix="ctdb-bench-base-")) / "tree"
    try:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), rev],
            check=True,
            capture_output=True,
        )
        yield path
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(path.parent, ignore_errors=True)


def find_corosync() -> int | None:
    """The corosync running on this host, if there is one and only one."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "corosync":
                found.append(int(entry.name))
    return found[0] if len(found) == 1 else None


@contextlib.contextmanager
def shared_corosync(say: Callable[[str], None]) -> Iterator[int | None]:
    """The corosync both checkouts' vs clusters use: its pid, None if one runs
    already and cannot be told apart from another. Started here (as this
    checkout's `LocalCluster` would start it) when none runs, and stopped again."""
    from tools.cluster import private_corosync
    from transport.corosync import corosync_running

    if corosync_running():
        say("vs: using the corosync already running on this host")
        yield find_corosync()
        return
    directory = Path(tempfile.mkdtemp(prefix="ctdb-bench-corosync-"))
    corosync = private_corosync(directory)
    corosync.start()
    say(f"vs: started a corosync for both checkouts (pid {corosync.pid})")
    try:
        yield corosync.pid
    finally:
        corosync.stop()
        shutil.rmtree(directory, ignore_errors=True)


def run_record(bench: str, ns: argparse.Namespace, base: str) -> dict[str, Any]:
    """What a comparison's results.json says of the run itself, as it starts
    (`ns`: its --transport, --rounds, --quick; `base`: the short commit id).
    The comparison adds `loadavg_at_end` and its figures."""
    return {
        "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": f"python -m bench.{bench} " + " ".join(sys.argv[1:]),
        "transport": ns.transport,
        "base": base,
        "head": short_rev("HEAD"),
        "rounds": ns.rounds,
        "quick": ns.quick,
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg()[0],
    }


def summary_head(title: str, results: dict[str, Any]) -> list[str]:
    """The first lines of a comparison's summary.md: `title`, the run
    (`run_record`) and its command."""
    return [
        f"# {title}",
        "",
        f"{results['started']} - transport `{results['transport']}`, "
        f"base `{results['base']}`, head `{results['head']}`, "
        f"{results['rounds']} rounds{' (quick)' if results['quick'] else ''}, "
        f"{results['cpus']} CPUs, load {results['loadavg_at_start']:.1f} at start and "
        f"{results['loadavg_at_end']:.1f} at end",
        "",
        f"Command: `{results['command']}`",
        "",
    ]
