"""Run seeded fault schedules of the cluster logic on the simulated network.

`python -m tools.simulate --mode tcp --schedules 100000 --jobs 2` runs a long
campaign with a progress bar and ends with a summary (schedules per second,
faults injected per kind, failing seeds with what they violated);
`--seed N -v` replays one schedule exactly and prints its event trace and
every violation in full. The harness lives in `tools/sim/`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from tools.sim.campaign import STOP, campaign
from tools.sim.faults import FAULTS, SAMBA_FAULTS
from tools.sim.schedule import Variant, simulate

ALL_FAULTS = {**FAULTS, **SAMBA_FAULTS}


def _seeds(text: str) -> range:
    start, _, stop = text.partition(":")
    return range(int(start), int(stop)) if stop else range(int(start), int(start) + 1)


def _kinds(text: str) -> dict[str, int]:
    kinds = {}
    for name in text.split(","):
        if name not in ALL_FAULTS:
            known = ", ".join(ALL_FAULTS)
            raise argparse.ArgumentTypeError(f"unknown fault {name!r} (one of {known})")
        kinds[name] = ALL_FAULTS[name]
    return kinds


def _interrupt(signum: int, frame: object) -> None:
    """The first Ctrl-C or SIGTERM ends the campaign after the schedule in
    progress (`campaign.STOP`); a second one interrupts at once."""
    if STOP.is_set():
        raise KeyboardInterrupt
    STOP.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.simulate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--mode",
        choices=["tcp", "vs"],
        default="tcp",
        help="tcp: point-to-point engine; vs: total-order engine",
    )
    parser.add_argument("--seeds", type=_seeds, help="START:STOP")
    parser.add_argument(
        "--schedules",
        type=int,
        default=100,
        help="run seeds 0..N-1 (default 100; ignored with --seeds)",
    )
    parser.add_argument("--seed", type=int, help="replay this one seed")
    parser.add_argument(
        "--faults",
        type=_kinds,
        help=f"only these fault kinds, comma-separated ({', '.join(ALL_FAULTS)}; "
        "chain_hold: a client of another process holds a record's chain, and the "
        "nodes' files are shared as with Samba's clients)",
    )
    parser.add_argument(
        "--vs-keeps-stopped",
        action="store_true",
        help="vs: a stopped member stays in the group for ever, as with corosync alone "
        "(the vs transport did not expel such members before issue 8's fix)",
    )
    parser.add_argument(
        "--fifo",
        action="store_true",
        help="run ready callbacks in creation order instead of interleaving the nodes' "
        "(how schedules ran before 2026-12-03: replays seeds recorded then)",
    )
    parser.add_argument(
        "--clients-inside",
        action="store_true",
        help="clients run inside their node, a resumed node handles its queued traffic "
        "first, and long hangs are drawn as before 2026-12-05: replays seeds recorded then",
    )
    parser.add_argument(
        "--no-samba",
        action="store_true",
        help="no schedule has Samba's clients sharing the nodes' files and holding chains "
        "(before 2026-12-06 none had: replays seeds recorded then)",
    )
    parser.add_argument(
        "--all-or-none",
        action="store_true",
        help="vs: every survivor of a crash or a split gets the last messages of the nodes "
        "it parts from (before 2026-12-06 it did: replays seeds recorded then)",
    )
    parser.add_argument(
        "--instant-views",
        action="store_true",
        help="vs: a network cut changes the views at once, not after corosync's token and "
        "consensus timeouts (until 2026-12-06 it did: replays seeds recorded then)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help=f"worker processes (this machine has {os.cpu_count()} cores)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="print the event trace, with the daemons' log"
    )
    ns = parser.parse_args(argv)
    variant = Variant(
        keep_stopped=ns.vs_keeps_stopped,
        fifo=ns.fifo,
        apart=not ns.clients_inside,
        samba=not ns.no_samba,
        agreed=not ns.all_or_none,
        reform=not ns.instant_views,
    )
    logging.basicConfig(level=logging.CRITICAL)
    if ns.seed is not None:
        outcome = simulate(ns.seed, ns.mode, ns.faults, logs=ns.verbose, variant=variant)
        if ns.verbose:
            print("\n".join(outcome.trace))
        faults = ", ".join(f"{k} {n}" for k, n in sorted(outcome.faults.items()))
        print(f"seed {ns.seed} ({ns.mode}): {outcome.ops} operations, faults: {faults or 'none'}")
        for violation in outcome.violations:
            print(f"VIOLATION: {violation}")
        print("ok" if outcome.ok else f"FAILED: {len(outcome.violations)} violation(s)")
        return 0 if outcome.ok else 1
    seeds = ns.seeds if ns.seeds is not None else range(ns.schedules)
    # Ctrl-C or SIGTERM (also for a campaign started in the background)
    # stops the campaign early with the summary of what ran.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    summary = campaign(seeds, ns.mode, kinds=ns.faults, jobs=max(1, ns.jobs), variant=variant)
    print(summary.report(max(1, ns.jobs)))
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
