"""STATISTICS' reply (sans-IO): the flat struct of counters `ctdb statistics` reads.

At 488 bytes of counters, latency counters and explicit pads, read at fixed
offsets, it is the largest struct a CTDB client decodes, and its format
string, each group's offset beside it, is the one place that layout is
written down. Checked against Samba's protocol_types.c
(`ctdb_statistics_push`); the rules are `ctdb_types`' own.
"""

from __future__ import annotations

import struct
from dataclasses import astuple, dataclass, fields
from typing import Any, ClassVar

from ctdb.protocol.ctdb_scalars import Reader, invalid

_LATENCY = "i4xddd"  # ctdb_latency_counter, 32 bytes: num, 4 pad, min, max, total
_STATISTICS = struct.Struct(
    "<9I"  # num_clients ... keepalive_packets_recv                     @0
    "9I"  # node.{req_call ... req_tunnel}                              @36
    "4I"  # client.{req_call, req_message, req_control, req_tunnel}    @72
    "3I4x"  # timeouts.{call, control, traverse}, pad                   @88
    + _LATENCY * 2  # reclock.{ctdbd, recd}                            @104
    + "4I"  # locks.{num_calls, num_current, num_pending, num_failed}   @168
    + _LATENCY  # locks.latency                                         @184
    + "16I"  # locks.buckets                                            @216
    + "7I"  # total_calls ... max_hop_count                             @280
    + "16I4x"  # hop_count_bucket, pad                                  @308
    + _LATENCY * 2  # call_latency, childwrite_latency                  @376
    + "I4x"  # num_recoveries, pad                                      @440
    + "2q2q"  # statistics_start_time, statistics_current_time          @448
    + "2I"  # total_ro_delegations, total_ro_revokes                    @480
)


@dataclass(frozen=True, slots=True)
class LatencyCounter:
    """`ctdb_latency_counter`: count and min/max/total seconds."""

    num: int = 0
    min: float = 0.0
    max: float = 0.0
    total: float = 0.0


@dataclass(frozen=True, slots=True)
class Statistics:
    """`ctdb_statistics` (STATISTICS' reply), 488 bytes with explicit pads
    at 100, 372 and 444 (protocol_types.c `ctdb_statistics_push`). `ctdb
    statistics` refuses anything shorter. The daemon fills what it counts
    and leaves the rest zero. Groups of counters are tuples in C order:
    node = req_call, reply_call, req_dmaster, reply_dmaster, reply_error,
    req_message, req_control, reply_control, req_tunnel; client =
    req_call, req_message, req_control, req_tunnel; timeouts = call,
    control, traverse; locks = num_calls, num_current, num_pending,
    num_failed; counters = total_calls, pending_calls, childwrite_calls,
    pending_childwrite_calls, memory_used, __last_counter, max_hop_count."""

    SIZE: ClassVar[int] = _STATISTICS.size
    num_clients: int = 0
    frozen: int = 0
    recovering: int = 0
    client_packets_sent: int = 0
    client_packets_recv: int = 0
    node_packets_sent: int = 0
    node_packets_recv: int = 0
    keepalive_packets_sent: int = 0
    keepalive_packets_recv: int = 0
    node: tuple[int, ...] = (0,) * 9
    client: tuple[int, ...] = (0,) * 4
    timeouts: tuple[int, ...] = (0,) * 3
    reclock_ctdbd: LatencyCounter = LatencyCounter()
    reclock_recd: LatencyCounter = LatencyCounter()
    locks: tuple[int, ...] = (0,) * 4
    locks_latency: LatencyCounter = LatencyCounter()
    locks_buckets: tuple[int, ...] = (0,) * 16
    counters: tuple[int, ...] = (0,) * 7
    hop_count_bucket: tuple[int, ...] = (0,) * 16
    call_latency: LatencyCounter = LatencyCounter()
    childwrite_latency: LatencyCounter = LatencyCounter()
    num_recoveries: int = 0
    statistics_start_time: tuple[int, int] = (0, 0)
    statistics_current_time: tuple[int, int] = (0, 0)
    total_ro_delegations: int = 0
    total_ro_revokes: int = 0

    def encode(self) -> bytes:
        """Field by field in declaration order, which is the wire order; a
        field's default says its shape."""
        flat: list[int | float] = []
        for f in fields(self):
            value, default = getattr(self, f.name), f.default
            if isinstance(default, LatencyCounter):
                flat += astuple(value)
            elif isinstance(default, tuple):
                if len(value) != len(default):
                    raise invalid(f"statistics {f.name} needs {len(default)} values")
                flat += value
            else:
                flat.append(value)
        return _STATISTICS.pack(*flat)

    @classmethod
    def decode(cls, data: bytes) -> Statistics:
        r = Reader(data, "statistics")
        values = iter(r.unpack(_STATISTICS))
        r.done()
        out: dict[str, Any] = {}
        for f in fields(cls):
            if isinstance(f.default, LatencyCounter):
                out[f.name] = LatencyCounter(*(next(values) for _ in range(4)))
            elif isinstance(f.default, tuple):
                out[f.name] = tuple(next(values) for _ in f.default)
            else:
                out[f.name] = next(values)
        return cls(**out)
