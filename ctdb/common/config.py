"""Daemon configuration: an INI file plus run-time tunables.

The file names the transport, the nodes file, this node's address and where
state lives; everything else has a default a single-host user would expect.
Tunables are the knobs `ctdbtool listvars/getvar/setvar` expose, with CTDB's
names.
"""

from __future__ import annotations

import configparser
import math
from dataclasses import dataclass, field
from pathlib import Path

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.common.keyfile import load_key

DEFAULT_PORT = 4379
SOCKET_NAME = "ctdbd.socket"
#: CTDB's own client protocol (Samba's `ctdb` tool, smbd): a second socket.
CTDB_SOCKET_NAME = "ctdb.socket"


@dataclass(frozen=True)
class Tunable:
    """A run-time knob: its default, the range `setvar` accepts, and what it does.

    Ranges exist because a tunable is an admin's input like any other:
    `KeepaliveInterval = 0` would make every node drop every peer at once (a
    cluster-wide outage from one command), and a size limit above what the
    transport carries would accept records no node can pass on. The upper
    bounds of the size tunables are also the limits every node checks node
    messages against (see `WIRE_SIZES`), so whatever one node accepts from a
    client, every other node accepts from that node.
    """

    default: float
    lo: float
    hi: float
    description: str

    @property
    def integral(self) -> bool:
        return isinstance(self.default, int)


MiB = 1024 * 1024

#: Integers unless the default is a float.
TUNABLES: dict[str, Tunable] = {
    "KeepaliveInterval": Tunable(
        1.0, 0.05, 3600.0, "seconds between keepalives on an idle node link"
    ),
    "KeepaliveLimit": Tunable(
        5, 3, 1000, "missed keepalive intervals before a node is DISCONNECTED"
    ),
    "RecoverTimeout": Tunable(
        5.0, 0.1, 3600.0, "seconds a recovery step may take before it is restarted"
    ),
    "RecoveryBanPeriod": Tunable(
        30, 1, 365 * 86400, "seconds a node is banned for when it fails recoveries"
    ),
    "MaxFrameSize": Tunable(16 * MiB, 1024, 256 * MiB, "largest client frame accepted, in bytes"),
    "MaxKeySize": Tunable(64 * 1024, 1, 1 * MiB, "largest record key accepted, in bytes"),
    "MaxValueSize": Tunable(8 * MiB, 0, 64 * MiB, "largest record value accepted, in bytes"),
    "CallTimeout": Tunable(
        10.0, 0.1, 3600.0, "seconds a remote record fetch may take before failing"
    ),
    "LocalReads": Tunable(
        0,
        0,
        1,
        "vs transport: 1 reads the local replica without an ordering barrier "
        "(faster, may miss a write acknowledged on another node a moment ago)",
    ),
    "StableVolatileWrites": Tunable(
        0,
        0,
        1,
        "vs transport: 1 acknowledges a volatile write only once every member applied it, "
        "so it survives the loss of its node (one more broadcast round); 0 loses it with "
        "its node, as CTDB and the tcp engine do",
    ),
    "WaitForQuorum": Tunable(
        1, 0, 1, "1: requests wait during recovery / without quorum; 0: fail at once"
    ),
    "MaxLockWaiters": Tunable(
        1000,
        1,
        1_000_000,
        "requests that may wait for one locked record; one more fails with BUSY",
    ),
    "VacuumInterval": Tunable(
        10.0, 0.05, 86400.0, "seconds between rounds that remove deletion markers"
    ),
    "StickyPindown": Tunable(
        0,
        0,
        400,
        "tcp: milliseconds (as CTDB's) a record migrated to this node for its clients "
        "stays before another node's call takes it (0: handed on once a client has had it)",
    ),
}

#: The size limits node messages are checked against: the largest value any
#: node may set. Every node checks alike (a vs broadcast is accepted or dropped
#: by every member), whatever each one's own tunables are.
WIRE_SIZES: dict[str, float] = {
    name: TUNABLES[name].hi for name in ("MaxFrameSize", "MaxKeySize", "MaxValueSize")
}

#: Entry lists (ctdb.storage.entries), bounds fixed by the format: at most
#: this many entries in one record (no open file has more opens nor
#: byte-range locks in practice, and it bounds the work of every condition)...
MAX_ENTRIES = 1024
#: ... and this many bytes in one entry's payload.
MAX_ENTRY_PAYLOAD = 4096


def tunable_default(name: str) -> float:
    return TUNABLES[name].default


def tunable_defaults() -> dict[str, float]:
    return {name: t.default for name, t in TUNABLES.items()}


@dataclass
class Config:
    nodes: list[str]
    pnn: int
    nodes_file: Path
    state_dir: Path
    run_dir: Path
    transport: str = "tcp"
    port: int = DEFAULT_PORT
    log_level: str = "INFO"
    log_file: Path | None = None
    cluster_lock: Path | None = None
    socket_mode: int = 0o600
    #: `[server] ctdb socket`: where CTDB's own protocol is served (default: in run dir)
    ctdb_socket: Path | None = None
    #: `[cluster] key file` and the key in it (None: node links are unauthenticated).
    key_file: Path | None = None
    cluster_key: bytes | None = None
    authenticate_frames: bool = False
    transport_extra: dict[str, str] = field(default_factory=dict)
    tunables: dict[str, float] = field(default_factory=dict)

    @property
    def socket_path(self) -> Path:
        return self.run_dir / SOCKET_NAME

    @property
    def ctdb_socket_path(self) -> Path:
        return self.ctdb_socket or self.run_dir / CTDB_SOCKET_NAME

    @property
    def address(self) -> str:
        return self.nodes[self.pnn]


def read_nodes(path: Path) -> list[str]:
    """One address per line; blank lines and `#` comments are skipped. pnn = position."""
    try:
        text = path.read_text()
    except OSError as exc:
        message = f"cannot read nodes file {path}: {exc.strerror}"
        raise CtdbError(ErrorCode.NOT_FOUND, message) from exc
    nodes = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            nodes.append(line)
    if not nodes:
        raise CtdbError(ErrorCode.INVALID, f"nodes file {path} lists no nodes")
    return nodes


def load(path: Path) -> Config:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep tunable case
    try:
        with open(path) as fh:
            parser.read_file(fh)
    except OSError as exc:
        raise CtdbError(ErrorCode.NOT_FOUND, f"cannot read config {path}: {exc.strerror}") from exc
    except configparser.Error as exc:
        raise CtdbError(ErrorCode.INVALID, f"config {path}: {exc}") from exc
    base = path.parent

    def get(section: str, key: str, default: str | None = None) -> str | None:
        return parser.get(section, key, fallback=default)

    def rel(value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else base / p

    nodes_file = get("cluster", "nodes", "nodes")
    assert nodes_file is not None
    nodes = read_nodes(rel(nodes_file))
    address = get("cluster", "address")
    if address is None:
        raise CtdbError(ErrorCode.INVALID, f"config {path}: [cluster] address is required")
    if address not in nodes:
        raise CtdbError(ErrorCode.INVALID, f"address {address} is not in nodes file {nodes_file}")
    tunables = {}
    if parser.has_section("tunables"):
        for name, value in parser.items("tunables"):
            tunables[name] = parse_tunable(name, value)
    extra = dict(parser.items("transport")) if parser.has_section("transport") else {}
    lock = get("cluster", "cluster lock")
    log_file = get("logging", "file")
    try:
        port = int(get("cluster", "port", str(DEFAULT_PORT)) or DEFAULT_PORT)
        mode = int(get("server", "socket mode", "0600") or "0600", 8)
        authenticate_frames = parser.getboolean("cluster", "authenticate frames", fallback=False)
    except ValueError as exc:
        raise CtdbError(ErrorCode.INVALID, f"config {path}: {exc}") from exc
    ctdb_socket = get("server", "ctdb socket")
    key_option = get("cluster", "key file")
    key_file = rel(key_option) if key_option else None
    if authenticate_frames and key_file is None:
        raise CtdbError(
            ErrorCode.INVALID, f"config {path}: [cluster] authenticate frames needs a key file"
        )
    return Config(
        nodes=nodes,
        pnn=nodes.index(address),
        nodes_file=rel(nodes_file),
        state_dir=rel(get("database", "state dir", "state") or "state"),
        run_dir=rel(get("server", "run dir", "run") or "run"),
        transport=get("cluster", "transport", "tcp") or "tcp",
        port=port,
        log_level=(get("logging", "level", "INFO") or "INFO").upper(),
        log_file=rel(log_file) if log_file else None,
        cluster_lock=rel(lock) if lock else None,
        socket_mode=mode,
        ctdb_socket=rel(ctdb_socket) if ctdb_socket else None,
        key_file=key_file,
        cluster_key=load_key(key_file) if key_file else None,
        authenticate_frames=authenticate_frames,
        transport_extra=extra,
        tunables=tunables,
    )


def parse_tunable(name: str, value: object) -> float:
    """A tunable's value from `setvar` or the config file, checked against its range."""
    tunable = TUNABLES.get(name) if isinstance(name, str) else None
    if tunable is None:
        raise CtdbError(ErrorCode.NOT_FOUND, f"unknown tunable {name!r}")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise CtdbError(ErrorCode.INVALID, f"tunable {name} needs a number, got {value!r}")
    try:
        number = int(str(value)) if tunable.integral else float(str(value))
    except ValueError:
        message = f"tunable {name} needs {'a whole' if tunable.integral else 'a'} number"
        raise CtdbError(ErrorCode.INVALID, f"{message}, got {value!r}") from None
    if not math.isfinite(number) or not tunable.lo <= number <= tunable.hi:
        raise CtdbError(
            ErrorCode.INVALID,
            f"tunable {name} must be between {tunable.lo:g} and {tunable.hi:g}, got {value!r}",
        )
    return number
