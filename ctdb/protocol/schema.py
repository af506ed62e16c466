"""Declarative checks for decoded wire data: what a check is and how it fails.

msgpack hands back whatever a peer sent: an int where bytes were meant (and
`bytes(n)` then allocates n bytes), a key of a gigabyte, a pnn of -7, a map
without the key a handler indexes. So every node message and every client
request is checked against a schema when it is decoded, and the code that
handles it can trust every field. A schema is data (a table row), not a
series of ifs in the handler, so adding a message or an operation means
adding a row.

A check is a function `(value, limits) -> None` that raises `SchemaError`,
whose message names the offending field by its path (`records[3][0]`). It
never copies or converts what it checks: decoding runs on every message, so
checks are kept cheap. `Limits` carries what depends on the node: how many
nodes exist (a pnn must name one) and how big keys and values may be.

This module holds what every check shares; the checks themselves are in
`schema_scalars` (numbers, strings, bytes, node numbers) and
`schema_combinators` (lists, maps, rows, structs, bulk record lists), and
`bounded_msgpack` decodes the bytes they are run on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ctdb.common.errors import CtdbError, ErrorCode

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1


class SchemaError(CtdbError):
    """A field has the wrong type, range or size; `path` says which field."""

    def __init__(self, problem: str, code: ErrorCode = ErrorCode.INVALID) -> None:
        super().__init__(code, problem)
        self.problem = problem
        self.path: list[str | int] = []

    def at(self, part: str | int) -> SchemaError:
        """Prefix the path while the error travels out of a container."""
        self.path.insert(0, part)
        self.message = f"{self.where}: {self.problem}"
        self.args = (self.message,)
        return self

    @property
    def where(self) -> str:
        out = ""
        for part in self.path:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
        return out


class Limits:
    """What checks depend on at run time: the node count and the size tunables.

    Holds references, not copies: the nodes list grows with `reloadnodes`
    and tunables change with `setvar`, and every check sees the current value.
    """

    __slots__ = ("nodes", "sizes")

    def __init__(self, nodes: Sequence[object], sizes: Mapping[str, float]) -> None:
        self.nodes = nodes
        self.sizes = sizes


#: Defined after `Limits`, not with a forward reference: `typing.get_type_hints`
#: would look that name up in every module whose annotations use `Check`
#: (the message classes' `ARGS`).
Check = Callable[[Any, Limits], None]


def described(check: Check, *shape: Any) -> Check:
    """Attach what a check accepts as data (`("int", lo, hi)`, `("struct", ...)`).

    The shape lets tools build valid values from a schema: the property
    tests and the fuzzer generate every message and op from the very tables
    the daemon checks against, so a new row is fuzzed without more code.
    """
    check.shape = shape  # type: ignore[attr-defined]
    return check


def shape_of(check: Check) -> tuple[Any, ...]:
    shape: tuple[Any, ...] = check.shape  # type: ignore[attr-defined]
    return shape


def type_name(value: object) -> str:
    return "nil" if value is None else type(value).__name__


def short(value: object, limit: int = 40) -> str:
    """A repr fit for an error message, however large the value a peer sent."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
