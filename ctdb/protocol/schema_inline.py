"""Checks written out as one function, for the messages every operation carries.

A composed schema costs a Python call per field, and every node message and
client request is checked: on a migration that was a fifth of the daemon's
Python calls. For a node message's fields (`accept`: its whole decoding
past msgpack) and for a `struct` (a client request's arguments, an op's)
this module writes one function in which each scalar field's condition is
inline (`type(v) is int and 0 <= v <= 4294967295`).

The inline conditions only ever say "accepted": a value that fails one,
and a field that has no inline form, goes to the field's own check, which
accepts it or raises the error it always raised (`accept` leaves that to
its caller's field-by-field path). So a written-out check accepts and
refuses exactly what the composed one does (`tests/test_schema_inline.py`
compares them on generated and mutated values).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ctdb.protocol.schema import Check, Limits, SchemaError, shape_of

#: A node message's written-out decoder: (the decoded array, limits, the
#: sending node or None) -> the message, or None for the field-by-field path.
Accept = Callable[[list[Any], Limits, int | None], Any]


def condition(check: Check, v: str) -> str | None:
    """A Python expression over variable `v` (and `limits`, `sizes`) that is
    true only for values `check` accepts; None if there is none worth inlining."""
    kind, *p = shape_of(check)
    if kind == "int":
        lo, hi = p
        return f"(type({v}) is int and {lo} <= {v} <= {hi})"
    if kind == "pnn":
        return f"(type({v}) is int and 0 <= {v} < len(limits.nodes))"
    if kind == "bits":
        return f"(type({v}) is int and {v} >= 0 and not {v} & {~p[0]})"
    if kind == "bool":
        return f"(type({v}) is bool)"
    if kind == "text":
        lo, hi, choices = p
        inside = f" and {v} in {tuple(choices)!r}" if choices else ""
        return f"(type({v}) is str and {_length(v, lo, hi)}{inside})"
    if kind == "blob":
        return f"(type({v}) is bytes and len({v}) <= {p[0]})"
    if kind == "sized":
        tunable, min_len = p
        return f"(type({v}) is bytes and {_length(v, min_len, f'sizes[{tunable!r}]')})"
    if kind == "none":
        return f"({v} is None)"
    if kind == "map":
        return f"(type({v}) is dict)"
    if kind == "any":
        return "True"
    if kind == "nullable":
        inner = condition(p[0], v)
        return None if inner is None else f"({v} is None or {inner})"
    if kind == "one_of":
        parts = [part for c in p[0] if (part := condition(c, v)) is not None]
        return "(" + " or ".join(parts) + ")" if len(parts) == len(p[0]) else None
    if kind == "row":
        items = [condition(c, f"{v}[{i}]") for i, c in enumerate(p[0])]
        if None in items:
            return None
        tests = "".join(f" and {c}" for c in items)
        return f"(type({v}) is list and len({v}) == {len(items)}{tests})"
    return None


def _length(v: str, lo: int, hi: object) -> str:
    """`lo <= len(v) <= hi`, without the lower bound when it is 0."""
    return f"len({v}) <= {hi}" if lo == 0 else f"{lo} <= len({v}) <= {hi}"


def _refuses_none(check: Check) -> bool:
    """Whether `condition(check, v)` is false for None (it starts with a type test)."""
    kind, *p = shape_of(check)
    if kind == "one_of":
        return all(_refuses_none(c) for c in p[0])
    return kind in ("int", "pnn", "bits", "bool", "text", "blob", "sized", "row", "map")


def _conditions(checks: Sequence[Check], prefix: str = "v") -> list[str] | None:
    """The conditions of `checks` over v0, v1, ... (`prefix`); None unless every one has one."""
    conds: list[str] = []
    for i, check in enumerate(checks):
        cond = condition(check, f"{prefix}{i}")
        if cond is None:
            return None
        conds.append(cond)
    return conds


def _function(
    name: str, body: list[str], env: dict[str, Any], params: str = "value, limits"
) -> Any:
    source = "\n".join([f"def {name}({params}):", *(f"    {line}" for line in body)])
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<schema_inline {name}>", "exec"), env, namespace)  # noqa: S102
    return namespace[name]


def accept(
    checks: Sequence[Check],
    build: Callable[..., Any],
    sender: int | None,
    ops: tuple[int, int] | None,
) -> Accept:
    """A node message's decoder for the usual case: `build(*fields)` when every
    field passes its inline condition (or its own check, where it has none),
    the op's arguments pass their row in `build.ARGS` (`ops`: the indexes of
    the op's field and of its arguments) and the field at index `sender` names
    the sending node; otherwise None, and the caller's field-by-field path
    says what is wrong (or accepts what only a field's own check accepts).

    One call instead of a call per part: every node decodes every message,
    and on a store's path decoding was a third of a member's Python work.
    """
    names = [f"v{i}" for i in range(len(checks))]
    env: dict[str, Any] = {f"c{i}": c for i, c in enumerate(checks)}
    env.update(build=build, SchemaError=SchemaError)
    tests, calls = [], []
    for i, check in enumerate(checks):
        cond = condition(check, f"v{i}")
        if cond is None:
            calls.append(f"c{i}(v{i}, limits)")
        elif cond != "True":
            tests.append(cond)
    if sender is not None:
        tests.append(f"(sender is None or v{sender} == sender)")
    body = [f"_, {', '.join(names)}{',' if len(names) == 1 else ''} = items"] if names else []
    body += [
        "sizes = limits.sizes",
        f"if not ({' and '.join(tests) or 'True'}):",
        "    return None",
    ]
    if ops is not None:
        env["ARGS"] = build.ARGS  # type: ignore[attr-defined]
        body += [f"args = ARGS.get(v{ops[0]})", "if args is None:", "    return None"]
        calls.append(f"args(v{ops[1]}, limits)")
    if calls:
        body += [
            "try:",
            *(f"    {call}" for call in calls),
            "except SchemaError:",
            "    return None",
        ]
    body.append(f"return build({', '.join(names)})")
    fn: Accept = _function("accept", body, env, "items, limits, sender")
    return fn


def struct(
    required: Mapping[str, Check], optional: Mapping[str, Check], composed: Check
) -> Check | None:
    """`composed` (a struct check of `required` and `optional` fields) for the
    usual case, every required field and any optional ones (an optional one
    may be nil), each passing its inline condition, and no other key;
    everything else goes to `composed`. None if a field has no inline
    condition."""
    conds = _conditions(list(required.values()))
    opt_conds = _conditions(list(optional.values()), "o")
    if conds is None or opt_conds is None or set(required) & set(optional):
        return None
    # No other key: one subset test of the keys, in C. A missing field then
    # reads as None, which most conditions refuse anyway; only those that
    # may accept None tell it apart from a missing required field, and an
    # optional one may be missing or nil alike.
    body = ["if type(value) is dict and value.keys() <= KEYS:", "    sizes = limits.sizes"]
    tests_of = []
    for i, (name, field_check) in enumerate(required.items()):
        if _refuses_none(field_check):
            body.append(f"    v{i} = value.get({name!r})")
            tests_of.append(conds[i])
        else:
            body.append(f"    v{i} = value.get({name!r}, MISSING)")
            tests_of.append(f"v{i} is not MISSING and {conds[i]}")
    for j, name in enumerate(optional):
        body.append(f"    o{j} = value.get({name!r})")
        tests_of.append(f"(o{j} is None or {opt_conds[j]})")
    body.append(f"    if {' and '.join(tests_of) or 'True'}:")
    body.append("        return")
    body.append("composed(value, limits)")
    env = {"composed": composed, "MISSING": _MISSING, "KEYS": frozenset(required) | set(optional)}
    check: Check = _function("check_struct", body, env)
    return check


def rows(items: Sequence[Check], min_len: int, composed: Check) -> Check | None:
    """`composed` (a list, of at least `min_len` rows of `items`) with every
    row checked in one loop (a transaction's 10,000 writes: a call per cell
    cost more than the commit); any failure goes to `composed`, which says
    what is wrong. None if an item has no inline condition."""
    conds = _conditions(items)
    if conds is None:
        return None
    names = ", ".join(f"v{i}" for i in range(len(items))) + ("," if len(items) == 1 else "")
    body = [
        f"if type(value) is list and len(value) >= {min_len}:",
        "    sizes = limits.sizes",
        "    for item in value:",
        f"        if type(item) is not list or len(item) != {len(items)}:",
        "            break",
        f"        {names} = item",
        f"        if not ({' and '.join(conds)}):",
        "            break",
        "    else:",
        "        return",
        "composed(value, limits)",
    ]
    check: Check = _function("check_rows", body, {"composed": composed})
    return check


_MISSING = object()
