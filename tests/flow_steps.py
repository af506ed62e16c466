"""A flow (`ctdb.engines.flows`) resumed by hand in a test, as its driver would."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ctdb.engines.flows import Flow

E = TypeVar("E")


class Stepped(Generic[E]):
    """`effect` is what the flow waits for now; None once it ended, with `result`."""

    def __init__(self, flow: Flow[E, Any]) -> None:
        self.flow = flow
        self.effect: E | None = None
        self.ended = False
        self.result: Any = None
        self._go(lambda: next(flow))

    def answer(self, outcome: Any = None) -> E | None:
        """Resume the flow with the outcome of what it waits for: what it waits for next."""
        return self._go(lambda: self.flow.send(outcome))

    def fail(self, error: Exception) -> E | None:
        """What the flow waits for failed with `error`: what it waits for next."""
        return self._go(lambda: self.flow.throw(error))

    def _go(self, step: Callable[[], E]) -> E | None:
        try:
            self.effect = step()
        except StopIteration as done:
            self.effect, self.ended, self.result = None, True, done.value
        return self.effect
