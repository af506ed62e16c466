"""What every `ctdbtool` command shares: the connection context, output and errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from ctdb.client import Client, default_socket
from ctdb.common.errors import ErrorCode


class Ctx:
    def __init__(self, socket: str | None, pnn: int | None, as_json: bool) -> None:
        self.socket = socket or default_socket()
        self.pnn = pnn
        self.json = as_json
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.socket)
        return self._client

    def call(self, op: str, **args: Any) -> Any:
        """An operation addressed to `-n PNN` when given."""
        if self.pnn is not None:
            args.setdefault("pnn", self.pnn)
        return self.client.call(op, **args)

    def emit(self, data: Any, text: str | Callable[[], str]) -> None:
        if self.json:
            import json

            click.echo(json.dumps(jsonable(data), indent=2, sort_keys=True))
        else:
            click.echo(text() if callable(text) else text)


def jsonable(data: Any) -> Any:
    if isinstance(data, bytes):
        return data.decode("utf-8", errors="backslashreplace")
    if isinstance(data, dict):
        return {str(jsonable(k)): jsonable(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [jsonable(v) for v in data]
    return data


def fail(message: str, code: int = ErrorCode.INVALID) -> NoReturn:
    click.echo(f"ctdbtool: {message}", err=True)
    sys.exit(int(code) or 1)


def show(data: bytes) -> str:
    """Printable form of a key or value, escaping what is not printable ASCII."""
    return "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b:02X}" for b in data)


pass_ctx = click.make_pass_decorator(Ctx)
