"""What a client's flow waits for, whichever engine runs it (`ctdb.engines.flows`).

This node to serve (`Serving`), the chain lock of a record in a file
Samba's clients share (`Chain`) or every chain of it (`AllChains`), or a
pause (`Pause`). An answer from a
part of the engine is `waiting.Answer`; what only one engine waits for
is declared beside its flows (`migration_flows`, `ordered.waits`), and each
engine's driver carries its effects out.

A chain lock cannot wake the loop when a client lets go of it (a TDB
mutex or fcntl lock has no file descriptor to watch), so a driver tries it
every `chains.RETRY` seconds; never blocking in it keeps the daemon
serving while a client holds a chain. A wait that must not lose to
clients who come later waits in the lock's queue instead, through a helper
process, as CTDB's lock helper does (`Chain.queue`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ctdb.storage.database import Database


@dataclass(slots=True)
class Serving:
    """This node serves again (a recovery or a round ended, quorum came
    back), or an error at `deadline` (`Host.wait_serving`)."""

    deadline: float


@dataclass(slots=True)
class Chain:
    """Take the chain lock of `key` in a file Samba's clients share once no
    client holds it: True, or False at `deadline` (math.inf: never)."""

    db: Database
    key: bytes
    deadline: float
    #: wait in the lock's queue, so that clients who come later do not get
    #: it first (`chains.wait_in_queue`): for taking records back from
    #: Samba's clients when the others may go on without this node
    queue: bool = False


@dataclass(slots=True)
class AllChains:
    """Take every chain of `db`'s file (a whole-file read) once no client
    holds one: True, or False at `deadline`."""

    db: Database
    deadline: float


@dataclass(slots=True)
class Pause:
    seconds: float
