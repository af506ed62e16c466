"""An `Answers` (ctdb.engines.answers) for tests: it keeps what the parts under
test tell their waiters, in order, so that a test checks who was answered
with what, without a loop."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from ctdb.common.errors import CtdbError


class Recorded:
    """An `Answers` that keeps what it is told, in order: (key, result or error code)."""

    def __init__(self) -> None:
        self.told: list[tuple[Hashable, Any]] = []

    def answer(self, key: Hashable, result: Any) -> None:
        self.told.append((key, result))

    def fail(self, key: Hashable, error: CtdbError) -> None:
        self.told.append((key, error.code))
