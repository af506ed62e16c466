"""The numbers CTDB's client protocol gives a meaning to, as Samba 4.17 defines them.

Operations, control opcodes, the destnode values that name no single node,
REQ_CALL's call ids and flags and REQ_CONTROL's flag, all from Samba's
ctdb/protocol/protocol.h (`/work/shared/reference/ctdb-wire-protocol.md`
§1-3). They are kept apart from the packet codec (`ctdb_wire`) because the
control table (`ctdb_controls`) and the daemon's CTDB front door name them
too, without framing anything.
"""

from __future__ import annotations

from enum import IntEnum

# destnode values with a meaning of their own (protocol.h:43-53)
CURRENT_NODE = 0xF0000001
BROADCAST_ALL = 0xF0000002
BROADCAST_ACTIVE = 0xF0000003
BROADCAST_CONNECTED = 0xF0000004
MULTICAST = 0xF0000005
UNKNOWN_PNN = 0xFFFFFFFF

# REQ_CALL call ids and flags (protocol.h:103-115)
NULL_FUNC = 0xFF000001
FETCH_FUNC = 0xFF000002
FETCH_WITH_HEADER_FUNC = 0xFF000003
IMMEDIATE_MIGRATION = 0x1
VACUUM_MIGRATION = 0x2
WANT_READONLY = 0x4

#: REQ_CONTROL flag: the client expects no reply, and must get none (spec §1.3).
CTRL_FLAG_NOREPLY = 0x1


class Operation(IntEnum):
    """`enum ctdb_operation` (protocol.h:28-40). Clients send only REQ_CALL,
    REQ_MESSAGE and REQ_CONTROL; the daemon sends REPLY_CALL, REQ_MESSAGE and
    REPLY_CONTROL. REPLY_ERROR is never sent to a client: the new client
    ignores it and its request would hang (spec §1.2)."""

    REQ_CALL = 0
    REPLY_CALL = 1
    REQ_DMASTER = 2
    REPLY_DMASTER = 3
    REPLY_ERROR = 4
    REQ_MESSAGE = 5
    REQ_CONTROL = 7
    REPLY_CONTROL = 8
    REQ_KEEPALIVE = 9
    REQ_TUNNEL = 10


class Control(IntEnum):
    """The control opcodes Samba's clients use (spec §3.1), numbered as in
    `enum ctdb_controls` (protocol.h:229-384 at samba-4.17.12). A request may
    carry any other number: `ReqControl.opcode` is a plain int so that the
    daemon can answer it with a failing status."""

    PROCESS_EXISTS = 0
    STATISTICS = 1
    PING = 3
    GETDBPATH = 4
    GETVNNMAP = 5
    GET_DBMAP = 9
    GET_RECMODE = 15
    SET_RECMODE = 16
    DB_ATTACH = 18
    TRAVERSE_START = 20
    REGISTER_SRVID = 23
    DEREGISTER_SRVID = 24
    GET_DBNAME = 25
    ENABLE_SEQNUM = 26
    UPDATE_SEQNUM = 27
    GET_PID = 30
    GET_PNN = 35
    TCP_CLIENT = 44
    SET_TUNABLE = 48
    GET_TUNABLE = 49
    LIST_TUNABLES = 50
    GET_ALL_TUNABLES = 53
    DB_ATTACH_PERSISTENT = 61
    UPTIME = 69
    GET_CAPABILITIES = 80
    GET_PUBLIC_IPS = 90
    GET_NODEMAP = 91
    TRANS3_COMMIT = 119
    GET_DB_SEQNUM = 120
    DB_GET_HEALTH = 122
    GET_IFACES = 124
    SCHEDULE_FOR_DELETION = 128
    SET_DB_READONLY = 129
    TRAVERSE_START_EXT = 131
    SET_DB_STICKY = 133
    GET_RUNSTATE = 138
    DB_OPEN_FLAGS = 149
    DB_ATTACH_REPLICATED = 150
    CHECK_PID_SRVID = 151
