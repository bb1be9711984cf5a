"""A multipart upload's parts as the policy reads them: names, files and text, no bytes.

The pipeline reads the body (pipeline.uploads) and hands over one `FormPart` per part; the
rules here are the same for every multipart route:
- every part has a name the route knows (an unknown one is refused like an unknown JSON
  parameter);
- a name is given once, unless it is an array in the form OpenAI's SDKs write arrays, with
  brackets (`image[]`, `include[]`, `timestamp_granularities[]`): a repeated plain name is
  refused like a duplicate JSON key, since the upstream may read the first and the gateway
  the last;
- a file parameter is a file part (with a file name), every other parameter a text part: the
  upstream refuses `image[]` sent as text, and a "text" part holding megabytes is no text
  (except the few text parameters that carry data, such as known speakers' audio samples as
  data URLs: they are counted, not read).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .refusal import Refusal, shown

#: A file part's first bytes kept for the policy: its format and, for a WAV file, its length.
HEAD_BYTES = 4096
#: A text part longer than this is not read as text (its value is None): no parameter of these
#: routes is longer (a prompt is at most 32,000 characters, 4 bytes each at most).
MAX_TEXT_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class FormPart:
    """One part of a multipart body. `filename` None: a text part, whose `value` is its text
    (None when it is not UTF-8 or longer than MAX_TEXT_BYTES); a file part's `head` is its
    first HEAD_BYTES."""

    name: str | None
    filename: str | None
    content_type: str | None
    size: int
    value: str | None = None
    head: bytes = b""
    #: The SHA-256 of the part's bytes (hex), when the reader was asked for it ("" if not):
    #: what a cache key of the upload covers.
    sha256: str = ""

    @property
    def is_file(self) -> bool:
        return self.filename is not None


@dataclass(frozen=True, slots=True)
class Form:
    """The parts by name: `text` maps a name to its text (an array name to its list of texts),
    `files` a file parameter's name to its parts, `data` a data-carrying text parameter's name
    to its parts (not read)."""

    text: dict[str, object]
    files: dict[str, list[FormPart]]
    data: dict[str, list[FormPart]]

    def file_count(self, *names: str) -> int:
        return sum(len(self.files.get(name, ())) for name in names)


def collect(parts: Iterable[FormPart], *, text: frozenset[str], files: frozenset[str],
            data: frozenset[str] = frozenset()) -> Form:
    """Check every part against the route's parameters (`text`, `files` and `data` names,
    arrays ending in "[]") and sort them; raises `Refusal` naming the first part that breaks a
    rule (see the module docstring)."""
    values: dict[str, object] = {}
    found: dict[str, list[FormPart]] = {}
    carried: dict[str, list[FormPart]] = {}
    seen: set[str] = set()
    for part in parts:
        name = part.name
        if not name:
            raise Refusal("A part of the multipart body has no name (Content-Disposition: "
                          "form-data; name=...).")
        if name not in text and name not in files and name not in data:
            raise Refusal(f"Unknown parameter: '{shown(name)}'.", shown(name),
                          "unknown_parameter")
        array = name.endswith("[]")
        if name in seen and not array:
            raise Refusal(f"The parameter '{shown(name)}' is given more than once in the "
                          "multipart body; send each parameter once.", shown(name))
        seen.add(name)
        if name in files:
            if not part.is_file:
                raise Refusal(f"'{name}' must be a file (a part with a filename), not a text "
                              "field.", name)
            found.setdefault(name, []).append(part)
            continue
        if part.is_file:
            raise Refusal(f"'{name}' must be a text field, not a file.", name)
        if name in data:
            carried.setdefault(name, []).append(part)
            continue
        if part.value is None:
            raise Refusal(f"'{name}' is not a short UTF-8 text field.", name)
        if array:
            listed = values.setdefault(name, [])
            assert isinstance(listed, list)
            listed.append(part.value)
        else:
            values[name] = part.value
    return Form(values, found, carried)


def one_of(form_names: Mapping[str, object], *names: str) -> None:
    """Refuse a parameter given in two spellings (`image` and `image[]`)."""
    given = [n for n in names if n in form_names]
    if len(given) > 1:
        raise Refusal(f"'{given[0]}' and '{given[1]}' are the same parameter; send one of "
                      "them.", given[1])
