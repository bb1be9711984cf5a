"""What an answer cost, read from the upstream's own `usage`, and what a request may cost.

Only the answer's top-level `usage` (a stream: a chunk's top-level `usage`, or the `usage` of
the response in the Responses API's final event) is believed. Fields the client controls are
echoed in answers (`metadata`, `user`, tool schemas on /v1/responses), so the last `"usage"`
in the bytes may well be the client's: `{"metadata": {"k": "usage"}}` must not make an answer
free. An answer without a readable usage gives None, and the caller charges the reservation,
never nothing.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import orjson

#: Strings (skipped whole, escapes included) and brackets: enough to track nesting depth.
_STRING_OR_BRACKET = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_USAGE_KEY = b'"usage"'
_SPACE = b" \t\r\n"
#: Past this many nested `"usage"` keys the answer is parsed whole (see usage_from_answer).
MAX_CANDIDATES = 16
#: Smaller answers are parsed whole: orjson beats the key search below on them (4 KB: 6 us
#: against 49 us with echoed "usage" keys), and reads 256 KB of floats in about 3 ms.
WHOLE_PARSE_BYTES = 256 * 1024
#: Responses API stream events that end a response and carry its final usage.
FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


#: Where each API generation reports the parts of its input and output: chat, completions
#: and embeddings (`prompt_tokens_details`), Responses and the Images API
#: (`input_tokens_details`), realtime and transcriptions (`input_token_details`).
INPUT_DETAILS = ("prompt_tokens_details", "input_tokens_details", "input_token_details")
OUTPUT_DETAILS = ("completion_tokens_details", "output_tokens_details", "output_token_details")


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one answer, as the upstream reports them: `cached_input`, `audio_input` and
    `image_input` are parts of `input`; `reasoning` and `audio_output` parts of `output`.
    Each part is billed at its own price (prices.cost). `seconds`: the audio a model billed
    by the minute read (whisper-1 reports `{"type": "duration", "seconds": N}`, no tokens)."""

    input: int = 0
    output: int = 0
    cached_input: int = 0
    reasoning: int = 0
    audio_input: int = 0
    image_input: int = 0
    audio_output: int = 0
    #: The audio tokens among `cached_input`, when the upstream says (realtime does, in
    #: `cached_tokens_details`): cached audio has its own price on some models.
    cached_audio_input: int = 0
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return self.input + self.output


#: The JSON string members that carry a stream's generated text, per route: chat's message,
#: refusal, reasoning and tool-call deltas; completions' text; the Responses API's `*.delta`
#: events (text, arguments, summaries, refusals). Only keys followed by a string value count,
#: and a key inside a string cannot match (its quotes are escaped there).
_OUTPUT_KEYS = {
    "/v1/chat/completions": (b"content", b"refusal", b"arguments", b"name",
                             b"reasoning_content", b"reasoning"),
    "/v1/completions": (b"text",),
    "/v1/responses": (b"delta",),
}
_OUTPUT_PATTERNS = {
    route: re.compile(rb'"(?:' + b"|".join(keys) + rb')"\s*:\s*"((?:[^"\\]|\\.)*)"')
    for route, keys in _OUTPUT_KEYS.items()}


#: What a stream stopped by its client is charged beyond the output it received: the tokens the
#: upstream generates before it sees the connection close (within a round trip of the gateway
#: closing it; 128 is a quarter of a second at 500 tokens/s). Counting received output by its
#: bytes (about four per token) already leaves room of its own.
STOP_MARGIN_TOKENS = 128


class OutputCounter:
    """An upper bound on the output tokens a stream's events carry: the bytes of their text as
    sent (escapes included). A token is at least one byte of text, so this never under-counts
    what was generated; it is what a stream stopped early is charged for its output."""

    __slots__ = ("tokens", "_pattern")

    def __init__(self, route: str) -> None:
        self.tokens = 0
        self._pattern = _OUTPUT_PATTERNS.get(route)

    def feed(self, event: bytes) -> None:
        """Count one complete SSE event (its data lines)."""
        if self._pattern is None:
            self.tokens += len(event)  # a route without a known text field: every byte
            return
        for m in self._pattern.finditer(event):
            self.tokens += m.end(1) - m.start(1)


def prompt_estimate(input_chars: int) -> int:
    """Tokens of `input_chars` characters of text: about four characters a token, rounded up."""
    return (input_chars + 3) // 4


def usage_of(doc) -> Usage | None:
    """A `usage` object of either API generation (chat/completions/embeddings or responses),
    or the duration a transcription reports instead of tokens."""
    if not isinstance(doc, dict):
        return None
    if doc.get("type") == "duration":
        seconds = doc.get("seconds")
        if isinstance(seconds, int | float) and not isinstance(seconds, bool) \
                and math.isfinite(seconds) and seconds >= 0:
            return Usage(seconds=float(seconds))
        return None
    tin = _count(doc, "prompt_tokens", "input_tokens")
    tout = _count(doc, "completion_tokens", "output_tokens")
    total = _count(doc, "total_tokens")
    if tin is None and tout is None:
        if total is None:
            return None
        tin = total  # embeddings report prompt_tokens and total_tokens; some servers only total
    return Usage(tin or 0, tout or 0, _detail(doc, INPUT_DETAILS, "cached_tokens"),
                 _detail(doc, OUTPUT_DETAILS, "reasoning_tokens"),
                 _detail(doc, INPUT_DETAILS, "audio_tokens"),
                 _detail(doc, INPUT_DETAILS, "image_tokens"),
                 _detail(doc, OUTPUT_DETAILS, "audio_tokens"),
                 _cached_detail(doc, "audio_tokens"))


def usage_from_event(event) -> Usage | None:
    """The usage a parsed stream event reports: a chunk's top-level `usage`, or the response's
    `usage` in the Responses API's final event. None for every other event."""
    if not isinstance(event, dict):
        return None
    if event.get("usage") is not None:
        return usage_of(event["usage"])
    if event.get("type") in FINAL_EVENTS and isinstance(event.get("response"), dict):
        return usage_of(event["response"].get("usage"))
    return None


def usage_from_answer(body: bytes) -> Usage | None:
    """The usage of a complete JSON answer: its root object's `usage` member.

    Parsing a 41 MB embeddings answer whole takes 0.8-2.6 s (measured on the shared build
    machine) and a few hundred MB; instead, past WHOLE_PARSE_BYTES, the `"usage"` keys are
    found from the end and each is checked to sit in the root object (the nesting from the key
    to the end of the body is tracked; strings are skipped whole). The real one is at or near
    the end: 13 us on that answer. Answers with more than MAX_CANDIDATES nested `"usage"` keys
    (client-made echoes) are parsed whole.
    """
    if len(body) <= WHOLE_PARSE_BYTES:
        return _whole_usage(body)
    found = _root_usage(body)
    return _whole_usage(body) if found is _UNDECIDED else found


def usage_near_end(tail: bytes) -> Usage | None:
    """The root `usage` member of a JSON document of which only the last bytes are at hand
    (`tail` must end where the document ends): how a stream event of megabytes, such as an
    image stream's last event (the whole image, then its usage), is read without holding it.

    Whether a key is the root's is decided from the key to the end alone, so the cut may fall
    anywhere before it; a `"usage"` key whose object lies partly before the cut is not seen.
    None also past MAX_CANDIDATES nested `"usage"` keys (there is no whole to parse).
    """
    found = _root_usage(tail)
    return None if found is _UNDECIDED else found


#: _root_usage's verdict when it gave up (too many nested `"usage"` keys).
_UNDECIDED = object()


def _root_usage(body: bytes):
    """The root `usage` found from the end of `body` (a Usage or None), or _UNDECIDED."""
    end = len(body)
    for _ in range(MAX_CANDIDATES):
        at = body.rfind(_USAGE_KEY, 0, end)
        if at < 0:
            return None
        end = at
        if _escaped(body, at):
            continue  # the end of a longer string's text, not a key
        found, value = _root_member(body, at + len(_USAGE_KEY))
        if found:
            return _loaded_usage(value) if value is not None else None
    return _UNDECIDED


def _whole_usage(body: bytes) -> Usage | None:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return usage_of(doc.get("usage")) if isinstance(doc, dict) else None


def _loaded_usage(value: bytes) -> Usage | None:
    try:
        return usage_of(orjson.loads(value))
    except orjson.JSONDecodeError:  # a malformed answer: treated as one without usage
        return None


def _root_member(body: bytes, after_key: int) -> tuple[bool, bytes | None]:
    """(whether the key ending at `after_key` belongs to the root object, its value's bytes
    when that value is an object). The nesting is followed from the key: the enclosing object
    ends where the depth first drops below the key's, and only the root's end is followed by
    nothing but white space."""
    colon = _skip_space(body, after_key)
    if colon >= len(body) or body[colon] != 0x3A:  # ':' - "usage" as a value, not a key
        return False, None
    start = _skip_space(body, colon + 1)
    depth, value = 0, None
    for m in _STRING_OR_BRACKET.finditer(body, start):
        c = body[m.start()]
        if c == 0x7B or c == 0x5B:  # { [
            depth += 1
        elif c == 0x7D or c == 0x5D:  # } ]
            depth -= 1
            if depth == 0 and value is None and body[start] == 0x7B:
                value = body[start:m.end()]
            elif depth < 0:
                return _skip_space(body, m.end()) == len(body), value
    return False, None


def _skip_space(body: bytes, at: int) -> int:
    while at < len(body) and body[at] in _SPACE:
        at += 1
    return at


def _escaped(body: bytes, at: int) -> bool:
    run = 0
    while at - run > 0 and body[at - run - 1] == 0x5C:  # backslash
        run += 1
    return run % 2 == 1


def _count(doc: dict, *names: str) -> int | None:
    for name in names:
        value = doc.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _cached_detail(doc: dict, name: str) -> int:
    """A part of the cached input tokens (`<input details>.cached_tokens_details.<name>`)."""
    for parent in INPUT_DETAILS:
        details = doc.get(parent)
        if isinstance(details, dict) and isinstance(details.get("cached_tokens_details"), dict):
            value = _count(details["cached_tokens_details"], name)
            if value is not None:
                return value
    return 0


def _detail(doc: dict, parents: tuple[str, ...], name: str) -> int:
    for parent in parents:
        details = doc.get(parent)
        if isinstance(details, dict):
            value = _count(details, name)
            if value is not None:
                return value
    return 0
