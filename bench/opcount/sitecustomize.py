"""Counts the bytecode instructions a daemon runs, per function, between two signals.

`bench.cpu_per_op` puts this folder on its daemons' PYTHONPATH, with
CTDB_BENCH_OPCOUNT naming a directory: SIGUSR1 starts counting and writes
`on.PID` there, SIGUSR2 stops and writes `PID.json`, `{"/path/file.py:Class.function":
instructions}`. Unlike CPU time, an instruction count hardly depends on
how busy the machine is, so two revisions compare closely, and per
function. Only the main thread (the event loop) is counted; counting
makes it about thirty times slower while it lasts, so the timers that fire
meanwhile (state announcements, vacuuming) are counted too: a little noise,
which the benchmark's medians over rounds absorb.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

Tracer = Any  # sys.settrace's callback type, which refers to itself

_counts: Counter[str] = Counter()


def _count(frame: FrameType, event: str, arg: object) -> Tracer:
    if event == "opcode":
        code = frame.f_code
        _counts[f"{code.co_filename}:{code.co_qualname}"] += 1
    return _count


def _enter(frame: FrameType, event: str, arg: object) -> Tracer:
    frame.f_trace_opcodes = True
    return _count


def _install(out: Path) -> None:
    def start(signum: int, frame: FrameType | None) -> None:
        _counts.clear()
        sys.settrace(_enter)
        (out / f"on.{os.getpid()}").touch()

    def stop(signum: int, frame: FrameType | None) -> None:
        sys.settrace(None)
        done = out / f"{os.getpid()}.json"
        done.with_suffix(".tmp").write_text(json.dumps(_counts))
        done.with_suffix(".tmp").rename(done)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


if os.environ.get("CTDB_BENCH_OPCOUNT"):
    _install(Path(os.environ["CTDB_BENCH_OPCOUNT"]))
