"""Live fuzzing: random and mutated frames at real daemons while a witness works.

    python -m tools.fuzz --target client --frames 100000 [--seed S] [--socket PATH]
    python -m tools.fuzz --target node --frames 100000 [--seed S]
                         [--socket PATH --address IP:PORT --pnn P]

Without `--socket` the fuzzer starts a cluster of its own on a random
loopback range (`--nodes`, default 1 for `client`, 2 for `node`) and stops
it at the end. Frames come from `tools.fuzzframes`: valid requests and node
messages of every kind, mutations of them, and noise, each with the verdict
the daemon's own decoders give it. The fuzzer checks that the daemon does
what that verdict says:

* client: every answerable request gets exactly one well-formed reply and
  the connection stays open; a frame that cannot be answered gets
  `[0, code, message]` and a hang-up; nothing waits forever. Some
  connections hang up with requests in flight, or mid-frame.
* node: the fuzzer is a node of the cluster (the last pnn of the nodes
  file, whose daemon is not running: `--pnn` when attaching). It declares
  itself STOPPED so recovery never waits for it, then sends bursts of
  frames the daemon must accept, ended by a ping it must answer, or by one
  frame it must refuse by cutting the link. (With authenticated node links
  the fuzzer holds the cluster key, `--key-file`: the decoder sits behind
  the handshake, so fuzzing it needs a node's credentials, or a daemon
  started without a key.)

Meanwhile a witness client writes and reads records (alternating nodes, so
records migrate) and persistent transactions. At the end the daemons must
be alive, the witness must never have failed, every acknowledged record
must read back unchanged, and no frame may have had another fate than its
verdict. Exit status 0 means all of that held. Progress goes to stderr every
few seconds; `--json FILE` writes the summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctdb.client import Client
from ctdb.common.config import tunable_default
from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol import client as protocol
from ctdb.protocol import message_codec, messages
from ctdb.storage.placement import db_id
from tools.cluster import LocalCluster
from tools.fuzzframes import ClientFrames, Frame, NodeFrames
from transport.framing import FrameReader, frame

#: How long a burst's replies may take: a fetch_lock may wait CallTimeout for
#: a record another fuzz connection holds.
REPLY_DEADLINE = 2 * tunable_default("CallTimeout") + 5
#: How long the daemon may take to cut a link or answer a ping.
LINK_DEADLINE = 10.0
PROGRESS_EVERY = 5.0


@dataclass
class Tally:
    """What happened, for the progress lines and the summary."""

    budget: int
    frames: int = 0
    started: float = field(default_factory=time.monotonic)
    hows: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    connections: int = 0
    hangups: int = 0
    link_drops: int = 0
    abandoned: int = 0
    problems: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)

    def count(self, sent: list[Frame]) -> None:
        self.frames += len(sent)
        for f in sent:
            self.hows[f.how.split(":")[0]] += 1

    def problem(self, text: str, frames: Sequence[Frame] = ()) -> None:
        """A frame met another fate than its verdict: keep the last frames to replay it."""
        detail = "; ".join(f"{f.how} {f.data[:80].hex()}" for f in frames[-3:])
        self.problems.append(f"{text} [{detail}]" if detail else text)
        print(f"fuzz: PROBLEM {text}", file=sys.stderr)

    @property
    def rate(self) -> float:
        return self.frames / max(time.monotonic() - self.started, 1e-9)

    def done(self) -> bool:
        return self.frames >= self.budget or bool(self.crashes)


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return str(code)


# -- the witness ------------------------------------------------------------------------------


class Witness(threading.Thread):
    """A well-behaved client: writes, reads back, commits; remembers what was acknowledged."""

    def __init__(self, sockets: list[str], volatile: str, persistent: str, seed: int) -> None:
        super().__init__(name="witness", daemon=True)
        self.sockets = sockets
        self.volatile = volatile
        self.persistent = persistent
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.acked: dict[bytes, bytes] = {}
        self.committed: dict[bytes, bytes] = {}
        self.ops = 0
        self.failures: list[str] = []

    def run(self) -> None:
        clients = [Client(s, timeout=60) for s in self.sockets]
        try:
            i = 0
            while not self.stop.is_set() and len(self.failures) < 10:
                i += 1
                try:
                    self._step(i, clients)
                except (CtdbError, OSError) as exc:
                    self.failures.append(f"op {i}: {exc}")
        finally:
            for c in clients:
                c.close()

    def _step(self, i: int, clients: list[Client]) -> None:
        key = f"w{i % 300}".encode()
        value = f"{i}:{self.rng.random()}".encode()
        clients[i % len(clients)].store(self.volatile, key, value)
        self.acked[key] = value
        probe = self.rng.choice(sorted(self.acked))
        got = clients[(i + 1) % len(clients)].fetch(self.volatile, probe)
        if got != self.acked[probe]:
            self.failures.append(f"op {i}: read {got!r} for {probe!r}, acked {self.acked[probe]!r}")
        if i % 10 == 0:
            clients[i % len(clients)].transact(self.persistent, {key: value})
            self.committed[key] = value
        self.ops += 3 if i % 10 == 0 else 2

    def verify(self) -> list[str]:
        """Every acknowledged record, read back on every node by a fresh client."""
        wrong = []
        for path in self.sockets:
            with Client(path, timeout=60) as c:
                for key, value in self.acked.items():
                    if c.fetch(self.volatile, key) != value:
                        wrong.append(f"{path}: volatile {key!r} changed")
                for key, value in self.committed.items():
                    if c.fetch(self.persistent, key) != value:
                        wrong.append(f"{path}: persistent {key!r} changed")
        return wrong


def setup_witness(sockets: list[str], seed: int) -> Witness:
    tag = f"{seed}_{random.randrange(1 << 30):x}"
    volatile, persistent = f"witness_v_{tag}", f"witness_p_{tag}"
    with Client(sockets[0], timeout=60) as c:
        c.attach(volatile)
        c.attach(persistent, "persistent")
    return Witness(sockets, volatile, persistent, seed)


# -- fuzzing the client socket -----------------------------------------------------------------


async def _client_burst(path: str, gen: ClientFrames, rng: random.Random, tally: Tally) -> None:
    """One connection: a hello (usually), a few bursts, each checked against its verdicts."""
    reader, writer = await asyncio.open_unix_connection(path)
    tally.connections += 1
    decoder = protocol.ReplyDecoder(64 * 1024 * 1024)
    try:
        reqid = 1
        greeted = rng.random() < 0.9
        if greeted:
            writer.write(protocol.encode_request(reqid, "hello", {"version": protocol.VERSION}))
            reqid += 1
            if not await _expect_replies(reader, decoder, Counter({1: 1}), False, [], tally):
                return
        for _ in range(rng.randint(1, 4)):
            sent: list[Frame] = []
            expected: Counter[int] = Counter()
            hangup = False
            for _ in range(rng.randint(1, 24)):
                f, verdict = gen.next(reqid)
                reqid += 1
                sent.append(f)
                if verdict.reqid is None:
                    hangup = True
                    break
                expected[verdict.reqid] += 1
            if not hangup and rng.random() < 0.03:
                sent.append(gen.broken_stream())
                hangup = True
            data = b"".join(f.data for f in sent)
            if rng.random() < 0.05:
                # half a frame, then gone: nothing may wait for the rest
                writer.write(data[: rng.randrange(1, len(data) + 1)])
                tally.count(sent[:-1])
                tally.abandoned += 1
                return
            for chunk in _split(rng, data):
                writer.write(chunk)
                await writer.drain()
            tally.count(sent)
            if rng.random() < 0.05:
                tally.abandoned += 1  # requests in flight, and the client vanishes
                return
            if not await _expect_replies(reader, decoder, expected, hangup, sent, tally):
                return
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _split(rng: random.Random, data: bytes) -> list[bytes]:
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(3)))
    points = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


async def _expect_replies(
    reader: asyncio.StreamReader,
    decoder: protocol.ReplyDecoder,
    expected: Counter[int],
    hangup: bool,
    sent: list[Frame],
    tally: Tally,
) -> bool:
    """Read until every expected reply came (and, for a hang-up, the connection closed).

    Returns whether the connection is still usable.
    """
    deadline = time.monotonic() + REPLY_DEADLINE
    outstanding = Counter(expected)
    got_fatal = False
    while True:
        if not hangup and not +outstanding:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            missing = f"replies {sorted(+outstanding)}" if +outstanding else "hang-up"
            tally.problem(f"no {missing} within {REPLY_DEADLINE:.0f}s", sent)
            return False
        try:
            data = await asyncio.wait_for(reader.read(65536), remaining)
        except TimeoutError:
            continue
        except ConnectionError:
            data = b""
        if not data:
            if not hangup:
                tally.problem("the daemon hung up on answerable requests", sent)
            elif not got_fatal:
                tally.problem("the daemon hung up without saying why", sent)
            else:
                tally.hangups += 1
            return False
        try:
            replies = decoder.feed(data)
        except CtdbError as exc:
            tally.problem(f"malformed reply from the daemon: {exc}", sent)
            return False
        for reply in replies:
            tally.codes[_code_name(reply.code) if reply.code else "OK"] += 1
            if reply.code and not isinstance(reply.result, str):
                tally.problem(f"error reply {reply.reqid} without a message", sent)
            if reply.reqid == 0 and reply.code:
                if not hangup:
                    tally.problem(f"fatal error on answerable requests: {reply.result}", sent)
                    return False
                got_fatal = True
            elif outstanding[reply.reqid] > 0:
                outstanding[reply.reqid] -= 1
            elif reply.reqid != protocol.EVENT_REQID:
                tally.problem(f"reply to request {reply.reqid} nobody sent", sent)


async def fuzz_client(
    path: str, nodes: list[str], protected: set[str | int], seed: int, tally: Tally
) -> None:
    with Client(path, timeout=60) as c:
        fuzz_db = f"fuzz_{seed}"
        c.attach(fuzz_db)

    async def worker(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        gen = ClientFrames(rng, nodes, fuzz_db, protected)
        while not tally.done():
            try:
                await _client_burst(path, gen, rng, tally)
            except (ConnectionError, FileNotFoundError) as exc:
                tally.crashes.append(f"cannot talk to the daemon: {exc}")

    await asyncio.gather(*(worker(n) for n in range(4)))


# -- fuzzing a node link ---------------------------------------------------------------------


class NodeLink:
    """The fuzzer as node `pnn`: the link to the daemon under test, and the daemons' links to it.

    The handshake is whatever `transport.tcp` speaks: with authenticated node
    links (`transport.linkauth`) the mutual challenge, with the key given;
    before them, the plain hello.
    """

    def __init__(self, nodes: list[str], pnn: int, port: int, key: bytes | None) -> None:
        self.nodes = nodes
        self.pnn = pnn
        self.port = port
        self.limits = message_codec.wire_limits(nodes)
        self.inbound: dict[int, int] = {}  # daemon pnn -> number of its connections so far
        self.inbound_changed = asyncio.Event()
        self.pongs: set[int] = set()
        self.pong = asyncio.Event()
        self.codes: Counter[str] = Counter()
        self.problems: list[str] = []
        self._server: asyncio.Server | None = None
        self._handlers: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        try:
            self._auth: Any = importlib.import_module("transport.linkauth")
            self._settings = self._auth.Settings(key=key, protocol=messages.NODE_PROTOCOL)
        except ImportError:
            self._auth = None

    async def listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.nodes[self.pnn], self.port, reuse_address=True
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await asyncio.sleep(0.1)  # connections accepted just now get their handler
        # let every handler see its connection end (a cancelled one gets logged)
        for writer in self._handlers.values():
            writer.close()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A daemon's connection to us: complete its handshake, then read what it sends."""
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        try:
            await self._serve(reader, writer)
        finally:
            del self._handlers[task]
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host = writer.get_extra_info("peername")[0]
        peer = self.nodes.index(host) if host in self.nodes else -1
        frames = FrameReader(256 * 1024 * 1024)
        hello = self._auth is None  # the plain hello comes as the first frame
        try:
            if self._auth is not None:
                side = self._auth.Responder(self._settings, self.pnn, peer)
                step = side.receive(b"")
                while step.session is None:
                    data = await reader.read(4096)
                    if not data:
                        return
                    try:
                        step = side.receive(data)
                    except Exception as exc:  # linkauth.HandshakeError: keys differ?
                        self.problems.append(f"node {peer}'s handshake failed: {exc}")
                        return
                    if step.send:
                        writer.write(step.send)
                rest = step.rest
            else:
                rest = b""
            self.inbound[peer] = self.inbound.get(peer, 0) + 1
            self.inbound_changed.set()
            data = rest
            while True:
                for payload in frames.feed(data):
                    if hello:
                        hello = False  # magic and pnn: nothing to check here
                        continue
                    if payload:
                        self._on_frame(peer, payload)
                data = await reader.read(65536)
                if not data:
                    return
        except (ConnectionError, OSError):
            return

    def _on_frame(self, peer: int, payload: bytes) -> None:
        try:
            msg = message_codec.decode(payload, self.limits, peer)
        except message_codec.DecodeError as exc:
            self.problems.append(f"node {peer} sent an invalid message: {exc}")
            return
        if isinstance(msg, messages.ControlReply):
            self.codes[_code_name(msg.code) if msg.code else "OK"] += 1
            if msg.reqid in self.pongs:
                self.pongs.discard(msg.reqid)
                self.pong.set()

    async def connect(self, target: int, first: bytes) -> tuple[Any, Any]:
        """Our link to `target`, with `first` (our NodeState) in the handshake's last write."""
        reader, writer = await asyncio.open_connection(
            self.nodes[target], self.port, local_addr=(self.nodes[self.pnn], 0)
        )
        if self._auth is not None:
            side = self._auth.Initiator(self._settings, self.pnn, target)
            writer.write(side.hello())
            step = side.receive(b"")
            while step.session is None:
                data = await reader.read(4096)
                if not data:
                    raise ConnectionError("the daemon refused our handshake")
                step = side.receive(data)
            writer.write(step.send + first)
        else:
            tcp: Any = importlib.import_module("transport.tcp")
            writer.write(frame(tcp._HELLO.pack(tcp._MAGIC, self.pnn)) + first)
        return reader, writer


async def _until(event: asyncio.Event, deadline: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), max(deadline - time.monotonic(), 0))
        return True
    except TimeoutError:
        return False


async def fuzz_node(
    link: NodeLink, target: int, protected: set[int], seed: int, tally: Tally
) -> None:
    rng = random.Random(seed)
    gen = NodeFrames(rng, link.nodes, link.pnn, protected)
    await link.listen()
    ping_ids = iter(range(1, 1 << 62))
    try:
        while not tally.done():
            seen = link.inbound.get(target, 0)
            try:
                reader, writer = await link.connect(target, gen.state())
            except (ConnectionError, OSError) as exc:
                tally.crashes.append(f"cannot connect to node {target}: {exc}")
                return
            tally.connections += 1
            # in the daemon's view once its own connection to us is (back) up
            deadline = time.monotonic() + LINK_DEADLINE
            while link.inbound.get(target, 0) <= seen:
                link.inbound_changed.clear()
                if not await _until(link.inbound_changed, deadline):
                    tally.problem(f"node {target} did not connect back to us")
                    break
            await _node_bursts(link, gen, rng, reader, writer, ping_ids, tally)
            writer.close()
    finally:
        await link.close()
        tally.problems.extend(link.problems)
        tally.codes.update(link.codes)


async def _node_bursts(
    link: NodeLink,
    gen: NodeFrames,
    rng: random.Random,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    ping_ids: Any,
    tally: Tally,
) -> None:
    """Bursts of accepted frames, each ended by a ping; then one refused frame.

    The ping is answered from a task, after the daemon read what follows it;
    so a refused frame goes out only once the ping's answer is in.
    """
    while not tally.done():
        sent = [gen.next(accepted=True) for _ in range(rng.randint(1, 24))]
        reqid = next(ping_ids)
        link.pongs.add(reqid)
        link.pong.clear()
        writer.write(b"".join(f.data for f in sent) + gen.ping(reqid))
        tally.count(sent)
        deadline = time.monotonic() + LINK_DEADLINE
        while reqid in link.pongs:
            link.pong.clear()
            if reqid not in link.pongs or not await _until(link.pong, deadline):
                break
        if reqid in link.pongs:
            link.pongs.discard(reqid)
            tally.problem("accepted frames were not answered (the ping got no reply)", sent)
            return
        if rng.random() < 0.5:
            continue
        refused = gen.next(accepted=False)
        writer.write(refused.data)
        tally.count([refused])
        try:
            closed = await asyncio.wait_for(reader.read(), LINK_DEADLINE) == b""
        except TimeoutError:
            closed = False
        except ConnectionError:
            closed = True
        if closed:
            tally.link_drops += 1
        else:
            tally.problem("a refused frame did not cut the link", [refused])
        return


# -- running a campaign ----------------------------------------------------------------------


async def _progress(tally: Tally, witness: Witness, cluster: LocalCluster | None) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY)
        if cluster is not None:
            for pnn in list(cluster.pids):
                if not cluster.alive(pnn):
                    tally.crashes.append(f"ctdbd node {pnn} died (see {cluster.log_path(pnn)})")
        print(
            f"fuzz: {tally.frames}/{tally.budget} frames, {tally.rate:.0f}/s, "
            f"{tally.connections} connections, witness {witness.ops} ops "
            f"{len(witness.failures)} failures, problems {len(tally.problems)}",
            file=sys.stderr,
            flush=True,
        )


async def _campaign(args: argparse.Namespace, tally: Tally) -> dict[str, Any]:
    cluster: LocalCluster | None = None
    workdir = None
    try:
        if args.socket:
            sockets = [args.socket]
            with Client(args.socket, timeout=60) as c:
                nodes = [n["address"] for n in c.call("listnodes")]
        else:
            workdir = tempfile.mkdtemp(prefix="ctdb-fuzz-")
            cluster = _start_cluster(args, Path(workdir))
            nodes = [cluster.address(p) for p in range(cluster.size)]
            sockets = [cluster.socket(p) for p in sorted(cluster.pids)]
        witness = setup_witness(sockets, args.seed)
        protected: set[str | int] = set()
        for name in (witness.volatile, witness.persistent):
            protected |= {name, db_id(name)}
        witness.start()
        tally.started = time.monotonic()
        progress = asyncio.create_task(_progress(tally, witness, cluster))
        try:
            if args.target == "client":
                await fuzz_client(sockets[0], nodes, protected, args.seed, tally)
            else:
                target, port, me = _node_identity(args, cluster, nodes)
                key = Path(args.key_file).read_bytes() if args.key_file else cluster_key(cluster)
                link = NodeLink(nodes, me, port, key)
                dbs = {p for p in protected if isinstance(p, int)}
                await fuzz_node(link, target, dbs, args.seed, tally)
        finally:
            progress.cancel()
            witness.stop.set()
            await asyncio.to_thread(witness.join, 120)
        return _finish(tally, witness, sockets, cluster)
    finally:
        if cluster is not None:
            cluster.down()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def _start_cluster(args: argparse.Namespace, directory: Path) -> LocalCluster:
    rng = random.Random()
    size = args.nodes + (1 if args.target == "node" else 0)  # the fuzzer's own slot
    cluster = LocalCluster(
        directory,
        size=size,
        port=rng.randint(20000, 60000),
        base=f"127.{rng.randint(10, 250)}.{rng.randint(0, 250)}",
        log_level="WARNING",  # a view change per cut link would flood INFO
    )
    cluster.write_configs()
    for pnn in range(args.nodes):
        cluster.start_node(pnn)
    print(f"fuzz: started {args.nodes} daemon(s) in {directory}", file=sys.stderr)
    cluster.wait_healthy(60, nodes=list(range(args.nodes)))
    return cluster


def cluster_key(cluster: LocalCluster | None) -> bytes | None:
    """The key a local cluster's node links prove, if it has one (`LocalCluster.key_path`).

    (Before authenticated node links a LocalCluster has none: `getattr`
    bridges the two until both are merged.)
    """
    path = getattr(cluster, "key_path", None)
    return path.read_bytes() if path is not None and path.exists() else None


def _node_identity(
    args: argparse.Namespace, cluster: LocalCluster | None, nodes: list[str]
) -> tuple[int, int, int]:
    """(the daemon under test, the node port, the pnn the fuzzer speaks as)."""
    if cluster is not None:
        return 0, cluster.port, cluster.size - 1
    host, _, port = args.address.partition(":")
    if host not in nodes:
        raise SystemExit(f"fuzz: {host} is not in the cluster's nodes list {nodes}")
    if args.pnn is None:
        raise SystemExit("fuzz: --pnn: which stopped node the fuzzer may speak as")
    return nodes.index(host), int(port or 4379), args.pnn


def _finish(
    tally: Tally, witness: Witness, sockets: list[str], cluster: LocalCluster | None
) -> dict[str, Any]:
    elapsed = time.monotonic() - tally.started  # the fuzzing itself, not the set-up
    wrong: list[str] = []
    stats: list[dict[str, Any]] = []
    try:
        wrong = witness.verify()
        for path in sockets:
            with Client(path, timeout=30) as c:
                c.call("status")
                stats.append(c.call("statistics"))
    except (CtdbError, OSError) as exc:
        tally.crashes.append(f"daemon not answering after the campaign: {exc}")
    if cluster is not None:
        for pnn in list(cluster.pids):
            if not cluster.alive(pnn):
                tally.crashes.append(f"ctdbd node {pnn} died")
    return {
        "frames": tally.frames,
        "seconds": round(elapsed, 1),
        "frames_per_second": round(tally.frames / max(elapsed, 1e-9)),
        "frame_kinds": dict(tally.hows),
        "reply_codes": dict(tally.codes),
        "connections": tally.connections,
        "hangups": tally.hangups,
        "link_drops": tally.link_drops,
        "abandoned_connections": tally.abandoned,
        "bad_messages_counted_by_daemons": [s.get("bad_messages", 0) for s in stats],
        "witness_ops": witness.ops,
        "witness_failures": witness.failures,
        "acknowledged_records": len(witness.acked) + len(witness.committed),
        "changed_records": wrong,
        "problems": tally.problems,
        "crashes": tally.crashes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.fuzz", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--target", choices=["client", "node"], required=True)
    parser.add_argument("--frames", type=int, default=10_000, help="how many frames to send")
    parser.add_argument("--seed", type=int, default=0, help="frames are reproducible by seed")
    parser.add_argument("--nodes", type=int, help="daemons to start (client: 1, node: 2)")
    parser.add_argument("--socket", help="attach: a running daemon's socket (the witness's too)")
    parser.add_argument("--address", help="node target, attaching: IP[:PORT] of the daemon")
    parser.add_argument("--pnn", type=int, help="node target, attaching: the pnn to speak as")
    parser.add_argument("--key-file", help="node target: the cluster key, if links need one")
    parser.add_argument("--json", type=Path, help="write the summary here")
    args = parser.parse_args(argv)
    if args.nodes is None:
        args.nodes = 1 if args.target == "client" else 2
    if args.target == "node" and args.socket and not args.address:
        parser.error("--target node with --socket needs --address (and --pnn)")
    tally = Tally(args.frames)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # so the daemons we started are stopped

    signal.signal(signal.SIGTERM, interrupted)
    summary = asyncio.run(_campaign(args, tally))
    summary = {"target": args.target, "seed": args.seed, **summary}
    text = json.dumps(summary, indent=2, sort_keys=True)
    if args.json:
        args.json.write_text(text + "\n")
    codes = ", ".join(f"{k} {v}" for k, v in sorted(summary["reply_codes"].items()))
    print(
        f"fuzz: {summary['frames']} frames in {summary['seconds']}s "
        f"({summary['frames_per_second']}/s); reply codes: {codes}; "
        f"link drops {summary['link_drops']}; witness {summary['witness_ops']} ops, "
        f"{len(summary['witness_failures'])} failures; "
        f"{summary['acknowledged_records']} acknowledged records, "
        f"{len(summary['changed_records'])} changed; problems {len(summary['problems'])}; "
        f"crashes {len(summary['crashes'])}"
    )
    failed = (
        summary["problems"]
        or summary["crashes"]
        or summary["witness_failures"]
        or summary["changed_records"]
    )
    if failed:
        print(text, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
