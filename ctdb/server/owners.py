"""Entry owners: who a client is in an entry list, and what goes when it goes.

An entry (`ctdb.storage.entries`) belongs to `(pnn, client id)`. A client
id is unique over every run of this node: the high 32 bits are the run
(`Epochs.incarnation`, durable), the low 32 bits count the clients of that
run. So a node that restarts never hands a new client an id whose entries
another node still holds, and recovery can tell the entries of a past run
from those of the current one (`ctdb.engines.record_calls.departed`).

A client that disconnects has its entries removed: its session remembers
every record it appended to, and on close one `Remove` call per record runs
in the background, retried until the cluster takes it (a recovery or a lost
quorum only delays it) or the node stops. A node that leaves takes its
clients' entries with it: the engines purge those (vs at the view change,
tcp in recovery), so nothing here needs to survive a crash.

A node that was out of the cluster for a while (tcp: recoveries ran without
it; vs: views without it) comes back with its clients connected, but the
others have purged their entries meanwhile: a client may believe it still
holds a lock that is now someone else's. Such clients are fenced
(`fence_all`): their connections are closed, with the reason, so that
their next request tells them, and they queue again on a new connection.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Collection
from typing import Protocol

import msgpack

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.base import RecordEngine, resolved
from ctdb.engines.record_calls import Owner, Remove
from ctdb.protocol.client import ENTRY_HEAD_SRVID
from ctdb.server.messaging import Messaging
from ctdb.storage.database import Database
from ctdb.storage.durable import Epochs


class OwnersHost(Protocol):
    """What owners need of their node (`ctdb.server.node.Node`)."""

    pnn: int
    epochs: Epochs
    records: RecordEngine
    messaging: Messaging

    @property
    def dbs(self) -> dict[int, Database]: ...


log = logging.getLogger("ctdb.server.owners")

#: Errors after which a removal is tried again: the cluster is between
#: generations, without quorum or slow, or a client holds the record with
#: fetch_lock for a moment. Anything else is final.
TRANSIENT = {
    ErrorCode.RETRY,
    ErrorCode.TIMEOUT,
    ErrorCode.NO_QUORUM,
    ErrorCode.DISCONNECTED,
    ErrorCode.BUSY,
}
#: Seconds between attempts of a removal the cluster did not take.
RETRY_DELAY = 0.5


#: Pushes a message to one client: (srvid, source pnn, data).
Push = Callable[[int, int, bytes], None]
#: Closes one client's connection, telling it why.
Fence = Callable[[str], None]


class Owners:
    def __init__(self, node: OwnersHost) -> None:
        self.node = node
        self._ids = itertools.count(1)
        #: connected clients that own entries, by client id: how to tell them
        #: their entry came first, and how to fence them
        self._clients: dict[int, tuple[Push, Fence]] = {}
        #: removals of departed clients' entries still running, in the order
        #: begun (a set would cancel them in the order of their addresses,
        #: and a simulated schedule must replay alike in any process)
        self.removals: dict[asyncio.Task[None], None] = {}
        node.messaging.register(ENTRY_HEAD_SRVID, self._on_head)

    def new_client(self, push: Push, fence: Fence) -> Owner:
        """The owner a client appends as; `push` tells it when its entry comes
        first, `fence` closes its connection (`fence_all`)."""
        client = next(self._ids)
        if client >= 1 << 32:
            raise CtdbError(ErrorCode.BUSY, "this run of the daemon has no client ids left")
        client |= self.node.epochs.incarnation << 32
        self._clients[client] = (push, fence)
        return (self.node.pnn, client)

    def fence_all(self) -> None:
        """We were out of the cluster: our clients' entries may have been purged."""
        if self._clients:
            log.warning(
                "fencing %d entry owners: this node was out of the cluster", len(self._clients)
            )
        for _, fence in list(self._clients.values()):
            fence(
                "this node was out of the cluster, which may have purged the entries "
                "of this connection: reconnect and append again"
            )

    def _on_head(self, srvid: int, src: int, data: bytes) -> None:
        """A record's first entry is now one of our clients' (Node.entry_head)."""
        try:
            client, dbid, key = msgpack.unpackb(data)
            known = self._clients.get(client)
            notice = msgpack.packb([dbid, key])
        except (ValueError, TypeError, msgpack.UnpackException):
            return  # not from a node (a client may send to any srvid): ignore
        if known is not None:
            known[0](ENTRY_HEAD_SRVID, src, notice)

    def gone(
        self,
        owner: Owner,
        records: set[tuple[int, bytes]],
        running: Collection[asyncio.Task[None]] = (),
    ) -> None:
        """A client disconnected: remove its entries from `records` (db id, key),
        once its calls still `running` have ended (they may append)."""
        self._clients.pop(owner[1], None)
        for dbid, key in sorted(records):
            removal = self._remove(owner, dbid, key, set(running))
            task = asyncio.get_running_loop().create_task(removal)
            self.removals[task] = None
            task.add_done_callback(lambda done: self.removals.pop(done, None))

    async def _remove(
        self, owner: Owner, dbid: int, key: bytes, running: set[asyncio.Task[None]]
    ) -> None:
        if running:
            await asyncio.wait(running)
        while True:
            db = self.node.dbs.get(dbid)
            if db is None:
                return  # detached (never today; the entries went with it)
            try:
                await resolved(self.node.records.call(db, key, Remove(owner)))
                return
            except CtdbError as exc:
                if exc.code not in TRANSIENT:
                    log.warning(
                        "could not remove the entries of departed client %s from %r: %s",
                        owner,
                        key,
                        exc,
                    )
                    return
            await asyncio.sleep(RETRY_DELAY)

    async def stop(self) -> None:
        for task in list(self.removals):
            task.cancel()
        await asyncio.gather(*self.removals, return_exceptions=True)
