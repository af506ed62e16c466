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

from ctdb.errors import CtdbError, ErrorCode
from ctdb.keyfile import load_key

DEFAULT_PORT = 4379
SOCKET_NAME = "ctdbd.socket"

#: name -> (default, description). Integers unless the default is a float.
TUNABLES: dict[str, tuple[float, str]] = {
    "KeepaliveInterval": (1.0, "seconds between keepalives on an idle node link"),
    "KeepaliveLimit": (5, "missed keepalive intervals before a node is DISCONNECTED"),
    "RecoverTimeout": (5.0, "seconds a recovery step may take before it is restarted"),
    "RecoveryBanPeriod": (30, "seconds a node is banned for when it fails recoveries"),
    "MaxFrameSize": (16 * 1024 * 1024, "largest client frame accepted, in bytes"),
    "MaxKeySize": (64 * 1024, "largest record key accepted, in bytes"),
    "MaxValueSize": (8 * 1024 * 1024, "largest record value accepted, in bytes"),
    "CallTimeout": (10.0, "seconds a remote record fetch may take before failing"),
    "LocalReads": (
        0,
        "vs transport: 1 reads the local replica without an ordering barrier "
        "(faster, may miss a write acknowledged on another node a moment ago)",
    ),
    "WaitForQuorum": (1, "1: requests wait during recovery / without quorum; 0: fail at once"),
    "VacuumInterval": (10.0, "seconds between rounds that remove deletion markers"),
}


def tunable_default(name: str) -> float:
    return TUNABLES[name][0]


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
        key_file=key_file,
        cluster_key=load_key(key_file) if key_file else None,
        authenticate_frames=authenticate_frames,
        transport_extra=extra,
        tunables=tunables,
    )


def parse_tunable(name: str, value: object) -> float:
    if name not in TUNABLES:
        raise CtdbError(ErrorCode.NOT_FOUND, f"unknown tunable {name!r}")
    default = TUNABLES[name][0]
    try:
        number = float(str(value)) if isinstance(default, float) else int(str(value))
    except (TypeError, ValueError):
        message = f"tunable {name} needs a number, got {value!r}"
        raise CtdbError(ErrorCode.INVALID, message) from None
    if not math.isfinite(number) or number < 0:
        raise CtdbError(ErrorCode.INVALID, f"tunable {name} must be a finite, non-negative number")
    return number
