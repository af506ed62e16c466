"""tcp: a vacuum round as a flow, answered by hand (`ctdb.engines.vacuum.Vacuum.round`).

Which deletion markers the lmaster asks the others to drop, which it hands
over, and which it removes once every other node said so: no loop, no peer.
(`tests/test_vacuum.py` runs the real daemons.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.controls import Controls
from ctdb.engines.vacuum import Vacuum
from ctdb.storage.database import Database, DbKind
from ctdb.storage.ltdb import Record
from ctdb.storage.placement import lmaster

PNN = 0
VNNMAP = [0, 1, 2]


class Engine:
    """What vacuuming reads of the migration engine and its node."""

    def __init__(self, db: Database) -> None:
        self.node = self
        self.pnn = PNN
        self.nodes = ["n0", "n1", "n2"]
        self.vnnmap = list(VNNMAP)
        self.serving = True
        self.generation = 5
        self.stats: Counter[str] = Counter()
        self.dbs = {db.id: db}
        self.busy: set[bytes] = set()
        self.handed: list[tuple[bytes, int]] = []

    def in_generation(self, generation: int) -> bool:
        return generation == self.generation

    def idle(self, db: Database, key: bytes) -> bool:
        return key not in self.busy

    def hand_over(self, db: Database, key: bytes, rec: Record, to: int) -> None:
        self.handed.append((key, to))


def keys_mastered_by(pnn: int, count: int) -> list[bytes]:
    found = (b"k%d" % i for i in range(1000))
    return [k for k in found if lmaster(k, VNNMAP) == pnn][:count]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    made = Database.open(tmp_path, "v.tdb", DbKind.VOLATILE, PNN)
    try:
        yield made
    finally:
        made.local.close()


def marked(db: Database, vacuum: Vacuum, key: bytes, rsn: int) -> None:
    """A deletion marker of ours (dmaster here), noted as a candidate."""
    rec = Record(rsn, PNN, b"")
    db.local.put(key, rec)
    vacuum.note(db, key, rec)


def test_a_marker_goes_once_every_other_node_dropped_its_copy(db: Database) -> None:
    engine = Engine(db)
    vacuum = Vacuum(cast(Any, engine))
    ours, theirs = keys_mastered_by(PNN, 1)[0], keys_mastered_by(1, 1)[0]
    marked(db, vacuum, ours, 7)
    marked(db, vacuum, theirs, 3)
    flow = vacuum.round()
    asked = next(flow)
    # The marker another node is lmaster of is handed to it, not vacuumed here.
    assert engine.handed == [(theirs, 1)]
    assert asked == Controls.on_all(
        [1, 2], "vacuum", {"db_id": db.id, "generation": 5, "records": [[ours, 7]]}
    )
    assert db.local.get(ours) is not None  # not before they answered
    with pytest.raises(StopIteration) as done:
        flow.send([1, 1])
    assert done.value.value == 1
    assert db.local.get(ours) is None and not vacuum.candidates.get(db.id)


def test_a_round_another_node_failed_keeps_the_marker_for_the_next(db: Database) -> None:
    """A node that could not check its copy (a client held it) may keep an
    older value that only the marker outranks."""
    engine = Engine(db)
    vacuum = Vacuum(cast(Any, engine))
    key = keys_mastered_by(PNN, 1)[0]
    marked(db, vacuum, key, 7)
    flow = vacuum.round()
    next(flow)
    with pytest.raises(StopIteration) as done:
        flow.throw(CtdbError(ErrorCode.RETRY, "clients held 1 of the records"))
    assert done.value.value == 0
    assert db.local.get(key) is not None and key in vacuum.candidates[db.id]


def test_a_recovery_during_the_round_or_a_marker_written_meanwhile_keeps_it(
    db: Database,
) -> None:
    engine = Engine(db)
    vacuum = Vacuum(cast(Any, engine))
    first, second = keys_mastered_by(PNN, 2)
    marked(db, vacuum, first, 7)
    flow = vacuum.round()
    next(flow)
    engine.generation = 6  # a recovery came between the ask and the answers
    with pytest.raises(StopIteration) as done:
        flow.send([0, 0])
    assert done.value.value == 0 and db.local.get(first) is not None

    marked(db, vacuum, second, 4)
    flow = vacuum.round()
    asked = next(flow)
    assert isinstance(asked, Controls)
    # A Samba client wrote it back and deleted it again meanwhile: a newer
    # marker, whose older copies the others were not asked to drop.
    db.local.put(second, Record(6, PNN, b""))
    with pytest.raises(StopIteration):
        flow.send([1, 1])
    rec = db.local.get(second)
    assert rec is not None and rec.rsn == 6


def test_nothing_is_vacuumed_while_a_node_is_away_or_a_marker_is_in_use(db: Database) -> None:
    engine = Engine(db)
    vacuum = Vacuum(cast(Any, engine))
    key = keys_mastered_by(PNN, 1)[0]
    marked(db, vacuum, key, 7)
    engine.vnnmap = [0, 1]  # node 2 is away: it could come back with an older copy
    with pytest.raises(StopIteration) as done:
        next(vacuum.round())  # nothing asked...
    assert done.value.value == 0 and not engine.handed  # ...nor handed over
    engine.vnnmap = list(VNNMAP)
    engine.busy.add(key)  # locked or wanted
    with pytest.raises(StopIteration) as done:
        next(vacuum.round())
    assert done.value.value == 0 and db.local.get(key) is not None
