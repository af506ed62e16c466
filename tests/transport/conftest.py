"""Harness for the transport conformance suite.

Every test gets a `Cluster` for one backend and talks to its members through
one interface (`Member`), whether a member is a transport in this process
(memory: the network lives in-process) or a separate `member.py` process (tcp,
vs: a failure must be a real SIGKILL). Tests are plain functions that call
`asyncio.run`; the fixture's finalizer kills by PID whatever a failing test
left behind.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.transport.member import Event, Recorder, execute
from tools.cluster import free_port
from transport.base import Capabilities, TransportOptions, transport_class
from transport.memory import MemoryTransport
from transport.memory_network import MemoryNetwork

REPO = Path(__file__).resolve().parents[2]
MEMBER = Path(__file__).resolve().with_name("member.py")
PYTHON = sys.executable
BACKENDS = ["memory", "memory-vs", "tcp", "vs"]
_ids = itertools.count(1)


async def wait_until(pred: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    """Poll `pred` until true; fail with `what()` (a diagnosis) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {what()}")
        await asyncio.sleep(0.005)


class Member:
    """One cluster member as the tests see it."""

    pnn: int
    events: list[Event]

    def views(self) -> list[Event]:
        return [e for e in self.events if e["ev"] == "view"]

    def last_members(self) -> list[int] | None:
        views = self.views()
        return views[-1]["members"] if views else None

    def msgs(self, src: int | None = None, prefix: str | None = None) -> list[Event]:
        return [
            e
            for e in self.events
            if e["ev"] == "msg"
            and (src is None or e["src"] == src)
            and (prefix is None or e["label"].split(":")[0] == prefix)
        ]

    async def command(self, cmd: dict[str, Any], *, wait: bool = True) -> dict[str, Any]:
        raise NotImplementedError

    async def kill(self) -> None:
        raise NotImplementedError

    def hold(self) -> None:
        """Stop the member's process (SIGSTOP): what is sent to it waits, unread."""
        raise NotImplementedError

    def release(self) -> None:
        """Let a held member go on (SIGCONT)."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class LocalMember(Member):
    """A transport running in the test's own event loop (memory backend)."""

    def __init__(self, transport: MemoryTransport) -> None:
        self.pnn = transport.pnn
        self.transport = transport
        self.events = []
        Recorder(transport, self.events.append)
        self._tasks: set[asyncio.Task[dict[str, Any]]] = set()

    async def command(self, cmd: dict[str, Any], *, wait: bool = True) -> dict[str, Any]:
        net = self.transport.network
        coro = execute(self.transport, cmd, pending=lambda: net.pending_bytes(self.pnn))
        if wait:
            return await coro
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return {}

    async def kill(self) -> None:
        self.transport.network.crash(self.pnn)
        await self._cancel()

    def hold(self) -> None:
        """Nothing to stop: an in-process member's deliveries run on the test's
        own loop (the memory network's sequencer orders sends by construction)."""

    def release(self) -> None:
        """See `hold`."""

    async def _cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        await self._cancel()
        await self.transport.stop()


class ProcessMember(Member):
    """A `member.py` process; events arrive as JSON lines on its stdout."""

    def __init__(self, pnn: int, proc: asyncio.subprocess.Process, stderr: Path) -> None:
        self.pnn = pnn
        self.proc = proc
        self.stderr = stderr
        self.events = []
        self._done: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def spawn(cls, pnn: int, argv: list[str], stderr: Path) -> ProcessMember:
        """Start a member process (`member.py` or a command wrapping it) from the repo."""
        with open(stderr, "wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                cwd=REPO,
                limit=1 << 20,
            )
        return cls(pnn, proc, stderr)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            event = json.loads(line)
            if event["ev"] in ("done", "error"):
                fut = self._done.pop(event["id"], None)
                if fut is not None and not fut.done():
                    if event["ev"] == "error":
                        fut.set_exception(RuntimeError(f"member {self.pnn}: {event['error']}"))
                    else:
                        fut.set_result(event)
                continue
            self.events.append(event)
        for fut in self._done.values():
            if not fut.done():
                fut.set_exception(RuntimeError(f"member {self.pnn} exited: {self.tail()}"))

    def tail(self) -> str:
        try:
            return self.stderr.read_text()[-2000:]
        except OSError:
            return ""

    async def ready(self, timeout: float) -> None:
        await wait_until(
            lambda: any(e["ev"] == "ready" for e in self.events) or self._reader.done(),
            timeout,
            lambda: f"member {self.pnn} to start; stderr: {self.tail()}",
        )
        if not any(e["ev"] == "ready" for e in self.events):
            raise AssertionError(f"member {self.pnn} died at start: {self.tail()}")

    async def command(self, cmd: dict[str, Any], *, wait: bool = True) -> dict[str, Any]:
        assert self.proc.stdin is not None
        cid = next(_ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._done[cid] = fut
        self.proc.stdin.write((json.dumps({**cmd, "id": cid}) + "\n").encode())
        await self.proc.stdin.drain()
        if not wait:
            return {}
        return await asyncio.wait_for(fut, 120)

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    def hold(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def release(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGCONT)

    async def close(self) -> None:
        if self.proc.returncode is None and self.proc.stdin is not None:
            try:
                self.proc.stdin.write(b'{"cmd": "stop"}\n')
                await self.proc.stdin.drain()
                await asyncio.wait_for(self.proc.wait(), 5)
            except (TimeoutError, ConnectionError, BrokenPipeError):
                pass
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        await asyncio.gather(self._reader, return_exceptions=True)


@dataclass
class Cluster:
    """The members of one test's cluster, on one backend."""

    backend: str
    tmp: Path
    corosync: Any = None
    capabilities: Capabilities = field(init=False)
    members: list[Member] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    network: MemoryNetwork | None = None
    _net_name: str = ""

    def __post_init__(self) -> None:
        if self.backend.startswith("memory"):
            self.network = MemoryNetwork(total_order=self.backend == "memory-vs", seed=1)
            self._net_name = f"conformance-{os.getpid()}-{next(_ids)}"
            self.network.register(self._net_name)
            self.capabilities = self.network.capabilities
        else:
            # Import here, unguarded: a backend that fails to import fails the test.
            cls = transport_class("vs" if self.backend == "vs" else "tcp")
            self.capabilities = cls.capabilities

    def require(self, guarantee: str) -> None:
        """Skip unless the backend claims `guarantee` (a `Capabilities` field)."""
        if not getattr(self.capabilities, guarantee):
            pytest.skip(
                f"{self.backend} does not claim {guarantee} (capabilities: {self.capabilities})"
            )

    async def start(self, n: int, keepalive: float = 0.2) -> list[Member]:
        """`n` members; a process member expels a peer silent for 5 x `keepalive` s."""
        if self.network is not None:
            nodes = [f"mem{i}" for i in range(n)]
            for pnn in range(n):
                t = MemoryTransport(pnn, nodes, TransportOptions(extra={"network": self._net_name}))
                self.members.append(LocalMember(t))
                await t.start()
            return self.members
        nodes = [f"127.0.0.{i + 1}" for i in range(n)]
        port = free_port(nodes) if self.backend == "tcp" else 0
        group = f"conf{os.getpid()}x{next(_ids)}"
        for pnn in range(n):
            argv = [
                PYTHON,
                str(MEMBER),
                "--transport",
                "vs" if self.backend == "vs" else "tcp",
                "--pnn",
                str(pnn),
                "--nodes",
                ",".join(nodes),
                "--port",
                str(port),
                "--keepalive",
                str(keepalive),
                "--extra",
                f"group={group}",
            ]
            if self.corosync is not None and self.corosync.isolate:
                argv = ["nsenter", "-t", str(self.corosync.holder_pid), "--net", "--", *argv]
            spawned = await ProcessMember.spawn(pnn, argv, self.tmp / f"member{pnn}.stderr")
            self.pids.append(spawned.proc.pid)
            self.members.append(spawned)
        for member in self.members:
            assert isinstance(member, ProcessMember)
            await member.ready(30)
        return self.members

    async def aclose(self) -> None:
        await asyncio.gather(*(m.close() for m in self.members), return_exceptions=True)

    def cleanup(self) -> None:
        """Last resort after a failure: SIGKILL leftover members by PID."""
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        if self.pids and self.backend == "vs":
            from transport.corosync import cleanup_stale_shm

            cleanup_stale_shm(self.pids)
        if self._net_name:
            MemoryNetwork.unregister(self._net_name)


@pytest.fixture(scope="session")
def private_corosync(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One corosync for all vs tests, in its own namespace so it disturbs nothing."""
    from transport.corosync import PrivateCorosync

    if shutil.which("corosync") is None and not Path("/usr/sbin/corosync").exists():
        pytest.skip("corosync is not installed (Debian package corosync)")
    directory = tmp_path_factory.mktemp("corosync")
    daemon = PrivateCorosync(directory, isolate=True, token_ms=300)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(params=BACKENDS)
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    backend: str = request.param
    corosync = request.getfixturevalue("private_corosync") if backend == "vs" else None
    c = Cluster(backend, tmp_path, corosync)
    try:
        yield c
    finally:
        c.cleanup()
