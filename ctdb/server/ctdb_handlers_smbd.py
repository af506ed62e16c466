"""The controls only smbd (and its helpers) send: which processes are alive,
SMB connections, public addresses, and TDB sequence numbers.

smbd (`clustering = yes`) asks these at start-up and per connection, on
top of what every client asks (`ctdb_handlers`): the spec's §5.c, and the
errata in `ctdb_seqnum` (ENABLE_SEQNUM is not just a flag).
"""

from __future__ import annotations

from typing import Any

from ctdb.protocol.ctdb_control_structs import PidSrvid, PublicIpList
from ctdb.protocol.ctdb_opcodes import Control
from ctdb.server.ctdb_door import FAILED, Door
from transport.corosync import pid_alive


def _process_exists(door: Door, pid: int) -> tuple[int, Any]:
    """0 if a client connected here runs as `pid` and that process is alive
    (a g_lock holder's liveness check), else -1: ctdbd's rule."""
    if not any(c.pid == pid for c in door.sessions) or not pid_alive(pid):
        return FAILED, None
    return 0, None


def _check_pid_srvid(door: Door, which: PidSrvid) -> tuple[int, Any]:
    """0 if a client connected here as `pid` registered `srvid` (smbd's serverid_exists)."""
    if any(c.pid == which.pid and which.srvid in c.srvids for c in door.sessions):
        return 0, None
    return FAILED, None


def _tcp_client(door: Door, _: Any) -> tuple[int, Any]:
    """smbd tells which SMB connection it serves, for public-address failover:
    pyctdb manages no public addresses, so there is nothing to remember."""
    return 0, None


def _public_ips(door: Door, _: None) -> tuple[int, Any]:
    return 0, PublicIpList()


def _enable_seqnum(door: Door, db_id: int) -> tuple[int, Any]:
    """smbd, for brlock.tdb, locking.tdb and leases.tdb: without it smbd
    cannot open them (`db_open_ctdb: ctdb_control for enable seqnum failed`)."""
    door.seqnums.enable(db_id)
    return 0, None


def _update_seqnum(door: Door, db_id: int) -> tuple[int, Any]:
    """Another node's daemon: a record of `db_id` changed there."""
    door.seqnums.update(db_id)
    return 0, None


SMBD_HANDLERS: dict[int, Any] = {
    Control.PROCESS_EXISTS: _process_exists,
    Control.CHECK_PID_SRVID: _check_pid_srvid,
    Control.TCP_CLIENT: _tcp_client,
    Control.GET_PUBLIC_IPS: _public_ips,
    Control.ENABLE_SEQNUM: _enable_seqnum,
    Control.UPDATE_SEQNUM: _update_seqnum,
}
