"""The [realtime] section: how long realtime secrets and sessions live, how many a caller holds,
and what one client event may be.

Which models a session may name, which tools it may declare and its output cap are not here:
they are the caller's, as for chat (`validation.allowed_models` or the tier's `models`,
`validation.allowed_tools`, `validation.max_tokens`, `validation.max_input_chars`).
"""
from __future__ import annotations

from dataclasses import dataclass

from .loader import Problems

#: OpenAI's own bounds on `expires_after.seconds` of a client secret (its API reference).
SECRET_TTL_RANGE = (10, 7200)


@dataclass(frozen=True)
class RealtimeSettings:
    """Voice sessions (WebRTC calls and relayed WebSockets)."""

    #: Seconds a client secret lives at most: `expires_after.seconds` is capped to this.
    max_ttl: int = 600
    #: A WebRTC call or a relayed WebSocket is ended after this many seconds.
    max_session_seconds: int = 1800
    #: Realtime sessions (calls and sockets) open at once per caller.
    max_sessions: int = 2
    #: Bytes of one client event (a WebSocket frame); a larger one is refused with an `error`
    #: event and not forwarded. 1 MiB holds some 20 s of 24 kHz PCM audio in base64.
    max_frame_bytes: int = 1_048_576
    #: Client events one socket may send per second (audio appends included); the ones over
    #: are refused with an `error` event. Microphones send 10 to 50 chunks a second.
    max_events_per_second: int = 100

    def check(self, at: str, p: Problems) -> None:
        low, high = SECRET_TTL_RANGE
        p.expect(low <= self.max_ttl <= high, f"{at}.max_ttl", self.max_ttl,
                 f"{low}-{high} seconds (OpenAI's range for a client secret)")
        p.positive(self, at, "max_session_seconds", "max_sessions", "max_frame_bytes",
                   "max_events_per_second")
