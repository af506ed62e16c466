"""Config file and tunable parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctdb.common import config
from ctdb.common.errors import CtdbError, ErrorCode

NODES = "127.0.0.1\n# a comment\n\n127.0.0.2  # trailing comment\n127.0.0.3\n"


def write(tmp_path: Path, text: str, nodes: str | None = NODES) -> Path:
    if nodes is not None:
        (tmp_path / "nodes").write_text(nodes)
    path = tmp_path / "ctdb.conf"
    path.write_text(text)
    return path


def load_error(path: Path) -> CtdbError:
    with pytest.raises(CtdbError) as info:
        config.load(path)
    return info.value


def test_full_config(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[cluster]
transport = vs
nodes = nodes
address = 127.0.0.2
port = 5555
cluster lock = lockfile
[database]
state dir = /var/lib/x
[server]
run dir = run
socket mode = 0660
ctdb socket = samba/ctdbd.socket
[logging]
level = debug
file = log/ctdbd.log
[transport]
group = g1
[tunables]
KeepaliveInterval = 0.5
MaxKeySize = 1024
""",
    )
    cfg = config.load(path)
    assert cfg.nodes == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    assert cfg.pnn == 1
    assert cfg.address == "127.0.0.2"
    assert cfg.transport == "vs"
    assert cfg.port == 5555
    assert cfg.state_dir == Path("/var/lib/x")
    assert cfg.run_dir == tmp_path / "run"  # relative to the config file
    assert cfg.socket_path == tmp_path / "run" / config.SOCKET_NAME
    assert cfg.socket_mode == 0o660
    assert cfg.ctdb_socket_path == tmp_path / "samba" / "ctdbd.socket"
    assert cfg.log_level == "DEBUG"
    assert cfg.log_file == tmp_path / "log" / "ctdbd.log"
    assert cfg.cluster_lock == tmp_path / "lockfile"
    assert cfg.transport_extra == {"group": "g1"}
    assert cfg.tunables == {"KeepaliveInterval": 0.5, "MaxKeySize": 1024}
    assert isinstance(cfg.tunables["MaxKeySize"], int)


def test_minimal_config_defaults(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, "[cluster]\naddress = 127.0.0.3\n"))
    assert cfg.pnn == 2
    assert cfg.transport == "tcp"
    assert cfg.port == config.DEFAULT_PORT
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.run_dir == tmp_path / "run"
    assert cfg.ctdb_socket_path == tmp_path / "run" / config.CTDB_SOCKET_NAME
    assert cfg.log_file is None and cfg.cluster_lock is None
    assert cfg.tunables == {}
    assert cfg.socket_mode == 0o600


def test_missing_address(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "[cluster]\nnodes = nodes\n"))
    assert err.code == ErrorCode.INVALID
    assert "address" in err.message and "required" in err.message


def test_missing_cluster_section(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "[database]\nstate dir = s\n"))
    assert err.code == ErrorCode.INVALID
    assert "address" in err.message


def test_address_not_in_nodes(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "[cluster]\naddress = 10.9.9.9\n"))
    assert err.code == ErrorCode.INVALID
    assert "10.9.9.9" in err.message and "nodes" in err.message


def test_commented_out_address_is_not_a_node(tmp_path: Path) -> None:
    err = load_error(
        write(tmp_path, "[cluster]\naddress = 127.0.0.9\n", nodes="127.0.0.1\n# 127.0.0.9\n")
    )
    assert "127.0.0.9" in err.message


def test_missing_nodes_file(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "[cluster]\nnodes = nope\naddress = a\n", nodes=None))
    assert err.code == ErrorCode.NOT_FOUND
    assert "nodes file" in err.message and "nope" in err.message


def test_empty_nodes_file(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "[cluster]\naddress = a\n", nodes="# nobody\n\n"))
    assert err.code == ErrorCode.INVALID
    assert "lists no nodes" in err.message


def test_missing_config_file(tmp_path: Path) -> None:
    err = load_error(tmp_path / "absent.conf")
    assert err.code == ErrorCode.NOT_FOUND
    assert "absent.conf" in err.message


def test_unparseable_ini(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "this is not ini\n"))
    assert err.code == ErrorCode.INVALID
    assert "ctdb.conf" in err.message


def test_unknown_tunable(tmp_path: Path) -> None:
    err = load_error(
        write(tmp_path, "[cluster]\naddress = 127.0.0.1\n[tunables]\nNoSuchThing = 1\n")
    )
    assert err.code == ErrorCode.NOT_FOUND
    assert "NoSuchThing" in err.message and "unknown tunable" in err.message


def test_tunable_names_are_case_sensitive(tmp_path: Path) -> None:
    err = load_error(
        write(tmp_path, "[cluster]\naddress = 127.0.0.1\n[tunables]\nmaxkeysize = 1\n")
    )
    assert "maxkeysize" in err.message


@pytest.mark.parametrize(
    "line",
    ["MaxKeySize = lots", "MaxKeySize = 1.5", "KeepaliveInterval = soon", "MaxKeySize ="],
)
def test_bad_tunable_number(tmp_path: Path, line: str) -> None:
    name = line.split()[0]
    err = load_error(write(tmp_path, f"[cluster]\naddress = 127.0.0.1\n[tunables]\n{line}\n"))
    assert err.code == ErrorCode.INVALID
    assert name in err.message and "number" in err.message


def test_negative_tunable(tmp_path: Path) -> None:
    err = load_error(
        write(tmp_path, "[cluster]\naddress = 127.0.0.1\n[tunables]\nCallTimeout = -1\n")
    )
    assert err.code == ErrorCode.INVALID
    assert "CallTimeout" in err.message and "between 0.1 and 3600" in err.message


@pytest.mark.parametrize("line", ["port = http", "port = 43.5"])
def test_bad_port(tmp_path: Path, line: str) -> None:
    err = load_error(write(tmp_path, f"[cluster]\naddress = 127.0.0.1\n{line}\n"))
    assert err.code == ErrorCode.INVALID
    assert "ctdb.conf" in err.message


def test_bad_socket_mode(tmp_path: Path) -> None:
    err = load_error(
        write(tmp_path, "[cluster]\naddress = 127.0.0.1\n[server]\nsocket mode = 999\n")
    )
    assert err.code == ErrorCode.INVALID


def test_parse_tunable_directly() -> None:
    assert config.parse_tunable("CallTimeout", "2.5") == 2.5
    assert config.parse_tunable("MaxKeySize", 17) == 17
    assert config.parse_tunable("WaitForQuorum", "0") == 0
    with pytest.raises(CtdbError) as info:
        config.parse_tunable("MaxKeySize", None)
    assert info.value.code == ErrorCode.INVALID


def test_nan_is_not_a_tunable_value() -> None:
    with pytest.raises(CtdbError) as info:
        config.parse_tunable("CallTimeout", "nan")
    assert info.value.code == ErrorCode.INVALID


def test_every_tunable_has_a_default_in_its_range_and_a_description() -> None:
    for name, t in config.TUNABLES.items():
        assert config.tunable_default(name) == t.default
        assert isinstance(t.default, int | float) and t.lo <= t.default <= t.hi
        assert config.parse_tunable(name, t.lo) == t.lo
        assert config.parse_tunable(name, t.hi) == t.hi
        assert t.description
