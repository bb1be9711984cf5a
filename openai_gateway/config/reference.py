"""The configuration file and its reference, rendered from the settings model: one source.

Every key of the file is a field of a settings dataclass (this package's modules), with its
default and its `#:` comment (a comment covers the fields right below it that have none of
their own: `speech_formats` shares `speech_voices`'). A section's text is its class docstring.
From them:
- `toml()`: the commented default configuration, every key at its default. `openai-gateway
  init` writes it, and the checkout's `config.toml` is it;
- `markdown()`: the reference, one table per section (docs/configuration.md).

Arrays of tables ([[clients]] ...) and named tables ([tiers.NAME], [prices]) have no default
entries: the file shows a commented example of each (`EXAMPLES`, checked by the tests to parse).

`python -m openai_gateway.config.reference` rewrites config.toml and docs/configuration.md in a
checkout after a key is added or changed; with `--check` it changes nothing and exits 1 when
either is out of date (the tests make the same comparison).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import sys
import textwrap
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from limits import RateLimitItem

from .limits import SpendLimit, limit_text
from .loader import CONVERTERS, type_name
from .settings import Settings
from .storage import StorageURL

#: The file's opening lines.
HEADER = """\
# The gateway's configuration: every key, at its default (delete a line: it keeps its default).
# Without any file the gateway runs on these same defaults and says so at start.
# `openai-gateway init [PATH]` writes this file; docs/configuration.md explains every key.
# Validate with: openai-gateway --config PATH --check   (prints the effective settings)
# Secrets are never in this file: the upstream API key comes from the environment variable
# named by upstream.api_key_env (or a systemd credential of that name), and so does every
# other secret (each *_env key names its variable)."""

#: A commented example for each table that has no default entry, by its key.
EXAMPLES: Mapping[str, str] = {
    "upstream.fallbacks": """\
[[upstream.fallbacks]]
base_url = "https://my-azure.openai.azure.com/openai/v1"
api_key_env = "AZURE_OPENAI_KEY"          # "" = the primary's key""",
    "rate_limit.rules": """\
[[rate_limit.rules]]
route = "/v1/chat/completions"          # "" or absent = every route
model = "gpt-4o"
requests = ["10/minute"]
tokens = ["5000/minute"]""",
    "auth.issuers": """\
[[auth.issuers]]
issuer = "https://login.example.com/"   # the token's iss must equal this
audience = "my-gateway"                 # aud must contain this ("" = not checked)
jwks_url = "https://login.example.com/.well-known/jwks.json"
# Instead of jwks_url (exactly one of the three): jwks_file = "/etc/gateway/jwks.json", or
# secret_env = "ENV_NAME" naming the variable that holds an HS* secret (at least 32 bytes).
algorithms = ["RS256"]                  # required; "none" is never accepted
tier_claim = "plan"                     # the claim naming the user's tier ("" = none)
leeway = 30
jwks_cooldown = 30""",
    "tiers": """\
[tiers.free]
requests = ["20/minute"]
tokens = ["20000/day"]
spend = ["0.50/day"]
models = ["gpt-4o-mini"]""",
    "clients": """\
[[clients]]
name = "backend"
key_sha256 = "f536119537f5499ed216e6c46ea3aada3270570e685f8cf1079e401ba4b28c79"
requests = ["600/minute"]               # from here on each key is optional
tokens = ["100000/minute"]
spend = ["5/day"]
models = ["gpt-4o-mini", "gpt-4o"]
cache_scope = "client"
tier = "pro"
mint_tiers = ["free", "pro"]""",
    "prices": """\
[prices]
"gpt-4o-mini" = { input = 0.15, cached_input = 0.075, output = 0.60 }
"my-reasoner" = { input = 1.0, output = 4.0, reasoning = true }   # hidden reasoning tokens
"whisper-1" = { per_minute = 0.006 }                               # US dollars a minute of audio
"tts-1" = { per_million_chars = 15.0 }                             # US dollars per 1M characters
"dall-e-3" = { per_image = { "standard/1024x1024" = 0.04, "hd/1024x1792" = 0.12 } }
[prices."gpt-realtime"]                 # a long row as a table of its own
input = 4.0
cached_input = 0.40
output = 16.0
audio_input = 32.0
audio_output = 64.0""",
}

#: Where a comment starts on a key's line, and the file's width.
COMMENT_COLUMN = 41
WIDTH = 100


@dataclass(frozen=True)
class Key:
    """One field of a section: its name, type, default (MISSING: none) and comment; `shared`:
    its comment is the one of the field above it."""

    name: str
    hint: typing.Any
    default: typing.Any
    doc: str
    shared: bool = False


@dataclass(frozen=True)
class Section:
    """A table of the file: "table" ([a.b]), "array" ([[a.b]]) or "named" ([a.NAME])."""

    key: str
    cls: type
    kind: str
    doc: str


# --- the model ----------------------------------------------------------------------------


@cache
def _source(cls: type) -> tuple[str | None, dict[str, tuple[str, bool]]]:
    """A class's docstring and each field's (comment, shared), read from its source."""
    lines, _ = inspect.getsourcelines(cls)
    node = ast.parse(textwrap.dedent("".join(lines))).body[0]
    assert isinstance(node, ast.ClassDef)
    docs: dict[str, tuple[str, bool]] = {}
    previous, last_line = "", -2
    for item in node.body:
        if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
            continue
        comment: list[str] = []
        i = item.lineno - 2  # the line above the field's first, counted from 0
        while i >= 0 and lines[i].strip().startswith("#:"):
            comment.insert(0, lines[i].strip()[2:].strip())
            i -= 1
        if comment:
            previous = " ".join(comment)
            docs[item.target.id] = previous, False
        elif previous and i == last_line:  # right below a commented field: one group
            docs[item.target.id] = previous, True
        else:
            previous = ""
            docs[item.target.id] = "", False
        last_line = (item.end_lineno or item.lineno) - 1
    return ast.get_docstring(node), docs


def class_doc(cls: type) -> str:
    """The first paragraph of a class's docstring, on one line."""
    doc = _source(cls)[0] or ""
    return " ".join(doc.split("\n\n")[0].split())


def keys(cls: type) -> list[Key]:
    """The file keys of a section class (secrets, repr=False, are not keys)."""
    hints = typing.get_type_hints(cls)
    docs = _source(cls)[1]
    out = []
    for f in dataclasses.fields(cls):
        if not f.repr:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        doc, shared = docs.get(f.name, ("", False))
        out.append(Key(f.name, hints[f.name], default, doc, shared))
    return out


def _table_of(hint) -> tuple[str, type] | None:
    """("table" | "array" | "named", the entry's class) for a field that is a table."""
    if hint in CONVERTERS:
        return None
    if dataclasses.is_dataclass(hint):
        return "table", typing.cast(type, hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and args and dataclasses.is_dataclass(args[0]) \
            and args[0] not in CONVERTERS:
        return "array", typing.cast(type, args[0])
    if origin is Mapping and dataclasses.is_dataclass(args[1]):
        return "named", typing.cast(type, args[1])
    return None


def sections(cls: type = Settings, prefix: str = "") -> Iterator[tuple[Section, list[Key]]]:
    """Every table of the file in order, with its plain keys (tables inside come after)."""
    plain, inner = [], []
    for key in keys(cls):
        table = _table_of(key.hint)
        if table is None:
            plain.append(key)
        else:
            inner.append((key, *table))
    if prefix:
        yield Section(prefix, cls, "table", class_doc(cls)), plain
    for key, kind, entry in inner:
        path = f"{prefix}.{key.name}" if prefix else key.name
        if kind == "table":
            yield from sections(entry, path)
        else:
            yield Section(path, entry, kind, key.doc or class_doc(entry)), keys(entry)


# --- values -------------------------------------------------------------------------------


def toml_value(value) -> str:
    """A default as TOML text, in the file's own notation (limits and budgets as text)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are TOML basic-string escapes
    if isinstance(value, RateLimitItem):
        return json.dumps(limit_text(value))
    if isinstance(value, SpendLimit):
        return json.dumps(value.text)
    if isinstance(value, StorageURL):
        return json.dumps(str(value))
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {value!r}")


def _default_text(key: Key) -> str | None:
    """The key's default as TOML; None when it has none the file can write (unset)."""
    if key.default is dataclasses.MISSING:
        return None
    if key.default is None:
        # "" means "not set" for an optional value type (rate_limit.storage_url = "").
        options = [a for a in typing.get_args(key.hint) if a is not type(None)]
        return '""' if len(options) == 1 and options[0] in CONVERTERS else None
    return toml_value(key.default)


# --- config.toml --------------------------------------------------------------------------


def _comment(text: str, indent: str = "") -> list[str]:
    return [f"{indent}# {line}" for line in textwrap.wrap(text, WIDTH - len(indent) - 2)]


def _with_comment(line: str, doc: str, *, above: bool = False) -> list[str]:
    """`line` with its comment: on the line when it fits, else on the lines above."""
    if not doc:
        return [line]
    inline = f"{line:<{COMMENT_COLUMN - 1}} # {doc}"
    if not above and len(line) < COMMENT_COLUMN - 1 and len(inline) <= WIDTH:
        return [inline]
    return [*_comment(doc), line]


def toml() -> str:
    """The commented default configuration (what `init` writes)."""
    out = [HEADER]
    for section, plain in sections():
        out.append("")
        if section.kind != "table":
            out.extend(_comment(section.doc))
            out.extend("# " + line if line else "#" for line in EXAMPLES[section.key].split("\n"))
            continue
        out.extend(_with_comment(f"[{section.key}]", section.doc))
        for i, key in enumerate(plain):
            value = _default_text(key)
            line = f"{key.name} = {value}" if value is not None else f"# {key.name} = (unset)"
            if key.shared:
                out.append(line)
                continue
            # A comment shared with the keys below goes above them all.
            group = i + 1 < len(plain) and plain[i + 1].shared
            out.extend(_with_comment(line, key.doc, above=group))
    return "\n".join(out) + "\n"


# --- docs/configuration.md ----------------------------------------------------------------

MARKDOWN_HEADER = """\
# Configuration reference

<!-- Generated from the settings model by `python -m openai_gateway.config.reference`
     (`make reference`): edit the `#:` comments in openai_gateway/config/*.py, not this file. -->

Every key of the configuration file, its default and what it expects. Every key is optional: a
missing key, or a missing file, takes the default. `openai-gateway init [PATH]` writes the whole
file with every key at its default and these explanations as comments (the checkout's
`config.toml` is that file); `openai-gateway --config PATH --check` validates a file, prints
the effective settings and names every problem, one line each.

Secrets are never in the file. The keys ending in `_env` name the environment variable (or,
under systemd, the credential in `$CREDENTIALS_DIRECTORY`) that holds them; a named variable
that is not set is a configuration error, and no secret is ever printed or logged.

Limits are written `"60/minute"`, `"10 per hour"` or `"100/5 minutes"`; dollar budgets
`"0.50/day"` or `"10/month"` (US dollars, at most 6 decimals); a month is 30 days. See
[budgets and prices](budgets.md#limit-syntax).
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _key_path(section: Section, name: str) -> str:
    if section.kind == "array":
        return f"{section.key}[].{name}"
    if section.kind == "named":
        return f'{section.key}."{"MODEL" if section.key == "prices" else "NAME"}".{name}'
    return f"{section.key}.{name}"


def _default_cell(key: Key) -> str:
    if key.default is dataclasses.MISSING:
        return "—"
    text = _default_text(key)
    return "unset" if text is None else f"`{_cell(text)}`"


def markdown() -> str:
    """The reference of every key, one table per section."""
    out = [MARKDOWN_HEADER]
    for section, plain in sections():
        title = {"table": f"[{section.key}]", "array": f"[[{section.key}]]",
                 "named": f"[{section.key}.{'MODEL' if section.key == 'prices' else 'NAME'}]"}
        out += [f"## `{title[section.kind]}`", ""]
        if section.doc:
            out += [section.doc, ""]
        if section.kind != "table":
            entry = class_doc(section.cls)
            if entry and entry != section.doc:
                out += [entry, ""]
            out += ["None by default; any number of them. For example:", "", "```toml",
                    EXAMPLES[section.key], "```", ""]
        out += ["| key | default | expected | meaning |", "|---|---|---|---|"]
        for key in plain:
            out.append(f"| `{_key_path(section, key.name)}` | {_default_cell(key)} | "
                       f"{_cell(type_name(key.hint))} | {_cell(key.doc)} |")
        out.append("")
    return "\n".join(out)


# --- the command --------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
#: The files this module renders, in a checkout, by what renders them.
FILES = {"config.toml": toml, "docs/configuration.md": markdown}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m openai_gateway.config.reference",
        description="Rewrite config.toml and docs/configuration.md from the settings model.")
    p.add_argument("--check", action="store_true",
                   help="change nothing; exit 1 when a file is out of date")
    args = p.parse_args(argv)
    stale = []
    for name, render in FILES.items():
        path, text = ROOT / name, render()
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    verb = "out of date" if args.check else "rewritten"
    for name in stale:
        print(f"{name}: {verb}", file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
