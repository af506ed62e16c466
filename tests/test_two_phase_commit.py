"""tcp: the leader's two-phase commit of one transaction, without a loop or a
peer (`ctdb.engines.two_phase`): commit only what every member prepared,
acknowledge only what every member confirmed, and recover when a member may
hold a different outcome than the others."""

from __future__ import annotations

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.two_phase import TwoPhaseCommit

MEMBERS = [0, 1, 2]


def commit() -> TwoPhaseCommit:
    return TwoPhaseCommit(7, 3, 0x1234, MEMBERS, [["k", 1, 0, b"v"]])


def test_a_commit_every_member_prepared_and_confirmed_is_acknowledged_and_settled() -> None:
    tpc = commit()
    assert tpc.prepare == {
        "db_id": 7,
        "records": [["k", 1, 0, b"v"]],
        "commit_id": 3,
        "generation": 0x1234,
    }
    assert tpc.prepared([None, None, None]) == {"db_id": 7, "commit_id": 3, "commit": True}
    verdict = tpc.finished([None, None, None])
    assert verdict.error is None and verdict.settled and not verdict.unconfirmed


def test_a_member_that_could_not_prepare_makes_every_member_cancel() -> None:
    tpc = commit()
    refusal = CtdbError(ErrorCode.RETRY, "generation changed during commit")
    assert tpc.prepared([None, refusal, None])["commit"] is False
    # A member that fails to cancel changes nothing: nobody committed.
    verdict = tpc.finished([None, None, TimeoutError()])
    assert verdict.error is not None and verdict.error.code == ErrorCode.RETRY
    assert "aborted: node 1 failed: RETRY: generation changed" in verdict.error.message
    assert not verdict.settled and not verdict.unconfirmed


def test_a_member_that_did_not_confirm_its_commit_makes_the_outcome_unknown_and_recovers() -> None:
    tpc = commit()
    assert tpc.prepared([None, None, None])["commit"] is True
    lost = CtdbError(ErrorCode.RETRY, "commit 3 is not prepared here")  # a freeze cancelled it
    verdict = tpc.finished([None, None, lost])
    assert verdict.error is not None and verdict.error.code == ErrorCode.RETRY
    assert "outcome unknown: node 2 did not confirm" in verdict.error.message
    assert verdict.unconfirmed == [2] and not verdict.settled
