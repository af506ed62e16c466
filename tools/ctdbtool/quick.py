"""`ctdbtool pnn` without click or the client library.

Event scripts and admins run `ctdbtool pnn` in loops, so what they feel is
start-up: the interpreter takes about 20 ms, and click with the client
library (dataclasses, typing, enum, the socket module) about 80 ms more,
where Samba's `ctdb pnn` takes about 13 ms in all (`python -m
bench.cli_startup` measures them side by side). The daemon tells every
client its pnn in the answer to `hello`, the first request on a
connection, so this command needs one frame each way: the raw `_socket`
module, the framing and msgpack.

The path is optimistic. It takes only the command lines it knows (`pnn`,
with at most `--socket PATH`), and any failure (no daemon, a refusal, an
answer of another shape, none within REPLY_WAIT) hands the command line to
the full tool, which sends the same request through the client library and
reports errors its usual way. `hello` changes nothing on the daemon, so
asking twice is harmless.
"""

from __future__ import annotations

import _socket  # not `socket`, which loads enum and selectors
import os
import sys

import msgpack

from ctdb.common.client_socket import default_socket
from transport.framing import FrameReader, frame

#: The protocol version and request shape of `ctdb.protocol.client`, written
#: out because importing it (dataclasses, enum) costs more than this whole
#: command; `tests/test_ctdbtool_quick.py` checks that the two agree.
HELLO = frame(msgpack.packb([1, "hello", {"version": 1}], use_bin_type=True))
#: A healthy daemon answers `hello` in well under a millisecond; one that
#: does not answer within this is left to the full tool and its timeout.
REPLY_WAIT = 2.0
#: The answer to `hello` is a few dozen bytes.
MAX_REPLY = 4096


def answer(argv: list[str]) -> bool:
    """Run `argv` if it is a command this module answers; False leaves it to the full tool."""
    path = pnn_socket(argv)
    if path is None:
        return False
    pnn = ask_pnn(path)
    if pnn is None:
        return False
    try:
        print(pnn, flush=True)
    except BrokenPipeError:  # the reader left: exit 1 quietly, as click does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    return True


def pnn_socket(argv: list[str]) -> str | None:
    """The daemon socket `argv` names if it is `[--socket PATH | -s PATH] pnn`, else None."""
    match argv:
        case ["pnn"]:
            return default_socket()
        case ["--socket" | "-s", path, "pnn"]:
            return path or default_socket()
        case [option, "pnn"] if option.startswith("--socket="):
            return option.removeprefix("--socket=") or default_socket()
    return None


def ask_pnn(path: str) -> int | None:
    """The pnn of the daemon at `path`, None if it does not answer as expected."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(REPLY_WAIT)
        sock.connect(path)
        sock.sendall(HELLO)
        reply = _read_frame(sock)
        message = msgpack.unpackb(reply)
    except (OSError, ValueError):  # socket errors and timeouts; msgpack's format errors
        return None
    finally:
        sock.close()
    match message:
        case [1, 0, {"pnn": int(pnn)}]:
            return pnn
    return None


def _read_frame(sock: _socket.socket) -> bytes:
    frames = FrameReader(MAX_REPLY)  # FrameTooLarge is a ValueError
    while True:
        chunk = sock.recv(MAX_REPLY)
        if not chunk:
            raise ConnectionResetError("the daemon closed the connection")
        got = frames.feed(chunk)
        if got:
            return got[0]
