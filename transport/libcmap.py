"""How long corosync takes to re-form its ring without a member: libcmap.

Why the vs transport asks: a member that was stopped (SIGSTOP, a stalled VM)
may have been left out of the group while it was not looking, and it must
not answer from its copy until it knows it was not. The daemons expel a
silent member only after their keepalive silence, but corosync itself
leaves a member out of the ring when the network cuts it off, after its
token timeout and then its consensus timeout: with the defaults (token 1 s,
consensus 1.2 x token) that is 2.2 s, sooner than the daemons' default
silence of 5 s. So the lease (`transport.cpg_stream.CpgStream.confirmed_until`)
is bounded by both, and these are the values corosync runs with
(``runtime.config.totem.token`` includes the per-node coefficient).

A small ctypes binding of the three calls needed (``libcmap.so.4``,
``corosync/cmap.h``: ``cmap_handle_t`` is a ``uint64_t``, errors are
``cs_error_t``); it reaches the corosync that CPG reaches, so call it in the
same network namespace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass

from transport.libcpg import CpgError
from transport.libcpg_abi import CsError

_lib: ctypes.CDLL | None = None


def _load() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        lib = ctypes.CDLL(ctypes.util.find_library("cmap") or "libcmap.so.4")
        handle = ctypes.c_uint64
        lib.cmap_initialize.argtypes = [ctypes.POINTER(handle)]
        lib.cmap_finalize.argtypes = [handle]
        lib.cmap_get_uint32.argtypes = [handle, ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint32)]
        for fn in (lib.cmap_initialize, lib.cmap_finalize, lib.cmap_get_uint32):
            fn.restype = ctypes.c_int
        _lib = lib
    return _lib


def _check(func: str, rc: int) -> None:
    if rc != CsError.CS_OK:
        raise CpgError(func, rc)


@dataclass(frozen=True)
class RingTimeouts:
    """corosync's totem timeouts in effect, in seconds."""

    token: float
    consensus: float

    @property
    def shortest_reform(self) -> float:
        """The least time between a ring's last ordered message and a new
        ring that leaves out a member whose corosync still runs.

        A cut alone takes token + consensus: the token is declared lost,
        and consensus waits that long for the silent member before it is
        counted as failed. A node joining that reaches some members but not
        that one (a non-transitive cut) is sooner: it puts them in gather at
        once, with no token lost, where the ring orders nothing, and they
        count the member failed once consensus has passed (simulator, vs
        seed 40067098: a member stopped across such a join answered a read
        its lease still allowed).
        """
        return self.consensus


def ring_timeouts() -> RingTimeouts:
    """Read the running corosync's token and consensus; raises `CpgError`."""
    lib = _load()
    handle = ctypes.c_uint64(0)
    _check("cmap_initialize", lib.cmap_initialize(ctypes.byref(handle)))
    try:
        values = []
        for key in (b"runtime.config.totem.token", b"runtime.config.totem.consensus"):
            value = ctypes.c_uint32(0)
            _check("cmap_get_uint32", lib.cmap_get_uint32(handle, key, ctypes.byref(value)))
            values.append(value.value / 1000)
    finally:
        lib.cmap_finalize(handle)
    return RingTimeouts(token=values[0], consensus=values[1])
