"""`ctdbd`'s shutdown is bounded: a part that does not stop is cut off and logged
with what every task was doing, and the parts after it still run."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ctdb.server.daemon import _stop_within


def test_a_part_that_hangs_is_cut_off_and_the_next_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []

    async def hangs() -> None:
        await asyncio.Event().wait()

    async def closes() -> None:
        ran.append("closed")

    async def shutdown() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await _stop_within(0.05, [("the stuck part", hangs), ("the node", closes)])
        return loop.time() - started

    with caplog.at_level(logging.ERROR, logger="ctdbd"):
        took = asyncio.run(shutdown())
    assert ran == ["closed"]
    assert 0.05 <= took < 5.0
    (record,) = caplog.records
    assert "stopping the stuck part took more than" in record.getMessage()
    assert "shutdown" in record.getMessage() and "tasks:" in record.getMessage()
