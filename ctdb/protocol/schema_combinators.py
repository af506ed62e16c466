"""Checks built of checks: nil-or, either, lists, maps, rows, structs, record lists.

A message's schema is a tree of these over the scalar checks of
`schema_scalars`. A container check names the failing item on the way
out (`SchemaError.at`), so the error says where in the tree it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ctdb.protocol.schema import (
    Check,
    Limits,
    SchemaError,
    described,
    shape_of,
    short,
    type_name,
)
from ctdb.protocol.schema_inline import rows as inline_rows
from ctdb.protocol.schema_inline import struct as inline_struct
from ctdb.protocol.schema_scalars import STORED_KEY, U32, U64, VALUE, sized


def nullable(inner: Check) -> Check:
    def check(value: Any, limits: Limits) -> None:
        if value is not None:
            inner(value, limits)

    return described(check, "nullable", inner)


def one_of(*checks: Check) -> Check:
    """Any of the checks accepts the value (e.g. a number or a string)."""

    def check(value: Any, limits: Limits) -> None:
        errors = []
        for inner in checks:
            try:
                inner(value, limits)
                return
            except SchemaError as exc:
                errors.append(exc.problem)
        raise SchemaError(" or ".join(errors))

    return described(check, "one_of", checks)


def list_of(item: Check, *, min_len: int = 0) -> Check:
    """A list of at least `min_len` items, each passing `item`. A list of
    rows of scalars (a transaction's reads and writes) runs written out
    (`schema_inline`)."""
    composed = composed_list_of(item, min_len)
    is_row = shape_of(item)[0] == "row"
    inline = inline_rows(shape_of(item)[1], min_len, composed) if is_row else None
    return described(inline or composed, "list", item, min_len)


def composed_list_of(item: Check, min_len: int = 0) -> Check:
    """`list_of` as a call per item: what it says in every case."""

    def check(value: Any, limits: Limits) -> None:
        if type(value) is not list:
            raise SchemaError(f"must be a list, not {type_name(value)}")
        if len(value) < min_len:
            raise SchemaError(f"needs at least {min_len} items")
        i = 0
        try:
            for i, v in enumerate(value):  # noqa: B007 - i names the failing item
                item(v, limits)
        except SchemaError as exc:
            raise exc.at(i) from None

    return check


def map_of(key: Check, value: Check) -> Check:
    """A map whose keys all pass `key` and values all pass `value` (name -> info)."""

    def check(data: Any, limits: Limits) -> None:
        if type(data) is not dict:
            raise SchemaError(f"must be a map, not {type_name(data)}")
        for k, v in data.items():
            try:
                key(k, limits)
            except SchemaError as exc:
                raise SchemaError(f"key {short(k)}: {exc.problem}") from None
            try:
                value(v, limits)
            except SchemaError as exc:
                raise exc.at(k if type(k) is str else short(k)) from None

    return described(check, "map_of", key, value)


def row(*items: Check) -> Check:
    """A fixed-length list whose positions have their own checks ([key, rsn, ...])."""
    n = len(items)

    def check(value: Any, limits: Limits) -> None:
        if type(value) is not list or len(value) != n:
            what = f"{len(value)} items" if type(value) is list else type_name(value)
            raise SchemaError(f"must be a list of {n} items, not {what}")
        i = 0
        try:
            for i, inner in enumerate(items):  # noqa: B007 - i names the failing item
                inner(value[i], limits)
        except SchemaError as exc:
            raise exc.at(i) from None

    return described(check, "row", items)


def struct(required: Mapping[str, Check], optional: Mapping[str, Check] | None = None) -> Check:
    """A map with string keys: every required key, any optional ones, nothing else.

    An unknown key is an error, so a misspelt argument is reported rather
    than silently ignored. An optional key may be nil, which handlers read
    as absent (`args.get(name)`); clients send `pnn=None` for "this node".
    Every request's arguments pass here: the usual case runs written out
    (`schema_inline`), the rest as composed.
    """
    composed = composed_struct(required, optional)
    opt = dict(optional or {})
    inline = inline_struct(required, opt, composed)
    return described(inline or composed, "struct", dict(required), opt)


def composed_struct(
    required: Mapping[str, Check], optional: Mapping[str, Check] | None = None
) -> Check:
    """`struct` as a call per field: what it says in every case."""
    req = tuple(required.items())
    opt = dict(optional or {})
    names = ", ".join(sorted([*required, *opt])) or "none"
    n_required = len(req)

    def check(value: Any, limits: Limits) -> None:
        if type(value) is not dict:
            raise SchemaError(f"must be a map, not {type_name(value)}")
        name = ""
        try:
            for name, inner in req:  # noqa: B007 - name names the failing field
                inner(value[name], limits)
        except KeyError:
            raise SchemaError(f"missing argument {name!r}") from None
        except SchemaError as exc:
            raise exc.at(name) from None
        if len(value) == n_required:
            return
        for name, v in value.items():
            if name in required:
                continue
            extra = opt.get(name) if type(name) is str else None
            if extra is None:
                raise SchemaError(f"unknown argument {short(name)} (expected: {names})")
            if v is not None:
                try:
                    extra(v, limits)
                except SchemaError as exc:
                    raise exc.at(name) from None

    return check


#: No arguments at all.
EMPTY = struct({})


# -- bulk record lists ------------------------------------------------------------------
# Recovery moves whole databases (100k records) in one message: `list_of` checks
# a list of rows in one loop (`schema_inline.rows`), not with a call per cell.

#: [[key, rsn, dmaster, value], ...], as recovery and snapshots carry them.
RECORDS: Check = list_of(row(STORED_KEY, U64, U32, VALUE))


def key_values(*, min_key: int = 0) -> Check:
    """[[key, value], ...], as a traverse returns them and a restore takes them."""
    return list_of(row(sized("MaxKeySize", min_len=min_key), VALUE))
