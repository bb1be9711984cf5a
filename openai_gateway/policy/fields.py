"""Typed reads of a request's parameters, from a JSON object or from multipart text fields.

The voice and pictures routes take the same parameters in either form (an image edit is JSON
or multipart), so each rule reads them through `Fields`: a JSON value must have its JSON type
(`n: 2`), a multipart value is text in the form OpenAI's SDKs write it (`n=2`, `stream=true`,
as their `_qs` stringifies). A JSON `null` is a parameter not given (OpenAI's spec marks these
parameters nullable). Every refusal names the parameter, as OpenAI's own 400s do.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from .refusal import Refusal, shown


def unknown(names: Iterable[str], known: frozenset[str]) -> None:
    """Refuse the first parameter the route does not have, as OpenAI does ("Unknown
    parameter"): a field the gateway does not know is a field it cannot bound."""
    for name in names:
        if name not in known:
            raise Refusal(f"Unknown parameter: '{shown(name)}'.", shown(name),
                          "unknown_parameter")


class Fields:
    """Typed reads of `values` (a JSON object, or multipart text values when `text`)."""

    def __init__(self, values: Mapping[str, object], *, text: bool = False):
        self.values = values
        self.text = text

    def given(self, name: str) -> bool:
        return self.values.get(name) is not None

    def string(self, name: str, *, required: bool = False, max_chars: int | None = None
               ) -> str | None:
        value = self.values.get(name)
        if value is None:
            if required:
                raise Refusal(f"Missing required parameter: '{name}'.", name)
            return None
        if not isinstance(value, str):
            raise Refusal(f"Invalid type for '{name}': expected a string.", name)
        if max_chars is not None and len(value) > max_chars:
            raise Refusal(f"'{name}' is {len(value)} characters long; at most {max_chars} are "
                          "allowed.", name, "string_above_max_length")
        return value

    def choice(self, name: str, allowed: tuple[str, ...], setting: str | None = None
               ) -> str | None:
        """A string among `allowed`; `setting` names the key that lists them, when the
        operator chose them (else they are OpenAI's own)."""
        value = self.string(name)
        if value is not None and value not in allowed:
            where = f" (validation.{setting})" if setting else ""
            raise Refusal(f"Invalid value for '{name}': {shown(value)!r} is not available "
                          f"through this gateway; allowed: {_listed(allowed)}{where}.", name)
        return value

    def integer(self, name: str, low: int, high: int) -> int | None:
        value = self.values.get(name)
        if value is None:
            return None
        if self.text and isinstance(value, str) and value.isascii() and value.isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise Refusal(f"Invalid type for '{name}': expected an integer.", name)
        if not low <= value <= high:
            raise Refusal(f"Invalid value for '{name}': {value}; expected {low} to {high}.",
                          name)
        return value

    def number(self, name: str, low: float, high: float) -> float | None:
        value = self.values.get(name)
        if value is None:
            return None
        if self.text and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if not isinstance(value, int | float) or isinstance(value, bool) \
                or not math.isfinite(value):
            raise Refusal(f"Invalid type for '{name}': expected a number.", name)
        if not low <= value <= high:
            raise Refusal(f"Invalid value for '{name}': {value}; expected {low} to {high}.",
                          name)
        return float(value)

    def boolean(self, name: str) -> bool | None:
        value = self.values.get(name)
        if value is None:
            return None
        if self.text and value in ("true", "false"):
            return value == "true"
        if not isinstance(value, bool):
            raise Refusal(f"Invalid type for '{name}': expected a boolean.", name)
        return value

    def strings(self, name: str, allowed: tuple[str, ...] | None = None,
                setting: str | None = None) -> list[str]:
        """An array of strings (each among `allowed` when given); [] when not given."""
        value = self.values.get(name)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise Refusal(f"Invalid type for '{name}': expected an array of strings.", name)
        for item in value:
            if allowed is not None and item not in allowed:
                where = f" (validation.{setting})" if setting else ""
                raise Refusal(f"Invalid value in '{name}': {shown(item)!r} is not available "
                              f"through this gateway; allowed: {_listed(allowed)}{where}.",
                              name)
        return value


def _listed(allowed: tuple[str, ...]) -> str:
    return ", ".join(allowed) if allowed else "none"


def utf8_bytes(*texts: str | None) -> int:
    """Bytes of UTF-8 text: an upper bound of its tokens (a byte-level BPE token holds at
    least one byte), where characters are not (one character can be several tokens)."""
    return sum(len(t.encode("utf-8", "surrogatepass")) for t in texts if t)
