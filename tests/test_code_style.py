"""The style gate of CI: ruff's lint and format checks, mypy and the layer contracts.

Run as a test so that `.ci/run` (the README's test command) fails when any
of them does, with the tool's own report in the failure message.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CHECKS = {
    "ruff check": [sys.executable, "-m", "ruff", "check", "."],
    "ruff format": [sys.executable, "-m", "ruff", "format", "--check", "."],
    "mypy": [sys.executable, "-m", "mypy"],  # files: see [tool.mypy] in pyproject.toml
    # the layers of ctdb/ and transport/: [tool.importlinter] in pyproject.toml
    "import contracts": [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_the_tree_passes(name: str) -> None:
    done = subprocess.run(CHECKS[name], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}{done.stderr}"
