"""The bytes that go upstream: exactly what was validated, plus the gateway's additions.

Nothing added (the usual case: the client set its own output limit, or the route has none):
the raw bytes are forwarded as they came, with no second serialisation on the hot path. With
additions the parsed body is written again; duplicate keys were refused when it was parsed,
so the parsed body means exactly what the raw bytes meant.
"""
from __future__ import annotations

import orjson

from .request import ParsedRequest

#: Streams that report usage only when asked (`stream_options.include_usage`); the Responses
#: API always ends its stream with the usage.
USAGE_OPT_IN = frozenset({"/v1/chat/completions", "/v1/completions"})


def forward_body(parsed: ParsedRequest, raw: bytes, *, stream_usage: bool) -> tuple[bytes, bool]:
    """(body to send upstream, whether the stream's extra usage chunk must be stripped).

    stream_usage: ask a chat/completions stream for its usage (token and dollar budgets need
    it); when the client did not ask for it itself, its usage-only chunk is removed from what
    the client sees (streaming.relay's `strip_usage_chunk`).
    """
    additions = parsed.additions
    strip = False
    if stream_usage and parsed.stream and parsed.route in USAGE_OPT_IN:
        options = parsed.body.get("stream_options") or {}  # an object: checked by the policy
        if options.get("include_usage") is not True:
            additions = {**additions, "stream_options": {**options, "include_usage": True}}
            strip = True
    if not additions:
        return raw, False
    return orjson.dumps({**parsed.body, **additions}), strip
