"""What every benchmark shares around its measurements.

Progress lines on stderr, the command line's common part, and the three
files a run leaves in --out: results.json (everything measured), a PNG plot
and summary.md (printed at the end too). Kept here once, so that a bench
module holds only what it measures and how it presents it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

#: How a module writes its summary or plot: (file to write, results).
Writer = Callable[[Path, dict[str, Any]], None]


def progress(name: str) -> Callable[[str], None]:
    """A `say(message)` that prints a timestamped progress line for bench `name` to stderr."""

    def say(message: str) -> None:
        print(f"[{name} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    return say


def default_out(name: str) -> Path:
    return REPO / "bench" / "results" / name


def parser(name: str, doc: str | None, epilog: str | None = None) -> argparse.ArgumentParser:
    """The parser of `python -m bench.NAME`: its description is the first paragraph of
    the module's docstring; --out is already there."""
    out = default_out(name)
    p = argparse.ArgumentParser(
        prog=f"python -m bench.{name}",
        description=doc.split("\n\n")[0] if doc else None,
        epilog=epilog
        or f"Writes results.json, {name}.png and summary.md; progress goes to stderr.",
    )
    p.add_argument("--out", type=Path, default=out, help=f"default {out}")
    return p


def write(out: Path, name: str, results: dict[str, Any], summary: Writer, plot: Writer) -> None:
    """results.json, summary.md and NAME.png into `out`; then print the summary."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    summary(out / "summary.md", results)
    plot(out / f"{name}.png", results)
    progress(name)(f"wrote {out}/results.json, summary.md, {name}.png")
    print((out / "summary.md").read_text())


def save_figure(fig: Any, path: Path) -> None:
    """Lay out, write and free a matplotlib figure (the PNG every benchmark leaves)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
