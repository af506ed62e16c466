"""Transport benchmark, netpipe style: round trip and throughput vs message size.

One run measures, for message sizes 16 B .. 1 MiB, between two *processes*:

* ``raw``  - baseline 1: a bare loopback TCP socket pair (uvloop protocol,
  4-byte length prefix, no transport layer): the floor of ``tcp``;
* ``tcp``  - `transport.tcp.TcpTransport`, nodes 127.0.0.1 and 127.0.0.2,
  no cluster key;
* ``tcp-key`` - the same with a cluster key: the links are authenticated by
  the handshake, established links carry frames exactly as ``tcp`` does;
* ``tcp-mac`` - the same with ``authenticate frames``: every frame carries a
  MAC (measured against ``tcp``, target <= 1.10x on the 16 B round trip);
* ``cpg``  - baseline 2: a bare CPG client pair written directly on
  `transport.libcpg` (one ``cpg_mcast_joined`` per message, no transport
  layer): the corosync floor of ``vs``;
* ``vs``   - `transport.cpg.CpgTransport`, two members (``send(pnn)``: one
  agreed-order CPG multicast that the other member filters out).

``cpg`` and ``vs`` share one private corosync (knet on 127.0.0.1, ``token:
300``, like the test suite) in its own network namespace, stopped at the end.

Round trip: A sends a message of the given size to B, B answers with a message
of the same size; p50/p99 over many exchanges.  Throughput: A streams messages
to B for a fixed time, calling ``drain()`` for back-pressure, then an end
marker; B answers with its count; rate = count / (time until that answer).

The full run (or ``--sweep``; ``--no-sweep`` skips it) adds the corosync
investigation: 16-byte round trip of bare CPG and of vs, and CPG
self-delivery, under several totem settings (knet vs udpu, ``hold``,
``seqno_unchanged_const``, ``token``, ``max_messages``/``window_size``) and
with a third, idle group member, each on a fresh private corosync.

Writes results.json, transports.png and summary.md into --out.

    .venv/bin/python -m bench.transports [--quick] [--[no-]sweep] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import report
from ctdb.common.allocator import steady_heap
from tools.cluster import free_port

REPO = Path(__file__).resolve().parent.parent
SIZES = [16, 256, 4096, 65536, 1 << 20]
KINDS = ["raw", "tcp", "tcp-key", "tcp-mac", "cpg", "vs"]
TCP_KINDS = ("tcp", "tcp-key", "tcp-mac")
LABELS = {
    "raw": "raw TCP socket (baseline)",
    "tcp": "tcp transport",
    "tcp-key": "tcp transport, cluster key",
    "tcp-mac": "tcp transport, frame MACs",
    "cpg": "bare CPG (baseline)",
    "vs": "vs transport",
}
BASELINE_OF = {"tcp": "raw", "tcp-key": "tcp", "tcp-mac": "tcp", "vs": "cpg"}
MAC_TARGET = 1.10  # tcp-mac / tcp, 16 B round trip p50
TCP_NODES = ["127.0.0.1", "127.0.0.2"]
HIGH_WATER = 4 * 1024 * 1024  # raw socket: same write high-water mark as TcpTransport
TOKEN_MS = 300  # as tests/transport: the private corosync the suite uses

# Message kinds (first payload byte).
PING, STREAM, END, COUNT, HELLO = b"P"[0], b"S"[0], b"E"[0], b"C"[0], b"H"[0]
_U64 = struct.Struct("!Q")
_LEN = struct.Struct("!I")


say = report.progress("transports")


@dataclass(frozen=True)
class Plan:
    """Per (backend, size) budgets; --quick shrinks them."""

    rtt_seconds: float
    rtt_max: int
    rtt_min: int
    warmup: int
    tput_seconds: float
    sweep_seconds: float
    cpg_cap: tuple[int, int] = (16 << 20, 20000)  # stream cap for cpg/vs: bytes, messages

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(0.2, 3000, 8, 20, 0.2, 0.5, (4 << 20, 5000))
        return cls(1.5, 20000, 50, 200, 1.5, 1.0)


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


# =====================================================================================
# Worker side: one endpoint per process
# =====================================================================================


class Endpoint:
    """What the driver needs from a backend: send to the peer, drain, a handler."""

    handler: Callable[[bytes], None]

    async def start(self) -> None:
        raise NotImplementedError

    def send(self, payload: bytes) -> None:
        raise NotImplementedError

    async def drain(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        return {}


def _diag_framereader() -> Any:
    """BENCH_RAW_READER=framing: the raw baseline parses with transport.framing (A/B test)."""
    if os.environ.get("BENCH_RAW_READER") != "framing":
        return None
    from transport.framing import FrameReader

    return FrameReader


_DIAG_FRAMEREADER = _diag_framereader()


class _RawProto(asyncio.Protocol):
    """A lean length-prefixed protocol: one copy per received frame, writev on send."""

    def __init__(self, ep: RawEndpoint) -> None:
        self.ep = ep
        self.buf = bytearray()
        if _DIAG_FRAMEREADER is not None:
            self.reader = _DIAG_FRAMEREADER(1 << 30)
        self.transport: asyncio.Transport | None = None
        self.resume: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=HIGH_WATER)  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ep.connected(self)

    def data_received(self, data: bytes) -> None:
        if _DIAG_FRAMEREADER is not None:  # diagnostics: the transport's own reader
            for f in self.reader.feed(data):
                self.ep.handler(f)
            return
        buf = self.buf
        buf += data
        end = len(buf)
        if end < 4:
            return
        pos = 0
        handler = self.ep.handler
        frames = []
        with memoryview(buf) as mv:
            while end - pos >= 4:
                (size,) = _LEN.unpack_from(buf, pos)
                if end - pos - 4 < size:
                    break
                frames.append(bytes(mv[pos + 4 : pos + 4 + size]))
                pos += 4 + size
        if pos:
            del buf[:pos]
        for f in frames:
            handler(f)

    def pause_writing(self) -> None:
        self.resume = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.resume is not None and not self.resume.done():
            self.resume.set_result(None)
        self.resume = None


class RawEndpoint(Endpoint):
    """Baseline 1: one loopback TCP connection, B listens, A connects."""

    def __init__(self, role: str, port: int) -> None:
        self.role = role
        self.port = port
        self.proto: _RawProto | None = None
        self.up = asyncio.Event()
        self.server: asyncio.Server | None = None

    def connected(self, proto: _RawProto) -> None:
        self.proto = proto
        self.up.set()

    async def listen(self) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _RawProto(self), TCP_NODES[0], 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        if self.role == "b":
            await self.listen()
            await self.up.wait()
        else:
            loop = asyncio.get_running_loop()
            await loop.create_connection(lambda: _RawProto(self), TCP_NODES[0], self.port)

    def send(self, payload: bytes) -> None:
        assert self.proto is not None and self.proto.transport is not None
        self.proto.transport.writelines((_LEN.pack(len(payload)), payload))

    async def drain(self) -> None:
        assert self.proto is not None
        if self.proto.resume is not None:
            await asyncio.shield(self.proto.resume)

    async def stop(self) -> None:
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.close()
        if self.server is not None:
            self.server.close()


class TransportEndpoint(Endpoint):
    """A real `Transport` (tcp or vs) with two nodes; the peer is the other pnn."""

    def __init__(self, kind: str, role: str, port: int, group: str, mode: str) -> None:
        from transport.base import TransportOptions, transport_class

        self.pnn = 0 if role == "a" else 1
        self.peer = 1 - self.pnn
        self.mode = mode
        tcp = kind in TCP_KINDS
        cls = transport_class("tcp" if tcp else kind)
        nodes = TCP_NODES if tcp else ["n0", "n1"]
        opts = TransportOptions(
            port=port,
            cluster_key=b"bench cluster key, 32 bytes long" if kind != "tcp" else None,
            authenticate_frames=kind == "tcp-mac",
            extra={"group": group},
        )
        self.t = cls(self.pnn, nodes, opts)
        self.t.on_message = self._on_message
        self.kind = kind

    def _on_message(self, src: int, payload: bytes) -> None:
        if src != self.pnn:
            self.handler(payload)

    async def start(self) -> None:
        await self.t.start()
        deadline = time.monotonic() + 30
        while self.peer not in self.t.view.members:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind}: peer never joined the view")
            await asyncio.sleep(0.005)

    def send(self, payload: bytes) -> None:
        if self.mode == "broadcast":
            self.t.broadcast(payload)
        else:
            self.t.send(self.peer, payload)

    async def drain(self) -> None:
        await self.t.drain()

    async def stop(self) -> None:
        await self.t.stop()


class CpgEndpoint(Endpoint):
    """Baseline 2: bare libcpg, no transport layer.

    One ``cpg_mcast_joined`` per message (corosync itself fragments messages
    above its atomic size); deliveries from our own pid are dropped.  On
    CS_ERR_TRY_AGAIN the message waits in a queue that is retried after every
    dispatch (our own deliveries mean the totem queue moved) and on a 200 us
    timer; `drain()` waits until that queue is empty.
    """

    RETRY = 0.0002

    def __init__(self, group: str, members: int = 2) -> None:
        self.group = group
        self.expect = members
        self.outq: deque[bytes] = deque()
        self.members: list[tuple[int, int]] = []
        self.pid = os.getpid()
        self.empty = asyncio.Event()
        self.empty.set()
        self.timer: asyncio.TimerHandle | None = None
        self.try_again = 0

    async def start(self) -> None:
        from transport import libcpg

        self.lib = libcpg
        self.loop = asyncio.get_running_loop()
        self.h = libcpg.CpgHandle(self._deliver, self._confchg)
        self.nodeid = self.h.local_nodeid()
        self.atomic = self.h.max_atomic_msgsize()
        self.h.join(self.group)
        self.fd = self.h.fd()
        self.loop.add_reader(self.fd, self._readable)
        deadline = time.monotonic() + 30
        while len(self.members) < self.expect:
            if time.monotonic() > deadline:
                raise RuntimeError("cpg: peers never joined")
            await asyncio.sleep(0.005)

    def _deliver(self, nodeid: int, pid: int, msg: bytes) -> None:
        if pid != self.pid or nodeid != self.nodeid:
            self.handler(msg)

    def _confchg(self, members: Any, left: Any, joined: Any) -> None:
        self.members = [m.member for m in members]

    def _readable(self) -> None:
        self.h.dispatch(self.lib.Dispatch.CS_DISPATCH_ALL)
        if self.outq:
            self._flush()

    def _flush(self) -> None:
        self.timer = None
        q = self.outq
        mcast = self.h.mcast
        while q:
            try:
                mcast(q[0])
            except self.lib.CpgError as exc:
                if not exc.try_again:
                    raise
                self.try_again += 1
                if self.timer is None:
                    self.timer = self.loop.call_later(self.RETRY, self._flush)
                return
            q.popleft()
        self.empty.set()

    def send(self, payload: bytes) -> None:
        if not self.outq:
            try:
                self.h.mcast(payload)
                return
            except self.lib.CpgError as exc:
                if not exc.try_again:
                    raise
                self.try_again += 1
        self.outq.append(payload)
        self.empty.clear()
        if self.timer is None:
            self.timer = self.loop.call_later(self.RETRY, self._flush)

    async def drain(self) -> None:
        await self.empty.wait()

    async def stop(self) -> None:
        self.loop.remove_reader(self.fd)
        with contextlib.suppress(Exception):
            self.h.leave(self.group)
        self.h.finalize()

    def info(self) -> dict[str, Any]:
        return {"max_atomic_msgsize": self.atomic, "try_again": self.try_again}


def make_endpoint(kind: str, role: str, conf: dict[str, Any]) -> Endpoint:
    if kind == "raw":
        return RawEndpoint(role, conf.get("port", 0))
    if kind == "cpg":
        return CpgEndpoint(conf["group"], 2 + conf.get("extras", 0))
    return TransportEndpoint(
        kind, role, conf.get("port", 0), conf.get("group", "bench"), conf["mode"]
    )


class Responder:
    """B: echo pings, count stream messages, answer an end marker with the count."""

    def __init__(self, ep: Endpoint) -> None:
        self.ep = ep
        self.count = 0
        ep.handler = self.on_message

    def on_message(self, payload: bytes) -> None:
        kind = payload[0]
        if kind == STREAM:
            self.count += 1
        elif kind == PING:
            self.ep.send(payload)
        elif kind == END:
            self.ep.send(bytes([COUNT]) + _U64.pack(self.count))
            self.count = 0


class Driver:
    """A: ping-pong and streaming, one size at a time."""

    def __init__(self, ep: Endpoint, plan: Plan) -> None:
        self.ep = ep
        self.plan = plan
        self.waiter: asyncio.Future[bytes] | None = None
        self.hello = asyncio.Event()
        self.cap_bytes = 0
        self.cap_msgs = 0
        ep.handler = self.on_message

    def on_message(self, payload: bytes) -> None:
        if payload[0] == HELLO:
            self.hello.set()
            return
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(payload)

    async def _exchange(self, payload: bytes) -> bytes:
        self.waiter = asyncio.get_running_loop().create_future()
        self.ep.send(payload)
        return await asyncio.wait_for(self.waiter, 30)

    async def rtt(self, size: int) -> dict[str, Any]:
        plan = self.plan
        payload = bytes([PING]) + b"x" * (size - 1)
        for _ in range(plan.warmup if size <= 65536 else 3):
            await self._exchange(payload)
        clock = time.perf_counter
        samples: list[float] = []
        loop = asyncio.get_running_loop()
        deadline = clock() + plan.rtt_seconds
        while len(samples) < plan.rtt_max and (clock() < deadline or len(samples) < plan.rtt_min):
            fut = self.waiter = loop.create_future()
            t0 = clock()
            self.ep.send(payload)
            reply = await fut
            samples.append(clock() - t0)
            if len(reply) != size:
                raise RuntimeError(f"echo of {size} B came back with {len(reply)} B")
        return {
            "n": len(samples),
            "p50_us": pct(samples, 50) * 1e6,
            "p99_us": pct(samples, 99) * 1e6,
            "min_us": min(samples) * 1e6,
            "mean_us": sum(samples) / len(samples) * 1e6,
        }

    def stream_cap(self, size: int) -> int:
        """Most messages one stream may send (corosync has no flow control).

        CPG accepts far more than it can deliver (hundreds of MiB into its
        queues within a second), so a time-bounded stream alone would spend
        tens of seconds draining; cap the volume for cpg and vs.
        """
        if self.cap_bytes <= 0:
            return 1 << 62
        return max(4, min(self.cap_msgs, self.cap_bytes // size))

    async def throughput(self, size: int) -> dict[str, Any]:
        payload = bytes([STREAM]) + b"s" * (size - 1)
        batch = max(1, min(256, (256 * 1024) // size))
        clock = time.perf_counter
        send, drain = self.ep.send, self.ep.drain
        sent = 0
        t0 = clock()
        deadline = t0 + self.plan.tput_seconds
        cap = self.stream_cap(size)
        while clock() < deadline and sent < cap:
            for _ in range(batch):
                send(payload)
            sent += batch
            await drain()
        reply = await self._exchange(bytes([END]))
        elapsed = clock() - t0
        (count,) = _U64.unpack_from(reply, 1)
        if count != sent:
            raise RuntimeError(f"stream of {size} B: sent {sent}, peer counted {count}")
        return {
            "n": count,
            "seconds": elapsed,
            "msg_per_s": count / elapsed,
            "mb_per_s": count * size / elapsed / 1e6,
        }


async def worker(ns: argparse.Namespace) -> None:
    conf = json.loads(ns.conf)
    plan = Plan(**conf["plan"])
    ep = make_endpoint(ns.worker, ns.role, conf)
    if ns.role == "b":
        resp = Responder(ep)
        loop = asyncio.get_running_loop()
        if isinstance(ep, RawEndpoint):
            port = await ep.listen()
            print(json.dumps({"ev": "listening", "port": port}), flush=True)
            await ep.up.wait()
        else:
            await ep.start()
        ep.send(bytes([HELLO]))
        done = asyncio.Event()
        loop.add_reader(sys.stdin.fileno(), done.set)
        await done.wait()
        loop.remove_reader(sys.stdin.fileno())
        print(json.dumps({"ev": "done", "counted": resp.count, **ep.info()}), flush=True)
        await ep.stop()
        return
    drv = Driver(ep, plan)
    if ns.worker in ("cpg", "vs"):
        drv.cap_bytes, drv.cap_msgs = conf["plan"]["cpg_cap"]
    await ep.start()
    await asyncio.wait_for(drv.hello.wait(), 30)
    sizes = conf["sizes"]
    out: dict[str, Any] = {"rtt": {}, "tput": {}}
    for size in sizes:
        out["rtt"][str(size)] = await drv.rtt(size)
        if not conf.get("rtt_only"):
            out["tput"][str(size)] = await drv.throughput(size)
    if conf.get("self_delivery") and isinstance(ep, CpgEndpoint):
        out["self_delivery"] = await self_delivery(ep, plan)
    out.update(ep.info())
    print(json.dumps({"ev": "result", **out}), flush=True)
    await ep.stop()


async def self_delivery(ep: CpgEndpoint, plan: Plan) -> dict[str, Any]:
    """How long a 16-byte mcast takes to come back to its sender (DESIGN.md's 52 us)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] | None = None
    mine = bytes([b"M"[0]]) + b"m" * 15

    def own(nodeid: int, pid: int, msg: bytes) -> None:
        if pid == ep.pid and fut is not None and not fut.done():
            fut.set_result(None)

    ep.h.on_deliver = own
    samples: list[float] = []
    clock = time.perf_counter
    deadline = clock() + plan.rtt_seconds
    for i in range(plan.rtt_max):
        fut = loop.create_future()
        t0 = clock()
        ep.h.mcast(mine)
        await fut
        if i >= plan.warmup:
            samples.append(clock() - t0)
        if clock() > deadline and len(samples) >= plan.rtt_min:
            break
    return {"n": len(samples), "p50_us": pct(samples, 50) * 1e6, "p99_us": pct(samples, 99) * 1e6}


def worker_main(ns: argparse.Namespace) -> int:
    import uvloop

    if json.loads(ns.conf).get("heap") == "steady":
        steady_heap()  # as ctdbd does at start; the raw baseline too, so that ratios compare code

    prof_dir = os.environ.get("BENCH_TRANSPORTS_PROFILE")
    if not prof_dir:
        uvloop.run(worker(ns))
        return 0
    # Hot-spot hunting: cProfile each worker, one .prof file per process.
    import cProfile

    prof = cProfile.Profile()
    prof.enable()
    try:
        uvloop.run(worker(ns))
    finally:
        prof.disable()
        prof.dump_stats(os.path.join(prof_dir, f"{ns.worker}-{ns.role}-{os.getpid()}.prof"))
    return 0


# =====================================================================================
# Parent side: corosync, process pairs, reports
# =====================================================================================


def tuned_corosync(directory: Path, transport: str, totem: dict[str, Any]) -> Any:
    """A PrivateCorosync (isolated) whose totem section gets extra settings.

    A `crypto_cipher` other than none turns on corosync's own crypto with a
    fresh authkey, as `ctdbtool cluster up --transport vs` does.
    """
    from ctdb.common.keyfile import COROSYNC_KEY_SIZE, create_key
    from transport.corosync import PrivateCorosync

    class Tuned(PrivateCorosync):
        def write_config(self) -> Path:
            path = super().write_config()
            if self.authkey is not None and not self.authkey.exists():
                create_key(self.authkey, COROSYNC_KEY_SIZE)
            if totem:
                text = path.read_text()
                for k, v in totem.items():
                    line = f"    {k}: {v}\n"
                    text, n = re.subn(rf"(?m)^    {k}: .*\n", line, text, count=1)
                    if not n:
                        text = re.sub(r"(?m)^(    token: .*\n)", rf"\g<1>{line}", text, count=1)
                path.write_text(text)
            return path

    crypto = totem.get("crypto_cipher", "none") != "none"
    return Tuned(
        directory,
        isolate=True,
        token_ms=TOKEN_MS,
        transport=transport,
        authkey=directory / "authkey" if crypto else None,
    )


class Pair:
    """Two worker processes (A drives, B responds) and, optionally, idle extras."""

    def __init__(
        self, kind: str, conf: dict[str, Any], logdir: Path, prefix: list[str], extras: int = 0
    ) -> None:
        self.kind = kind
        self.conf = conf
        self.logdir = logdir
        self.prefix = prefix
        self.extras = extras
        conf["extras"] = extras
        self.procs: list[subprocess.Popen[str]] = []

    def spawn(self, role: str, tag: str) -> subprocess.Popen[str]:
        argv = [
            *self.prefix,
            sys.executable,
            "-m",
            "bench.transports",
            "--worker",
            self.kind,
            "--role",
            role,
            "--conf",
            json.dumps(self.conf),
        ]
        err = open(self.logdir / f"{tag}.stderr", "w")
        try:
            proc = subprocess.Popen(
                argv,
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
        finally:
            err.close()
        self.procs.append(proc)
        return proc

    def _line(self, proc: subprocess.Popen[str], tag: str, timeout: float) -> dict[str, Any]:
        import selectors

        assert proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout):
                raise RuntimeError(f"{tag}: no answer within {timeout}s; {self._tail(tag)}")
        finally:
            sel.close()
        line = proc.stdout.readline()
        if not line:
            proc.wait()
            raise RuntimeError(f"{tag} exited {proc.returncode}: {self._tail(tag)}")
        return json.loads(line)

    def _tail(self, tag: str) -> str:
        try:
            return (self.logdir / f"{tag}.stderr").read_text()[-2500:]
        except OSError:
            return ""

    def run(self, timeout: float) -> dict[str, Any]:
        tag = f"{self.kind}-{self.conf.get('group', 'raw')}"
        try:
            b = self.spawn("b", f"{tag}-b")
            if self.kind == "raw":
                self.conf["port"] = self._line(b, f"{tag}-b", 30)["port"]
            for i in range(self.extras):
                self.spawn("idle", f"{tag}-idle{i}")
            a = self.spawn("a", f"{tag}-a")
            result = self._line(a, f"{tag}-a", timeout)
            a.wait(30)
            for p in self.procs:
                if p is not a and p.stdin is not None:
                    p.stdin.close()
            info = self._line(b, f"{tag}-b", 30)
            result["responder"] = info
            for p in self.procs:
                p.wait(30)
            return result
        finally:
            self.close()

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
            for f in (p.stdin, p.stdout):
                if f is not None:
                    with contextlib.suppress(OSError):
                        f.close()


async def idle_member(ns: argparse.Namespace) -> None:
    """A third CPG member that only receives (and drops) everything: 3-process cost."""
    from transport import libcpg
    from transport.libcpg_abi import Dispatch

    conf = json.loads(ns.conf)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), done.set)
    if ns.worker == "vs":
        from transport.base import TransportOptions
        from transport.cpg import CpgTransport

        t = CpgTransport(2, ["n0", "n1", "n2"], TransportOptions(extra={"group": conf["group"]}))
        await t.start()
        await done.wait()
        await t.stop()
        return
    h = libcpg.CpgHandle(lambda *a: None, lambda *a: None)
    h.join(conf["group"])
    fd = h.fd()
    loop.add_reader(fd, h.dispatch, Dispatch.CS_DISPATCH_ALL)
    await done.wait()
    loop.remove_reader(fd)
    h.finalize()


def machine_info() -> dict[str, Any]:
    import msgpack
    import uvloop

    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    corosync = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        corosync = subprocess.run(
            ["corosync", "-v"], capture_output=True, text=True, timeout=10
        ).stdout.splitlines()[0]
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
        "python": sys.version.split()[0],
        "uvloop": uvloop.__version__,
        "msgpack": ".".join(map(str, msgpack.version)),
        "corosync": corosync,
        "git_commit": commit,
    }


# Totem variants for the sweep: (name, transport, extra totem settings, idle extra members).
SWEEP: list[tuple[str, str, dict[str, Any], int]] = [
    ("knet (as above)", "knet", {}, 0),
    ("knet, 3rd idle member", "knet", {}, 1),
    ("knet, hold: 20", "knet", {"hold": 20}, 0),
    ("knet, seqno_unchanged_const: 100000", "knet", {"seqno_unchanged_const": 100000}, 0),
    (
        "knet, max_messages: 256, window_size: 300",
        "knet",
        {"max_messages": 256, "window_size": 300},
        0,
    ),
    ("knet, token: 3000", "knet", {"token": 3000}, 0),
    ("knet, crypto aes256 + sha256 (cluster up)", "knet", {"crypto_cipher": "aes256"}, 0),
    ("udpu", "udpu", {}, 0),
    ("udpu, 3rd idle member", "udpu", {}, 1),
]


def run_sweep(plan: Plan, workdir: Path, rounds: int) -> list[dict[str, Any]]:
    """16-byte RTT of bare CPG and of vs (+ CPG self delivery) per corosync variant.

    Each variant gets a fresh private corosync; the third member, when asked
    for, is an idle process in the group that receives (and drops) everything,
    as the third ctdbd of a 3-node cluster on one corosync does.  Variants are
    interleaved over `rounds` rounds (a loaded host drifts over time); a row
    reports the median over rounds of each round's p50/p99.
    """
    sweep_plan = Plan(plan.sweep_seconds, 50000, 50, 100, 0.0, 0.0)
    rows: list[dict[str, Any]] = [
        {"name": name, "transport": kind, "totem": totem, "extra_members": extras, "rounds": []}
        for name, kind, totem, extras in SWEEP
    ]
    for rnd in range(rounds):
        for i, (name, kind, totem, extras) in enumerate(SWEEP):
            row = rows[i]
            d = workdir / f"sweep{i}r{rnd}"
            cs = tuned_corosync(d, kind, totem)
            say(f"sweep round {rnd + 1}/{rounds}: {name}")
            got: dict[str, float] = {}
            try:
                cs.start()
                prefix = ["nsenter", "-t", str(cs.holder_pid), "--net", "--"]
                for backend in ("cpg", "vs"):
                    conf = {
                        "group": f"sweep{i}{backend}r{rnd}x{os.getpid()}",
                        "plan": asdict(sweep_plan),
                        "sizes": [16],
                        "rtt_only": True,
                        "self_delivery": True,
                        "mode": "send",
                    }
                    res = Pair(backend, conf, d, prefix, extras=extras).run(120)
                    got[f"{backend}_p50_us"] = res["rtt"]["16"]["p50_us"]
                    got[f"{backend}_p99_us"] = res["rtt"]["16"]["p99_us"]
                    if "self_delivery" in res:
                        got["self_p50_us"] = res["self_delivery"]["p50_us"]
                        got["self_p99_us"] = res["self_delivery"]["p99_us"]
                row["runtime"] = totem_runtime(cs)
            except Exception as exc:  # noqa: BLE001 - a failed variant is a finding too
                say(f"sweep {name}: failed: {exc}")
                row["error"] = str(exc)
            finally:
                cs.stop()
            if got:
                row["rounds"].append(got)
                say(
                    f"  cpg rtt p50 {got['cpg_p50_us']:.0f} us, "
                    f"vs rtt p50 {got.get('vs_p50_us', float('nan')):.0f} us, "
                    f"self-delivery p50 {got['self_p50_us']:.0f} us"
                )
    for row in rows:
        done = [r for r in row["rounds"] if len(r) == 6]
        if not done:
            row.setdefault("error", "no complete round")
            continue
        row.pop("error", None)
        for key in done[0]:
            row[key] = statistics.median(r[key] for r in done)
    return rows


def framereader_check() -> dict[str, Any]:
    """In-process A/B of transport.framing.FrameReader against a memoryview variant.

    The tcp transport's large-message gap to the raw socket comes from
    ``bytes(buf[a:b])`` in FrameReader.feed (a bytearray slice copy, then a
    bytes copy); the variant slices a memoryview instead (one copy).
    """
    from transport.framing import LENGTH, FrameReader

    class MemoryviewReader(FrameReader):
        def feed(self, data: bytes) -> list[bytes]:
            buf = self._buf
            buf += data
            frames: list[bytes] = []
            pos, end = 0, len(buf)
            with memoryview(buf) as mv:
                while end - pos >= 4:
                    (size,) = LENGTH.unpack_from(buf, pos)
                    if end - pos - 4 < size:
                        break
                    frames.append(bytes(mv[pos + 4 : pos + 4 + size]))
                    pos += 4 + size
            if pos:
                del buf[:pos]
            return frames

    out: dict[str, Any] = {}
    for size in (65536, 1 << 20):
        stream = (LENGTH.pack(size) + b"x" * size) * max(4, (32 << 20) // size)
        chunks = [stream[i : i + 65536] for i in range(0, len(stream), 65536)]
        for name, cls in (("framing.FrameReader", FrameReader), ("memoryview", MemoryviewReader)):
            best = 0.0
            for _ in range(3):
                feed = cls(1 << 30).feed
                t0 = time.perf_counter()
                for c in chunks:
                    feed(c)
                best = max(best, len(stream) / (time.perf_counter() - t0) / 1e6)
            out[f"{name}, {fmt_size(size)} frames"] = best
    return out


def framereader_fresh() -> dict[str, Any]:
    """`framereader_check` in a fresh process (like a new worker: malloc state matters)."""
    code = (
        "import json; from bench.transports import framereader_check as f; print(json.dumps(f()))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    return json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr[-500:]}


def link_auth_cpu(quick: bool) -> dict[str, float]:
    """CPU per handshake (both sides) and per 16 B frame MAC (seal + open), in process.

    Why: the tcp-key and tcp-mac rows measure whole round trips on a noisy
    host; these say what the authentication code itself costs.
    """
    from transport.linkauth import FrameOpener, FrameSealer, Initiator, Responder, Settings

    settings = Settings(b"k" * 32, frame_macs=True)
    clock = time.perf_counter
    n = 200 if quick else 2000
    t0 = clock()
    for _ in range(n):
        init, resp = Initiator(settings, 1, 0), Responder(settings, 0, 1)
        step = init.receive(resp.receive(init.hello()).send)
        resp.receive(step.send)
    handshake = (clock() - t0) / n
    assert step.session is not None and step.session.frame_key is not None
    sealer, opener = FrameSealer(step.session.frame_key), FrameOpener(step.session.frame_key)
    payload = b"P" * 16
    n = 10000 if quick else 100000
    t0 = clock()
    for _ in range(n):
        opener.open(payload + sealer.seal(payload))
    frame = (clock() - t0) / n
    return {"handshake_us": handshake * 1e6, "frame_mac_16b_us": frame * 1e6}


def totem_runtime(cs: Any) -> dict[str, str]:
    """The effective totem timers corosync computed (cmap runtime.config.totem.*)."""
    out: dict[str, str] = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        text = subprocess.run(
            [
                "nsenter",
                "-t",
                str(cs.holder_pid),
                "--net",
                "--",
                "corosync-cmapctl",
                "-b",
                "runtime.config.totem",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        for line in text.splitlines():
            key, _, val = line.partition(" = ")
            name = key.split(" ")[0].rsplit(".", 1)[-1]
            if name in (
                "token",
                "hold",
                "seqno_unchanged_const",
                "max_messages",
                "window_size",
                "token_retransmit",
                "consensus",
            ):
                out[name] = val.strip()
    return out


def run(ns: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    plan = Plan.make(ns.quick)
    sizes = ns.sizes
    workdir = Path(tempfile.mkdtemp(prefix="bench-transports-"))
    results: dict[str, Any] = {
        "benchmark": "transports",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "bench.transports", *sys.argv[1:]]),
        "quick": ns.quick,
        "vs_mode": ns.vs_mode,
        "heap": ns.heap,
        "sizes": sizes,
        "plan": asdict(plan),
        "corosync": {"transport": "knet", "token_ms": TOKEN_MS, "isolated": True},
        "machine": machine_info(),
        "rounds": ns.rounds,
        "backends": {},
    }
    cs = None
    per_round: dict[str, list[dict[str, Any]]] = {}
    try:
        base = {"plan": asdict(plan), "sizes": sizes, "heap": ns.heap}
        for kind in [k for _ in range(ns.rounds) for k in ns.only]:
            conf = dict(base)
            prefix: list[str] = []
            if kind in TCP_KINDS:
                conf["port"] = free_port(TCP_NODES)
            if kind in ("cpg", "vs"):
                if cs is None:
                    say("starting a private corosync (isolated network namespace)")
                    cs = tuned_corosync(workdir / "corosync", "knet", {})
                    cs.start()
                prefix = ["nsenter", "-t", str(cs.holder_pid), "--net", "--"]
                conf["group"] = f"bench-{kind}-{os.getpid()}"
            conf["mode"] = ns.vs_mode
            say(f"{kind}: {LABELS[kind]}")
            t0 = time.monotonic()
            res = Pair(kind, conf, workdir, prefix).run(600)
            res.pop("ev", None)
            res["seconds"] = time.monotonic() - t0
            per_round.setdefault(kind, []).append(res)
            for size in sizes:
                r, t = res["rtt"][str(size)], res["tput"][str(size)]
                say(
                    f"  {fmt_size(size):>7}: rtt p50 {r['p50_us']:8.1f} us "
                    f"p99 {r['p99_us']:8.1f} us"
                    f" | {t['msg_per_s']:9.0f} msg/s {t['mb_per_s']:8.1f} MB/s"
                )
        results["backends"] = {kind: median_of_rounds(rs) for kind, rs in per_round.items()}
        if cs is not None:
            results["corosync"]["runtime"] = totem_runtime(cs)
            cs.stop()
            cs = None
        if ns.sweep if ns.sweep is not None else not ns.quick:
            results["sweep"] = run_sweep(plan, workdir, 1 if ns.quick else 2)
    finally:
        if cs is not None:
            cs.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    results["ratios"] = ratios(results)
    results["framereader_mb_per_s"] = framereader_fresh()
    results["link_auth_cpu"] = link_auth_cpu(ns.quick)
    results["duration_s"] = time.monotonic() - started
    return results


def median_of_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One backend's result: per size and figure, the median over interleaved rounds.

    Why rounds: on a shared host the load drifts over a run; interleaving
    the backends and taking medians keeps a drift from landing on one of them.
    """
    merged = dict(rounds[0])
    for part in ("rtt", "tput"):
        merged[part] = {
            size: {name: statistics.median(r[part][size][name] for r in rounds) for name in figures}
            for size, figures in rounds[0][part].items()
        }
    merged["rounds"] = len(rounds)
    return merged


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    b = results["backends"]
    for kind, base in BASELINE_OF.items():
        if kind not in b or base not in b:
            continue
        rows = {}
        for size in results["sizes"]:
            s = str(size)
            rows[s] = {
                "rtt_p50": b[kind]["rtt"][s]["p50_us"] / b[base]["rtt"][s]["p50_us"],
                "rtt_p99": b[kind]["rtt"][s]["p99_us"] / b[base]["rtt"][s]["p99_us"],
                "tput": b[kind]["tput"][s]["msg_per_s"] / b[base]["tput"][s]["msg_per_s"],
            }
        out[f"{kind}/{base}"] = rows
    return out


def fmt_size(n: int) -> str:
    if n >= 1 << 20:
        return f"{n >> 20} MiB"
    if n >= 1024:
        return f"{n >> 10} KiB"
    return f"{n} B"


def write_summary(path: Path, results: dict[str, Any]) -> None:
    b = results["backends"]
    m = results["machine"]
    lines = [
        "# Transport benchmark (netpipe style)",
        "",
        f"`{results['command']}` on {m['cpus']} CPU(s) ({m['cpu']}), {m['corosync']}, "
        f"Python {m['python']}, uvloop {m['uvloop']}, load average {m['loadavg'][0]:.1f} at "
        f"start; {results['date']}, {results['rounds']} round(s), "
        f"{results['duration_s']:.0f} s{' (--quick)' if results['quick'] else ''}.",
        "",
        "Two processes per backend. RTT: A sends N bytes, B answers with N bytes. "
        "Throughput: A streams for a fixed time with `drain()`, B counts. "
        f"`vs` uses `{results['vs_mode']}` (one agreed-order CPG mcast per message, "
        "the other member filters it out); `cpg` is bare libcpg mcast ping-pong. "
        f"corosync: private, isolated netns, knet on 127.0.0.1, token {TOKEN_MS} ms. "
        + (
            "Every worker sets glibc's heap as ctdbd does (`ctdb.common.allocator`)."
            if results.get("heap") == "steady"
            else "glibc's heap left at its defaults (`--heap default`): large-frame "
            "figures then depend on heap layout by a factor of 3-5."
        ),
        "",
        "| backend | size | RTT p50 (us) | RTT p99 (us) | msg/s | MB/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind in KINDS:
        if kind not in b:
            continue
        for size in results["sizes"]:
            r, t = b[kind]["rtt"][str(size)], b[kind]["tput"][str(size)]
            lines.append(
                f"| {LABELS[kind]} | {fmt_size(size)} | {r['p50_us']:.1f} | {r['p99_us']:.1f} "
                f"| {t['msg_per_s']:,.0f} | {t['mb_per_s']:,.1f} |"
            )
    lines += [
        "",
        "## Ratios to the baselines (lower RTT ratio is better; throughput ratio higher)",
        "",
        "| ratio | size | RTT p50 | RTT p99 | throughput |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, rows in results["ratios"].items():
        for size in results["sizes"]:
            r = rows[str(size)]
            lines.append(
                f"| {name} | {fmt_size(size)} | {r['rtt_p50']:.2f}x | {r['rtt_p99']:.2f}x "
                f"| {r['tput']:.2f}x |"
            )
    lines += auth_summary(results)
    small = results["ratios"].get("tcp/raw", {})
    if small and "16" in small and "256" in small:
        worst = max(small[str(s)]["rtt_p50"] for s in (16, 256))
        verdict = "met" if worst <= 2.0 else "MISSED"
        lines += [
            "",
            f"Target tcp RTT <= 2x raw socket for small messages: **{verdict}** "
            f"(worst p50 ratio at 16/256 B: {worst:.2f}x).",
        ]
    if results.get("sweep"):
        lines += [
            "",
            "## corosync settings sweep (16 B round trip, fresh private corosync per row)",
            "",
            "| variant | bare CPG p50 | p99 | vs p50 | p99 | CPG self-delivery p50 | p99 |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in results["sweep"]:
            if "error" in row:
                lines.append(f"| {row['name']} | failed: {row['error'][-80:]!r} | | | | | |")
                continue
            lines.append(
                f"| {row['name']} | {row['cpg_p50_us']:.0f} | {row['cpg_p99_us']:.0f} "
                f"| {row['vs_p50_us']:.0f} | {row['vs_p99_us']:.0f} "
                f"| {row['self_p50_us']:.0f} | {row['self_p99_us']:.0f} |"
            )
        lines.append("")
        lines.append("(all in us; effective totem timers per row are in results.json)")
    lines += findings(results)
    path.write_text("\n".join(lines) + "\n")


def auth_summary(results: dict[str, Any]) -> list[str]:
    """What authenticating node links costs, from this run's ratios to plain tcp."""
    ratios = results["ratios"]
    key, mac = ratios.get("tcp-key/tcp"), ratios.get("tcp-mac/tcp")
    if not key and not mac:
        return []
    sizes = results["sizes"]
    out = ["", "## Authenticated node links (against plain tcp, same run)", ""]

    def row(name: str, r: dict[str, Any]) -> str:
        per_size = ", ".join(
            f"{fmt_size(s)} {r[str(s)]['rtt_p50']:.2f}x / {r[str(s)]['tput']:.2f}x" for s in sizes
        )
        return f"* {name}: RTT p50 / throughput ratio per size: {per_size}."

    if key:
        out.append(row("cluster key (handshake only; established links unchanged)", key))
    if mac and "16" in mac:
        verdict = "met" if mac["16"]["rtt_p50"] <= MAC_TARGET else "MISSED"
        out.append(row("frame MACs (`authenticate frames = yes`)", mac))
        out.append(
            f"* frame MACs, 16 B round trip: {mac['16']['rtt_p50']:.2f}x plain tcp "
            f"(target <= {MAC_TARGET:.2f}x: **{verdict}**)."
        )
    cpu = results.get("link_auth_cpu")
    if cpu:
        out.append(
            f"* CPU, in process: one handshake (both sides) {cpu['handshake_us']:.0f} us, once "
            f"per connection; one 16 B frame sealed and opened {cpu['frame_mac_16b_us']:.2f} us "
            "(a round trip seals and opens two frames)."
        )
    return out


def findings(results: dict[str, Any]) -> list[str]:
    """What the numbers of this run say (computed, not canned)."""
    b = results["backends"]
    out = ["", "## Findings (this run)", ""]
    if "tcp" in b and "raw" in b and "1048576" in b["tcp"]["rtt"]:
        r = results["ratios"]["tcp/raw"]["1048576"]
        out.append(
            f"* tcp vs raw socket at 1 MiB: RTT {r['rtt_p50']:.1f}x, throughput {r['tput']:.2f}x. "
            "The only per-byte difference between the two receive paths: "
            "`transport/framing.py` `FrameReader.feed` does "
            "`frames.append(bytes(buf[pos + 4 : pos + 4 + size]))`, two copies per frame "
            "(bytearray slice, then bytes); slicing a `memoryview(buf)` released before "
            "`del buf[:pos]` copies once. A/B in a fresh process, 64 KiB reads, MB/s: "
            + ", ".join(f"{k}: {v:,.0f}" for k, v in results["framereader_mb_per_s"].items())
            + ". The extra copy allocates a frame-sized bytearray per frame; its cost "
            "depends on malloc's mmap threshold (we saw 0.7-1.7 GB/s after some heap history), "
            "so it explains part, not necessarily all, of the 1 MiB gap."
        )
    if "vs" in b and "cpg" in b:
        v, c = b["vs"]["rtt"], b["cpg"]["rtt"]
        out.append(
            f"* vs 16 B RTT p50 {v['16']['p50_us']:.0f} us against bare CPG "
            f"{c['16']['p50_us']:.0f} us: the transport layer adds "
            f"{v['16']['p50_us'] - c['16']['p50_us']:.0f} us; the rest is corosync."
        )
    sweep = [r for r in results.get("sweep", []) if "error" not in r]
    crypto = [r for r in sweep if "crypto_cipher" in r["totem"]]
    knet = [r for r in sweep if r["transport"] == "knet" and r not in crypto]
    udpu = [r for r in sweep if r["transport"] == "udpu"]
    if knet and udpu:

        def med(rows: list[dict[str, Any]], key: str) -> float:
            return statistics.median(r[key] for r in rows)

        out.append(
            f"* corosync sweep, median over rows: knet self-delivery {med(knet, 'self_p50_us'):.0f}"
            f" us vs udpu {med(udpu, 'self_p50_us'):.0f} us; bare CPG RTT knet "
            f"{med(knet, 'cpg_p50_us'):.0f} us vs udpu {med(udpu, 'cpg_p50_us'):.0f} us; vs RTT "
            f"knet {med(knet, 'vs_p50_us'):.0f} us vs udpu {med(udpu, 'vs_p50_us'):.0f} us. "
            "Among knet rows, hold / seqno_unchanged_const / token / max_messages+window_size "
            "move the numbers only within run-to-run noise, so the token-hold timers are not "
            "the cause. knet vs udpu is the one setting that moves self-delivery clearly "
            "(knet passes every totem packet through its own threads even on one node; udpu "
            "sends to 127.0.0.1 from corosync's main loop). A ping-pong gains less than "
            "2x that, because each hop also wakes two client processes, which on a loaded "
            "2-CPU host costs as much as corosync itself."
        )
    plain = [r for r in knet if not r["totem"] and not r["extra_members"]]
    if crypto and plain:
        c, p = crypto[0], plain[0]
        out.append(
            f"* corosync's own crypto (aes256 + sha256, what `cluster up --transport vs` runs): "
            f"self-delivery {c['self_p50_us']:.0f} us vs {p['self_p50_us']:.0f} us without, "
            f"vs RTT {c['vs_p50_us']:.0f} us vs {p['vs_p50_us']:.0f} us "
            f"({c['vs_p50_us'] / p['vs_p50_us']:.2f}x)."
        )
    return out


def plot(path: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = results["backends"]
    sizes = results["sizes"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    styles = {
        "raw": "k--o",
        "tcp": "C0-o",
        "tcp-key": "C2-^",
        "tcp-mac": "C1-v",
        "cpg": "k:s",
        "vs": "C3-s",
    }
    for kind in KINDS:
        if kind not in b:
            continue
        p50 = [b[kind]["rtt"][str(s)]["p50_us"] for s in sizes]
        p99 = [b[kind]["rtt"][str(s)]["p99_us"] for s in sizes]
        (line,) = ax1.plot(sizes, p50, styles[kind], label=f"{LABELS[kind]} p50")
        ax1.fill_between(sizes, p50, p99, color=line.get_color(), alpha=0.12)
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log")
    ax1.set_xticks(sizes, [fmt_size(s) for s in sizes])
    ax1.set_xlabel("message size")
    ax1.set_ylabel("round trip (us), band = p50..p99")
    ax1.set_title("RTT vs message size")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)
    kinds = [k for k in KINDS if k in b]
    width = 0.8 / max(1, len(kinds))
    for i, kind in enumerate(kinds):
        xs = [j + (i - (len(kinds) - 1) / 2) * width for j in range(len(sizes))]
        ys = [b[kind]["tput"][str(s)]["mb_per_s"] for s in sizes]
        ax2.bar(
            xs,
            ys,
            width,
            label=LABELS[kind],
            color=styles[kind][:2]
            if kind not in ("raw", "cpg")
            else ("0.3" if kind == "raw" else "0.65"),
        )
    ax2.set_yscale("log")
    ax2.set_xticks(range(len(sizes)), [fmt_size(s) for s in sizes])
    ax2.set_xlabel("message size")
    ax2.set_ylabel("one-way throughput (MB/s)")
    ax2.set_title("streaming throughput (drain() back-pressure)")
    ax2.grid(True, axis="y", which="both", alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle(f"transports, {results['machine']['cpus']} CPUs, {results['date']}")
    report.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = report.parser("transports", __doc__)
    parser.add_argument("--quick", action="store_true", help="short budgets: whole run < 40 s")
    parser.add_argument(
        "--sweep",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="corosync totem-settings investigation (default: on, off with --quick)",
    )
    parser.add_argument(
        "--vs-mode",
        choices=["send", "broadcast"],
        default="send",
        help="vs ping-pong/stream with send(pnn) (default) or broadcast()",
    )
    parser.add_argument(
        "--only",
        type=lambda s: [k for k in KINDS if k in s.split(",")],
        default=KINDS,
        help="comma-separated subset of raw,tcp,cpg,vs (default: all)",
    )
    parser.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=SIZES,
        help="comma-separated message sizes in bytes (default: 16,256,4096,65536,1048576)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the backends this many times, interleaved; report per-figure medians",
    )
    parser.add_argument(
        "--heap",
        choices=["steady", "default"],
        default="steady",
        help="glibc heap settings of every worker: as ctdbd sets them (default), or glibc's "
        "own defaults, under which large-frame streams vary 3-5x with heap layout",
    )
    parser.add_argument("--worker", choices=[*KINDS, "idle"], help=argparse.SUPPRESS)
    parser.add_argument("--role", choices=["a", "b", "idle"], help=argparse.SUPPRESS)
    parser.add_argument("--conf", help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.worker is not None:
        if ns.role == "idle":
            import uvloop

            uvloop.run(idle_member(ns))
            return 0
        return worker_main(ns)
    if os.geteuid() != 0:
        parser.error("corosync CPG clients must be root (or allowed by uidgid)")

    results = run(ns)
    say(f"done in {results['duration_s']:.1f} s")
    report.write(ns.out, "transports", results, write_summary, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
