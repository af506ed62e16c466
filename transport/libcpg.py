"""A small, typed ctypes binding of corosync's libcpg (``libcpg.so.4``).

Why ctypes: Debian ships no Python binding for CPG, and we need only a
handful of calls. The C declarations it rests on (corosync 3.x struct
layouts, error codes, prototypes) are in `transport.libcpg_abi`.

`CpgHandle.mcast` and `CpgHandle.dispatch` (except with
`CS_DISPATCH_BLOCKING`, never used by the transport) do not block.  The other
calls are request/reply exchanges with corosync: quick while it runs, but
they wait for as long as the corosync process is stopped (measured: a
``cpg_initialize`` against a SIGSTOPped corosync returns only once it is
continued).  Callbacks run inside `CpgHandle.dispatch`, on the caller's
thread; their ctypes function objects are kept alive on the handle because
libcpg keeps raw pointers to them.
"""

from __future__ import annotations

import ctypes
import select
from collections.abc import Callable
from dataclasses import dataclass

from transport.libcpg_abi import (
    CONFCHG_FN,
    CPG_MAX_NAME_LENGTH,
    DELIVER_FN,
    CpgAddressStruct,
    CpgCallbacksStruct,
    CpgNameStruct,
    CsError,
    Dispatch,
    Guarantee,
    IoVecStruct,
    load,
)

#: multicasts between two checks that the IPC socket has room (see `CpgHandle.mcast`)
_SENDS_PER_CHECK = 32


class CpgError(Exception):
    """A libcpg call failed; `code` is the raw ``cs_error_t`` value."""

    def __init__(self, func: str, code: int) -> None:
        self.func = func
        self.code = code
        try:
            self.error_name = CsError(code).name
        except ValueError:
            self.error_name = f"CS_ERR_UNKNOWN_{code}"
        super().__init__(f"{func}: {self.error_name} ({code})")

    @property
    def try_again(self) -> bool:
        """True for the one transient error: corosync's queue is full, retry later."""
        return self.code == CsError.CS_ERR_TRY_AGAIN


@dataclass(frozen=True)
class CpgAddress:
    """One group member: a process (`pid`) on a corosync node (`nodeid`)."""

    nodeid: int
    pid: int
    reason: int = 0

    @property
    def member(self) -> tuple[int, int]:
        """The (nodeid, pid) identity CPG uses for a member."""
        return (self.nodeid, self.pid)


DeliverCallback = Callable[[int, int, bytes], None]
"""(nodeid, pid, message)"""

ConfchgCallback = Callable[[list[CpgAddress], list[CpgAddress], list[CpgAddress]], None]
"""(members, left, joined)"""


def available() -> bool:
    """Is libcpg loadable on this machine at all?"""
    try:
        load()
    except OSError:
        return False
    return True


# (as plain ints: a comparison per dispatched event and per multicast)
_OK = int(CsError.CS_OK)
_TRY_AGAIN = int(CsError.CS_ERR_TRY_AGAIN)
_DISPATCH_ONE = int(Dispatch.CS_DISPATCH_ONE_NONBLOCKING)


def _check(func: str, rc: int) -> None:
    if rc != _OK:
        raise CpgError(func, rc)


def _name(group: str) -> CpgNameStruct:
    raw = group.encode()
    if len(raw) > CPG_MAX_NAME_LENGTH:
        raise ValueError(f"CPG group name longer than {CPG_MAX_NAME_LENGTH} bytes: {group!r}")
    n = CpgNameStruct()
    n.length = len(raw)
    n.value = raw
    return n


def _ignore(*args: object) -> None:
    """A callback a handle was not given."""


#: (bound once: it runs for every delivered message)
_string_at = ctypes.string_at


def _addresses(ptr: ctypes._Pointer[CpgAddressStruct], count: int) -> list[CpgAddress]:
    return [CpgAddress(ptr[i].nodeid, ptr[i].pid, ptr[i].reason) for i in range(count)]


class CpgHandle:
    """One connection to the local corosync (``cpg_initialize`` .. ``cpg_finalize``).

    `on_deliver` and `on_confchg` are called from inside `dispatch`.  Exceptions
    they raise cannot cross the C frame, so they are stored and re-raised by
    `dispatch` after libcpg returns.  They are not told the group: a handle
    in this project joins one.
    """

    def __init__(
        self,
        on_deliver: DeliverCallback = _ignore,
        on_confchg: ConfchgCallback = _ignore,
    ) -> None:
        self._lib = load()
        self.on_deliver = on_deliver
        self.on_confchg = on_confchg
        self._pending_exc: BaseException | None = None
        # Keep the CFUNCTYPE objects (and the struct pointing at them) alive for
        # the handle's lifetime: libcpg stores the raw function pointers.
        self._deliver_cb = DELIVER_FN(self._deliver)
        self._confchg_cb = CONFCHG_FN(self._confchg)
        self._callbacks = CpgCallbacksStruct(self._deliver_cb, self._confchg_cb)
        handle = ctypes.c_uint64(0)
        rc = self._lib.cpg_initialize(ctypes.byref(handle), ctypes.byref(self._callbacks))
        _check("cpg_initialize", rc)
        self._handle: int | None = handle.value
        self._writable: select.poll | None = None
        self._sends_unchecked = 0
        self._iov = IoVecStruct()

    # -- callbacks (run inside cpg_dispatch) -------------------------------

    def _deliver(
        self, handle: int, group: int | None, nodeid: int, pid: int, msg: int | None, size: int
    ) -> None:
        try:
            self.on_deliver(nodeid, pid, _string_at(msg, size) if msg and size else b"")
        except BaseException as exc:  # noqa: BLE001 - must not unwind through C
            if self._pending_exc is None:
                self._pending_exc = exc

    def _confchg(
        self,
        handle: int,
        group: ctypes._Pointer[CpgNameStruct],
        members: ctypes._Pointer[CpgAddressStruct],
        n_members: int,
        left: ctypes._Pointer[CpgAddressStruct],
        n_left: int,
        joined: ctypes._Pointer[CpgAddressStruct],
        n_joined: int,
    ) -> None:
        try:
            self.on_confchg(
                _addresses(members, n_members),
                _addresses(left, n_left),
                _addresses(joined, n_joined),
            )
        except BaseException as exc:  # noqa: BLE001 - must not unwind through C
            if self._pending_exc is None:
                self._pending_exc = exc

    # -- calls --------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._handle is None

    def _h(self) -> int:
        if self._handle is None:
            raise CpgError("cpg (finalized handle)", CsError.CS_ERR_BAD_HANDLE)
        return self._handle

    def fd(self) -> int:
        """The fd to poll for readability; call `dispatch` when it is readable."""
        fd = ctypes.c_int(-1)
        _check("cpg_fd_get", self._lib.cpg_fd_get(self._h(), ctypes.byref(fd)))
        return fd.value

    def local_nodeid(self) -> int:
        nodeid = ctypes.c_uint32(0)
        _check("cpg_local_get", self._lib.cpg_local_get(self._h(), ctypes.byref(nodeid)))
        return nodeid.value

    def max_atomic_msgsize(self) -> int:
        """Largest message corosync sends without fragmenting it itself."""
        size = ctypes.c_uint32(0)
        _check(
            "cpg_max_atomic_msgsize_get",
            self._lib.cpg_max_atomic_msgsize_get(self._h(), ctypes.byref(size)),
        )
        return size.value

    def join(self, group: str) -> None:
        _check("cpg_join", self._lib.cpg_join(self._h(), ctypes.byref(_name(group))))

    def leave(self, group: str) -> None:
        _check("cpg_leave", self._lib.cpg_leave(self._h(), ctypes.byref(_name(group))))

    def membership(self, group: str) -> list[CpgAddress]:
        arr = (CpgAddressStruct * 128)()
        count = ctypes.c_int(128)
        _check(
            "cpg_membership_get",
            self._lib.cpg_membership_get(
                self._h(), ctypes.byref(_name(group)), arr, ctypes.byref(count)
            ),
        )
        return [CpgAddress(a.nodeid, a.pid, a.reason) for a in arr[: count.value]]

    def mcast(self, *parts: bytes, guarantee: Guarantee = Guarantee.CPG_TYPE_AGREED) -> None:
        """Multicast the concatenation of `parts` to the joined group.

        Raises `CpgError` with `try_again` set when corosync's queue is full
        or corosync is not reading: nothing was sent then, and the caller
        must retry later.

        Why the poll: after writing the message to the shared-memory ring,
        libqb writes a notification byte to the connection's socket and
        busy-waits while that socket is full, i.e. for as long as corosync is
        stopped (measured: the ~280th multicast after a SIGSTOP of corosync
        never returns).  So the socket is checked for room first.  A socket
        reported writable is at most a quarter full, room for ~200 more
        notifications, so one check per `_SENDS_PER_CHECK` multicasts is
        enough (a check costs ~1.2 µs, a multicast ~9-15 µs of CPU here).
        """
        if self._sends_unchecked >= _SENDS_PER_CHECK or self._writable is None:
            if self._writable is None:
                self._writable = select.poll()
                self._writable.register(self.fd(), select.POLLOUT)
            if not self._writable.poll(0):
                raise CpgError("cpg_mcast_joined", CsError.CS_ERR_TRY_AGAIN)
            self._sends_unchecked = 0
        # An iovec's base points into the bytes object itself (no copy), and
        # the struct keeps a reference to it (see `IoVecStruct`).
        iov: IoVecStruct | ctypes.Array[IoVecStruct]
        if len(parts) == 1:  # the transport's case: one reused iovec
            iov = self._iov
            iov.iov_base = parts[0]
            iov.iov_len = len(parts[0])
        else:
            iov = (IoVecStruct * len(parts))()
            for i, part in enumerate(parts):
                iov[i].iov_base = part
                iov[i].iov_len = len(part)
        _check(
            "cpg_mcast_joined",
            self._lib.cpg_mcast_joined(self._h(), guarantee, iov, len(parts)),
        )
        self._sends_unchecked += 1

    def dispatch(self, flags: Dispatch = Dispatch.CS_DISPATCH_ALL) -> None:
        """Run callbacks for everything corosync has queued for us.

        CS_ERR_TRY_AGAIN from a non-blocking dispatch means "nothing to do"
        and is not an error.
        """
        rc = self._lib.cpg_dispatch(self._h(), int(flags))
        exc, self._pending_exc = self._pending_exc, None
        if exc is not None:
            raise exc
        if rc != CsError.CS_OK and rc != CsError.CS_ERR_TRY_AGAIN:
            raise CpgError("cpg_dispatch", rc)

    def dispatch_some(self, limit: int) -> bool:
        """Dispatch at most `limit` queued events, one at a time; True if more may wait.

        Unlike `CS_DISPATCH_ALL`, which runs until the queue is empty (for
        ever, if corosync refills it as fast as we read), this bounds the
        time spent per call.
        """
        fn = self._lib.cpg_dispatch
        handle = self._h()
        for _ in range(limit):
            rc = fn(handle, _DISPATCH_ONE)
            if self._pending_exc is not None:
                exc, self._pending_exc = self._pending_exc, None
                raise exc
            if rc != _OK:
                if rc == _TRY_AGAIN:
                    return False  # the queue is empty
                raise CpgError("cpg_dispatch", rc)
        return True

    def finalize(self) -> None:
        """Close the connection; idempotent and never raises (used on every exit path)."""
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        try:
            self._lib.cpg_finalize(handle)
        except Exception:  # noqa: BLE001
            pass

    def __enter__(self) -> CpgHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finalize()
