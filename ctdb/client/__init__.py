"""The library a Samba-like service uses to talk to its local ctdbd.

Two front ends with the same operations: `Client` (blocking, one request at
a time, what scripts and the admin tool want) and `AsyncClient` (asyncio,
any number of requests in flight on one connection, what a busy service
wants). Each operation is defined once, in `operations` (what it sends,
what it returns) or, for the locks and FIFO queues built on entry lists,
in `entry_locks`; `connection` is the protocol state of one connection;
the front ends only move bytes. Errors arrive as `CtdbError` with the daemon's
stable code.

Depends on `ctdb.protocol.client` and `ctdb.common.errors` only, never on the daemon.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctdb.client.blocking import Client, RecordLock, Transaction
from ctdb.client.entry_locks import Ticket
from ctdb.client.operations import Appended, Entries, Entry, Message
from ctdb.common.client_socket import DEFAULT_SOCKET, default_socket

if TYPE_CHECKING:
    from ctdb.client.aio import AsyncClient, AsyncTransaction

__all__ = [
    "DEFAULT_SOCKET",
    "Appended",
    "Entries",
    "Entry",
    "AsyncClient",
    "AsyncTransaction",
    "Client",
    "Message",
    "RecordLock",
    "Ticket",
    "Transaction",
    "default_socket",
]


def __getattr__(name: str) -> object:
    """The asyncio front end is imported on first use: a one-shot script never pays for asyncio."""
    if name in ("AsyncClient", "AsyncTransaction"):
        from ctdb.client import aio

        return getattr(aio, name)
    raise AttributeError(name)
