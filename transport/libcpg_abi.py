"""corosync's C declarations for the ctypes binding in `transport.libcpg`.

Why a module of its own: these are facts about the C library, transcribed
from its headers and kept apart from the Python wrapper built on them. The
layouts follow corosync 3.x ``include/corosync/cpg.h`` and
``corotypes.h``:

* ``cpg_handle_t`` is a ``uint64_t``;
* ``struct cpg_name { uint32_t length; char value[128]; }``;
* ``struct cpg_address { uint32_t nodeid, pid, reason; }``;
* ``cpg_callbacks_t { deliver_fn; confchg_fn; }`` (corosync 3 dropped the
  third ``groups_get`` member);
* callbacks take ``size_t`` lengths.

The library itself is loaded on first use (`load`), so that importing this
module never fails on a machine without corosync.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum

CPG_MAX_NAME_LENGTH = 128


class CsError(enum.IntEnum):
    """corosync's ``cs_error_t``."""

    CS_OK = 1
    CS_ERR_LIBRARY = 2
    CS_ERR_VERSION = 3
    CS_ERR_INIT = 4
    CS_ERR_TIMEOUT = 5
    CS_ERR_TRY_AGAIN = 6
    CS_ERR_INVALID_PARAM = 7
    CS_ERR_NO_MEMORY = 8
    CS_ERR_BAD_HANDLE = 9
    CS_ERR_BUSY = 10
    CS_ERR_ACCESS = 11
    CS_ERR_NOT_EXIST = 12
    CS_ERR_NAME_TOO_LONG = 13
    CS_ERR_EXIST = 14
    CS_ERR_NO_SPACE = 15
    CS_ERR_INTERRUPT = 16
    CS_ERR_NAME_NOT_FOUND = 17
    CS_ERR_NO_RESOURCES = 18
    CS_ERR_NOT_SUPPORTED = 19
    CS_ERR_BAD_OPERATION = 20
    CS_ERR_FAILED_OPERATION = 21
    CS_ERR_MESSAGE_ERROR = 22
    CS_ERR_QUEUE_FULL = 23
    CS_ERR_QUEUE_NOT_AVAILABLE = 24
    CS_ERR_BAD_FLAGS = 25
    CS_ERR_TOO_BIG = 26
    CS_ERR_NO_SECTIONS = 27
    CS_ERR_CONTEXT_NOT_FOUND = 28
    CS_ERR_TOO_MANY_GROUPS = 30
    CS_ERR_SECURITY = 100


class Dispatch(enum.IntEnum):
    """``cs_dispatch_flags_t``."""

    CS_DISPATCH_ONE = 1
    CS_DISPATCH_ALL = 2
    CS_DISPATCH_BLOCKING = 3
    CS_DISPATCH_ONE_NONBLOCKING = 4


class Guarantee(enum.IntEnum):
    """``cpg_guarantee_t``: corosync implements only FIFO (== AGREED) and AGREED."""

    CPG_TYPE_UNORDERED = 0
    CPG_TYPE_FIFO = 1
    CPG_TYPE_AGREED = 2
    CPG_TYPE_SAFE = 3


class Reason(enum.IntEnum):
    """``cpg_reason_t``: why a member appears in a joined/left list."""

    CPG_REASON_UNDEFINED = 0
    CPG_REASON_JOIN = 1
    CPG_REASON_LEAVE = 2
    CPG_REASON_NODEDOWN = 3
    CPG_REASON_NODEUP = 4
    CPG_REASON_PROCDOWN = 5


class CpgNameStruct(ctypes.Structure):
    _fields_ = [("length", ctypes.c_uint32), ("value", ctypes.c_char * CPG_MAX_NAME_LENGTH)]


class CpgAddressStruct(ctypes.Structure):
    _fields_ = [("nodeid", ctypes.c_uint32), ("pid", ctypes.c_uint32), ("reason", ctypes.c_uint32)]


class IoVecStruct(ctypes.Structure):
    # `c_char_p`, not `void *`: assigning a bytes object stores a pointer to
    # its own buffer and keeps the object alive with the struct, without the
    # cast per multicast that a `c_void_p` field needs.
    _fields_ = [("iov_base", ctypes.c_char_p), ("iov_len", ctypes.c_size_t)]


#: The group's name comes as a plain address, never read: a handle here joins
#: one group, and a `POINTER(CpgNameStruct)` argument cost every delivered
#: message a ctypes pointer object.
DELIVER_FN = ctypes.CFUNCTYPE(
    None,
    ctypes.c_uint64,
    ctypes.c_void_p,
    ctypes.c_uint32,
    ctypes.c_uint32,
    ctypes.c_void_p,
    ctypes.c_size_t,
)
CONFCHG_FN = ctypes.CFUNCTYPE(
    None,
    ctypes.c_uint64,
    ctypes.POINTER(CpgNameStruct),
    ctypes.POINTER(CpgAddressStruct),
    ctypes.c_size_t,
    ctypes.POINTER(CpgAddressStruct),
    ctypes.c_size_t,
    ctypes.POINTER(CpgAddressStruct),
    ctypes.c_size_t,
)


class CpgCallbacksStruct(ctypes.Structure):
    _fields_ = [("cpg_deliver_fn", DELIVER_FN), ("cpg_confchg_fn", CONFCHG_FN)]


_lib: ctypes.CDLL | None = None


def load() -> ctypes.CDLL:
    """Load libcpg once, lazily, so importing this module never fails."""
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("cpg") or "libcpg.so.4"
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            lib = ctypes.CDLL("libcpg.so.4")
        h = ctypes.c_uint64
        u32p = ctypes.POINTER(ctypes.c_uint32)
        lib.cpg_initialize.argtypes = [ctypes.POINTER(h), ctypes.POINTER(CpgCallbacksStruct)]
        lib.cpg_finalize.argtypes = [h]
        lib.cpg_fd_get.argtypes = [h, ctypes.POINTER(ctypes.c_int)]
        lib.cpg_dispatch.argtypes = [h, ctypes.c_int]
        lib.cpg_join.argtypes = [h, ctypes.POINTER(CpgNameStruct)]
        lib.cpg_leave.argtypes = [h, ctypes.POINTER(CpgNameStruct)]
        lib.cpg_mcast_joined.argtypes = [
            h,
            ctypes.c_int,
            ctypes.POINTER(IoVecStruct),
            ctypes.c_uint,
        ]
        lib.cpg_local_get.argtypes = [h, u32p]
        lib.cpg_max_atomic_msgsize_get.argtypes = [h, u32p]
        lib.cpg_membership_get.argtypes = [
            h,
            ctypes.POINTER(CpgNameStruct),
            ctypes.POINTER(CpgAddressStruct),
            ctypes.POINTER(ctypes.c_int),
        ]
        for fn in (
            lib.cpg_initialize,
            lib.cpg_finalize,
            lib.cpg_fd_get,
            lib.cpg_dispatch,
            lib.cpg_join,
            lib.cpg_leave,
            lib.cpg_mcast_joined,
            lib.cpg_local_get,
            lib.cpg_max_atomic_msgsize_get,
            lib.cpg_membership_get,
        ):
            fn.restype = ctypes.c_int
        _lib = lib
    return _lib
