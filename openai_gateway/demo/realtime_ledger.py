"""What the fake realtime upstream did and was told, for tests to check against."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Billed:
    """A response as OpenAI would bill it. status: completed, incomplete, cancelled, or
    dropped (the socket or call ended mid-response: billed the words generated so far)."""

    session_id: str
    call_id: str | None
    model: str
    response_id: str
    status: str
    usage: dict


@dataclass
class Transcribed:
    session_id: str
    item_id: str
    model: str
    usage: dict


@dataclass
class Received:
    """A client event, as parsed (the raw text when it was not a JSON object)."""

    session_id: str
    via: str  # "websocket", "sideband" or whatever the answerer attached ("datachannel")
    event: dict | str


@dataclass
class Opened:
    """A session, or one WebSocket onto one (the sideband of a call opens one more)."""

    session_id: str
    via: str
    model: str
    call_id: str | None
    token: str  # the credential it was opened with
    headers: dict
    opened: float = field(default_factory=time.monotonic)
    closed: float | None = None


@dataclass
class Ledger:
    #: value -> {"expires_at", "session" (as answered), "request" (the session asked for)}
    secrets: dict[str, dict] = field(default_factory=dict)
    calls: dict[str, Any] = field(default_factory=dict)  # realtime_session.Call by id
    sockets: list[Opened] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    responses: list[Billed] = field(default_factory=list)
    transcriptions: list[Transcribed] = field(default_factory=list)
    hangups: list[str] = field(default_factory=list)

    def events(self, kind: str | None = None, session_id: str | None = None) -> list[dict]:
        """The client events received, of one type and/or one session."""
        return [r.event for r in self.received if isinstance(r.event, dict)
                and (kind is None or r.event.get("type") == kind)
                and (session_id is None or r.session_id == session_id)]

    def output_tokens(self, session_id: str | None = None) -> int:
        return sum(b.usage["output_tokens"] for b in self.responses
                   if session_id is None or b.session_id == session_id)
