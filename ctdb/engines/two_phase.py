"""The leader's two-phase commit of one transaction, decided without I/O (tcp).

`TransactionEngine.coordinate` (transactions.py) asks every member of the
generation to prepare what `TwoPhaseCommit` says, hands it their answers,
asks them all to finish as it says, and hands it those answers too; what
the client hears, and whether the cluster must recover, is decided here.

The rules: the commit is made only if every member prepared it, else every
member cancels it. It is acknowledged only if every member then confirmed
its commit, because a member that did not may have been frozen and dropped
its prepared copy, or failed to write it (an I/O error): the commit may
exist on only some nodes. That is never acknowledged, and a recovery
decides at once (nothing else may bring one soon: the members look
unchanged); it gives every node the copy with the highest sequence number,
and the client retries (its transaction re-validates what it read). Once
every member confirmed, their readers may see the commit (`settled`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ctdb.common.errors import CtdbError, ErrorCode


@dataclass(frozen=True)
class Verdict:
    """How a commit ended, once every member answered its finish."""

    #: what the client hears instead of the sequence number (None: committed)
    error: CtdbError | None
    #: members that did not confirm their commit: the cluster must recover
    unconfirmed: list[int]

    @property
    def settled(self) -> bool:
        """Every member made the commit: tell them so (`tx_settled`)."""
        return self.error is None


class TwoPhaseCommit:
    def __init__(
        self, db_id: int, commit_id: int, generation: int, members: list[int], records: list[Any]
    ) -> None:
        self.db_id, self.commit_id, self.members = db_id, commit_id, members
        #: what every member prepares (`tx_prepare`)
        self.prepare = {
            "db_id": db_id,
            "records": records,
            "commit_id": commit_id,
            "generation": generation,
        }
        #: members whose prepare failed, with why, in member order
        self.refused: list[tuple[int, BaseException]] = []

    def prepared(self, answers: list[object]) -> dict[str, Any]:
        """Every member's answer to `prepare`, in member order (an exception:
        it failed); what they all finish with (`tx_finish`): commit only if
        every member prepared."""
        self.refused = [(p, a) for p, a in self._answered(answers) if isinstance(a, BaseException)]
        return {"db_id": self.db_id, "commit_id": self.commit_id, "commit": not self.refused}

    def finished(self, answers: list[object]) -> Verdict:
        """Every member's answer to the finish, in member order."""
        if self.refused:
            p, exc = self.refused[0]
            aborted = CtdbError(ErrorCode.RETRY, f"commit aborted: node {p} failed: {exc}")
            return Verdict(aborted, [])
        lost = [p for p, a in self._answered(answers) if isinstance(a, BaseException)]
        if not lost:
            return Verdict(None, [])
        error = CtdbError(
            ErrorCode.RETRY,
            f"commit outcome unknown: node {lost[0]} did not confirm; "
            "retry the transaction (it re-validates what it read)",
        )
        return Verdict(error, lost)

    def _answered(self, answers: list[object]) -> list[tuple[int, object]]:
        return list(zip(self.members, answers, strict=True))
