"""What the cache stores and under which key.

Never wrong before fast: the key is SHA-256 of the route, the client's cache scope, every client
header the upstream receives and the canonical JSON body (sorted keys, every field counts); a
stored value that does not parse as one of ours is a miss.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
from multidict import istr

from ..upstream.client import FORWARDED_HEADERS
from ..upstream.sse import DONE, RESPONSES_DONE

#: Entry format: one kind byte, then the body exactly as the client received it; an answer of
#: another type (speech audio, a transcript as subtitles) has its Content-Type and a newline
#: before the body.
KIND_JSON, KIND_SSE, KIND_TYPED = b"J", b"S", b"T"
#: A Content-Type as stored: a media type and its parameters, printable ASCII, no newline.
_CONTENT_TYPE = re.compile(rb"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(?:;[ -~]*)?")
MAX_CONTENT_TYPE = 200
#: Client headers that are part of the key: exactly those the upstream receives, since an
#: answer may depend on anything it was sent. Each one, by its exact value (absent is not ""):
#: - OpenAI-Beta: opts into a beta's behaviour and shapes; an answer given under one beta is
#:   not the answer without it.
#: - Accept: forwarded as sent; an OpenAI-compatible upstream may choose its format by it. One
#:   front-end (one SDK) always sends the same value, so hits within an app are unaffected.
#: - Idempotency-Key: keyed, not bypassed. The same key means the same operation, and its retry
#:   (say, after the connection dropped) should get the same answer without a second charge:
#:   what the client asks for by sending the key. A different key is a distinct operation and
#:   never gets another's answer. The cost is one entry per key, which ages out like any cold
#:   entry. (The official SDKs send none unless the app sets one.)
VARY_HEADERS = FORWARDED_HEADERS
# istr: multidict finds these without case-folding the name on every call (an absent header
# cost 400 ns per lookup as a str, 120 ns as an istr).
_VARY_NAMES = tuple(istr(name) for name in VARY_HEADERS)


@dataclass(frozen=True, slots=True)
class Entry:
    stream: bool
    body: bytes
    #: The Content-Type of an answer that is neither JSON nor SSE (None: one of those).
    content_type: str | None = None

    def encode(self) -> bytes:
        if self.content_type is not None:
            return KIND_TYPED + self.content_type.encode() + b"\n" + self.body
        return (KIND_SSE if self.stream else KIND_JSON) + self.body

    @staticmethod
    def decode(value, trusted: bool = False) -> Entry | None:
        """A stored value, or None for anything that is not one of ours (a miss, not a 500).

        `trusted`: the value comes from this process's memory, where only `encode` writes;
        a shared store can hold anything, so its values are checked in full.
        """
        if trusted and isinstance(value, bytes) and value[:1] in (KIND_JSON, KIND_SSE):
            return Entry(value[:1] == KIND_SSE, value[1:])
        if not isinstance(value, bytes) or len(value) < 2:
            return None
        kind, body = value[:1], value[1:]
        if kind == KIND_TYPED:
            ctype, newline, body = body.partition(b"\n")
            if not newline or len(ctype) > MAX_CONTENT_TYPE \
                    or not _CONTENT_TYPE.fullmatch(ctype):
                return None
            return Entry(False, body, ctype.decode())
        if kind == KIND_SSE:  # only complete streams are stored: no end marker, not ours
            complete = DONE in body or any(end in body for end in RESPONSES_DONE)
            return Entry(True, body) if complete else None
        if kind == KIND_JSON:
            try:
                return Entry(False, body) if isinstance(orjson.loads(body), dict) else None
            except orjson.JSONDecodeError:
                return None
        return None


def cache_key(route: str, scope: str, body: object, headers: Mapping[str, str]) -> str:
    """The storage key of an answer. `body`: what the upstream receives, as JSON (the parsed
    body; an upload's parts by their digests). `headers` is the client's request headers
    (looked up case-insensitively, as aiohttp's `request.headers` does); only `VARY_HEADERS`
    count."""
    vary = [headers.get(name) for name in _VARY_NAMES]
    try:  # a JSON array ends where its grammar says: no value can pose as two, absent is null
        prefix = orjson.dumps([route, scope, vary])
    except orjson.JSONEncodeError:
        # Header bytes that are not UTF-8 reach us as surrogates (aiohttp decodes with
        # surrogateescape), which JSON cannot hold: their repr stands in, a string where the
        # array would be, so it cannot equal any other request's prefix.
        prefix = orjson.dumps([route, scope, repr(vary)])
    h = hashlib.sha256(prefix)
    # Apart from the prefix: wrapped in it, a body at the validator's depth limit would not
    # serialise again.
    h.update(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
    return "c:" + h.hexdigest()  # 66 bytes: far below memcached's 250, no spaces
