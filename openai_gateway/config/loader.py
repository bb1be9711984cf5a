"""TOML tables into frozen dataclasses, by their type hints, collecting every problem in one pass.

`build(cls, table, key, problems)` converts each entry to its declared type: str, int, float,
bool, `Literal[...]` (a choice), `X | None`, `A | B`, `tuple[X, ...]` (a TOML array),
`Mapping[str, X]` (a table of named entries, stored read-only), a nested dataclass (a table),
or one of the value types in `CONVERTERS` (limits, dollar budgets, storage URLs), each parsed
by its own module's strict parser. After a dataclass is built its `check(key, problems)`
method, if any, validates values and relations between them, so each section validates itself
with the same key names.

A value of the wrong type is reported and the field keeps its default, so the semantic checks
still run (and report the file's other problems in the same run); a semantic complaint about a
key whose value was refused is dropped, as it would only repeat the first line.

A field declared with `repr=False` is a secret filled from the environment: it is not a file
key and is never printed.
"""
from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal

from limits import RateLimitItem

from .limits import LIMIT_EXPECTED, SPEND_EXPECTED, SpendLimit, parse_limit, parse_spend
from .storage import EXPECTED as STORAGE_EXPECTED
from .storage import StorageURL, parse_storage_url

#: Value types built from a TOML string: type -> (converter raising ValueError("expected ..."),
#: what one is called in a type error, plural).
CONVERTERS: Mapping[type, tuple[Callable[[Any], Any], str, str]] = {
    RateLimitItem: (parse_limit, LIMIT_EXPECTED, "limits"),
    SpendLimit: (parse_spend, SPEND_EXPECTED, "dollar budgets"),
    StorageURL: (parse_storage_url, STORAGE_EXPECTED, "storage URLs"),
}
#: Returned by `convert` for a refused value: the field keeps its default.
FAIL: Any = object()

_SCALARS = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
_PLURALS = {str: "strings", int: "integers", float: "numbers", bool: "booleans"}


class Problems:
    """Config problems, one line each ("key: got X, expected Y"), in the order found."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        #: Non-fatal remarks (become Settings.warnings, for --check and the start-up log).
        self.warnings: list[str] = []
        self._refused: list[str] = []

    def refuse(self, key: str, text: str) -> None:
        """A value that could not be converted (its field keeps the default)."""
        self.lines.append(f"{key}: {text}")
        self._refused.append(key)

    def defaulted(self, key: str) -> None:
        """A value that keeps its default because a part of it was refused (already said)."""
        self._refused.append(key)

    def refused(self, key: str) -> bool:
        """Was this key's value, or its table, refused (so it holds a default)?"""
        return any(key == bad or key.startswith((bad + ".", bad + "[")) for bad in self._refused)

    def note(self, key: str, text: str, *, fields: tuple[str, ...] = ()) -> None:
        """A semantic problem; dropped when the key, its table or one of the named `fields`
        of the key's table (which the problem is about) was refused already."""
        if not self.refused(key) and not any(self.refused(f"{key}.{f}") for f in fields):
            self.lines.append(f"{key}: {text}")

    def expect(self, ok: bool, key: str, value: Any, expected: str) -> None:
        if not ok:
            self.note(key, f"got {value!r}, expected {expected}")

    def positive(self, obj: Any, at: str, *names: str) -> None:
        """Each named field of `obj` is > 0."""
        for name in names:
            value = getattr(obj, name)
            self.expect(value > 0, f"{at}.{name}", value, "> 0")


def coerce(obj, **converters: Callable[[Any], Any]) -> None:
    """In a frozen dataclass's __post_init__: replace each named field that is not None by
    converter(field) (like attrs' `converter=`)."""
    for name, converter in converters.items():
        value = getattr(obj, name)
        if value is not None:
            object.__setattr__(obj, name, converter(value))


def subkey(prefix: str, name: str) -> str:
    """prefix.name, with the name quoted as TOML would need it ("gpt-4.1")."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        name = json.dumps(name)
    return f"{prefix}.{name}" if prefix else name


def or_list(values) -> str:
    quoted = [json.dumps(v) for v in values]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return or_list(typing.get_args(tp))
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        if inner in CONVERTERS:
            return "a list of " + CONVERTERS[inner][2]
        return "a list of " + _PLURALS.get(inner, "tables" if _is_table(inner) else "strings")
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if tp in CONVERTERS:
        return CONVERTERS[tp][1]
    if _is_table(tp):
        return "a table"
    return _SCALARS[tp]


def _is_table(tp) -> bool:
    return tp not in CONVERTERS and (dataclasses.is_dataclass(tp)
                                     or typing.get_origin(tp) is Mapping)


def convert(value, tp, key: str, p: Problems):
    """`value` as type `tp`, or FAIL after reporting why under `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(value, tp, key, p)
    if origin is tuple:
        if not isinstance(value, list):
            p.refuse(key, f"got {value!r}, expected {type_name(tp)}")
            return FAIL
        inner = typing.get_args(tp)[0]
        items = [convert(v, inner, f"{key}[{i}]", p) for i, v in enumerate(value)]
        if any(v is FAIL for v in items):
            p.defaulted(key)  # the whole list keeps its default
            return FAIL
        return tuple(items)
    if origin is Mapping:
        return _convert_mapping(value, tp, key, p)
    if tp in CONVERTERS:  # before dataclasses: a value type may be one (StorageURL)
        try:
            return CONVERTERS[tp][0](value)
        except ValueError as exc:
            p.refuse(key, f"got {value!r}, expected {exc}")
            return FAIL
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            p.refuse(key, f"got {value!r}, expected a table")
            return FAIL
        return build(tp, value, key, p)
    if _fits(value, tp):
        return float(value) if tp is float else value
    p.refuse(key, f"got {value!r}, expected {type_name(tp)}")
    return FAIL


def _fits(value, tp) -> bool:
    if typing.get_origin(tp) is Literal:
        return isinstance(value, str) and value in typing.get_args(tp)
    if isinstance(value, bool):
        return tp is bool
    return isinstance(value, tp) or (tp is float and isinstance(value, int))


def _convert_union(value, tp, key: str, p: Problems):
    options = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(options) == 1:
        # "" means "not set" for an optional value type (rate_limit.storage_url = "").
        if value == "" and options[0] in CONVERTERS:
            return None
        return convert(value, options[0], key, p)
    for option in options:  # scalar alternatives such as int | Literal["auto"]
        if _fits(value, option):
            return value
    p.refuse(key, f"got {value!r}, expected {type_name(tp)}")
    return FAIL


def _convert_mapping(value, tp, key: str, p: Problems):
    if not isinstance(value, dict):
        p.refuse(key, f"got {value!r}, expected a table")
        return FAIL
    inner = typing.get_args(tp)[1]
    out = {}
    for name, item in value.items():
        converted = convert(item, inner, subkey(key, name), p)
        if converted is not FAIL:  # a refused entry is left out; the others still count
            out[name] = converted
    return types.MappingProxyType(out)


def build(cls, table: dict, key: str, p: Problems):
    """An instance of dataclass `cls` from a TOML table, then its own `check`."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.repr}
    table = cls.prepare(table) if hasattr(cls, "prepare") else table
    kwargs = {}
    for name, value in table.items():
        full = subkey(key, name)
        if name not in fields:
            p.refuse(full, f"unknown key (known: {', '.join(sorted(fields))})")
            continue
        converted = convert(value, hints[name], full, p)
        if converted is not FAIL:
            kwargs[name] = converted
    required = [name for name, f in fields.items() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    for name in required:
        if name not in table:
            p.refuse(subkey(key, name), f"missing, expected {type_name(hints[name])}")
    if any(name not in kwargs for name in required):
        return FAIL
    obj = cls(**kwargs)
    if hasattr(obj, "check"):
        obj.check(key, p)
    return obj
