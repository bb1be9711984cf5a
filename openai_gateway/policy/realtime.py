"""The realtime policy, pure (no aiohttp): client events, client-secret and call requests.

- `RealtimePolicy`, built once from [validation] and [realtime]: `client_secret(raw, models)`
  reads a `POST /v1/realtime/client_secrets` body into a `SecretRequest` (a TTL capped to
  `realtime.max_ttl`, the bounded session); `call(...)` checks a `POST /v1/realtime/calls`
  offer and its session; `events(model, models)` makes the `EventChecker` of one session.
- `EventChecker.check(frame)` is the per-event path of a relayed WebSocket: the frame size,
  the rate, strict JSON (no key twice), a GA client event type, and the fields of
  `session.update` and `response.create` (policy.realtime_session). It returns the text to
  forward (the frame itself, or the event rewritten when the output cap replaced an "inf"), or
  raises `EventRefused`; `error_event(refusal)` is OpenAI's `error` event for it.

Codes in refusals: `frame_too_large`, `rate_limit_exceeded`, `invalid_json`,
`invalid_event_type`, `unknown_parameter`, `invalid_type`, `invalid_value`,
`missing_required_parameter`, `model_not_found`, `tool_not_allowed`,
`context_length_exceeded`.
"""
from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from ..config.realtime import SECRET_TTL_RANGE, RealtimeSettings
from ..config.settings import ValidationSettings
from .jsonbody import parse_object
from .realtime_session import Bounds, SessionRules, merge
from .refusal import Refusal, shown

#: OpenAI's GA client events (RealtimeClientEvent): anything else is refused. The beta
#: protocol's `transcription_session.update` is not among them.
CLIENT_EVENTS = frozenset({
    "session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
    "input_audio_buffer.clear", "conversation.item.create", "conversation.item.retrieve",
    "conversation.item.truncate", "conversation.item.delete", "response.create",
    "response.cancel", "output_audio_buffer.clear"})
#: The longest client `event_id` echoed back in an error event.
MAX_EVENT_ID_CHARS = 64
#: A client-secret request's fields (RealtimeCreateClientSecretRequest).
SECRET_FIELDS = frozenset({"expires_after", "session"})
#: An SDP offer is a few KB (one audio section and a data channel); this bounds it.
MAX_SDP_BYTES = 65_536
#: What a client secret lives when the request names no `expires_after` (OpenAI's default).
DEFAULT_SECRET_TTL = 600


class EventRefused(Refusal):
    """A client event the gateway will not forward; `event_id` is the client's, if any."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 event_id: str | None = None):
        super().__init__(message, param, code)
        self.event_id = event_id


def error_event(refusal: Refusal, event_id: str | None = None, *,
                kind: str = "invalid_request_error") -> dict:
    """OpenAI's `error` server event for a refusal (or a stop: a 429 code, its message and
    error type as `kind`). `error.event_id` names the client event refused (None when it had
    none or was no JSON)."""
    if event_id is None and isinstance(refusal, EventRefused):
        event_id = refusal.event_id
    return {"type": "error", "event_id": "event_gw_" + secrets.token_hex(8),
            "error": {"type": kind, "code": refusal.code,
                      "message": refusal.message, "param": refusal.param,
                      "event_id": event_id}}


class EventRate:
    """A token bucket: `per_second` events a second, bursts of as many. `take()` is False for
    an event over the rate."""

    def __init__(self, per_second: int, clock: Callable[[], float] = time.monotonic):
        self.per_second, self._clock = per_second, clock
        self._tokens, self._at = float(per_second), clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(float(self.per_second),
                           self._tokens + (now - self._at) * self.per_second)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


@dataclass(frozen=True, slots=True)
class Checked:
    """A client event that may be forwarded: its type and the text to send upstream."""

    type: str
    text: str


class EventChecker:
    """The checks of one session's client events (built by `RealtimePolicy.events`)."""

    def __init__(self, rules: SessionRules, *, model: str, models: frozenset[str] | None,
                 max_frame_bytes: int, rate: EventRate):
        self.rules, self.model, self.models = rules, model, models
        self.max_frame_bytes, self.rate = max_frame_bytes, rate

    def check(self, frame: str | bytes) -> Checked:
        """The event to forward, or `EventRefused` naming what is wrong with it."""
        raw = frame.encode() if isinstance(frame, str) else frame
        if len(raw) > self.max_frame_bytes:
            raise EventRefused(f"The event is too large: {len(raw)} bytes, this gateway allows "
                               f"{self.max_frame_bytes} (realtime.max_frame_bytes).", None,
                               "frame_too_large")
        if not self.rate.take():
            raise EventRefused(f"Too many events: this gateway allows "
                               f"{self.rate.per_second} a second "
                               "(realtime.max_events_per_second).", None, "rate_limit_exceeded")
        try:
            event = parse_object(raw)
        except Refusal as exc:
            raise EventRefused(exc.message.replace("body of your request", "event")
                               .replace("request body", "event"), None, "invalid_json") from None
        event_id = event.get("event_id")
        if not isinstance(event_id, str) or len(event_id) > MAX_EVENT_ID_CHARS:
            event_id = None
        kind = event.get("type")
        if not isinstance(kind, str) or kind not in CLIENT_EVENTS:
            raise EventRefused(f"Invalid event type {shown(kind)!r}: this gateway forwards "
                               "OpenAI's GA realtime client events only.", "type",
                               "invalid_event_type", event_id)
        try:
            changes = self._fields(kind, event)
        except Refusal as exc:
            raise EventRefused(exc.message, exc.param, exc.code, event_id) from None
        if not changes:
            return Checked(kind, frame if isinstance(frame, str) else raw.decode())
        return Checked(kind, orjson.dumps({**event, **changes}).decode())

    def _fields(self, kind: str, event: dict) -> dict:
        """The fields of the event to rewrite ({}: none)."""
        if kind == "session.update":
            if "session" not in event:
                raise Refusal("Missing required parameter: 'session'.", "session",
                              "missing_required_parameter")
            changes = self.rules.session(event["session"], self.models,
                                         current_model=self.model)
            return {"session": {**event["session"], **changes}} if changes else {}
        if kind == "response.create":
            changes = self.rules.response(event.get("response"), self.models)
            return {"response": {**event["response"], **changes}} if changes else {}
        return {}


@dataclass(frozen=True, slots=True)
class SecretRequest:
    """A client-secret request as the gateway grants it."""

    ttl: int
    session: dict


class RealtimePolicy:
    """Built once from [validation] and [realtime]; pure."""

    def __init__(self, validation: ValidationSettings, realtime: RealtimeSettings,
                 clock: Callable[[], float] = time.monotonic):
        self.settings = realtime
        self.rules = SessionRules(Bounds.from_settings(validation))
        self._clock = clock

    def events(self, model: str, models: frozenset[str] | None = None) -> EventChecker:
        """The event checker of one session of `model` for a caller allowed `models`."""
        return EventChecker(self.rules, model=model, models=models,
                            max_frame_bytes=self.settings.max_frame_bytes,
                            rate=EventRate(self.settings.max_events_per_second, self._clock))

    def client_secret(self, raw: bytes, models: frozenset[str] | None = None) -> SecretRequest:
        """A `POST /v1/realtime/client_secrets` body: `expires_after.seconds` in OpenAI's range
        (10-7200, default 600) capped to `realtime.max_ttl`; the session bounded."""
        body = parse_object(raw)
        unknown = sorted(set(body) - SECRET_FIELDS)
        if unknown:
            raise Refusal(f"Unknown parameter: '{shown(unknown[0], 60)}'.",
                          shown(unknown[0], 60), "unknown_parameter")
        ttl = _ttl(body.get("expires_after"))
        if "session" not in body:
            raise Refusal("Missing required parameter: 'session'.", "session",
                          "missing_required_parameter")
        session = self.rules.new_session(body["session"], models)
        return SecretRequest(min(ttl, self.settings.max_ttl), session)

    def call(self, sdp: object, *, session: bytes | bytearray | None = None,
             model: str | None = None,
             granted: dict | None = None, models: frozenset[str] | None = None
             ) -> tuple[str, dict]:
        """(the SDP offer, the bounded session) of a `POST /v1/realtime/calls`.

        sdp: the raw `application/sdp` body or the multipart `sdp` part; session: the multipart
        `session` part (JSON); model: the query's `?model=`; granted: the session of the
        gateway's client secret the call was made with. A session part is laid over the
        granted session like a `session.update` (its model may repeat, not change it).
        """
        offer = _offer(sdp)
        update = None
        if session is not None:
            update = parse_object(bytes(session))
        if granted is not None:
            if update is None:
                return offer, granted
            self.rules.session(update, models, current_model=granted.get("model"))
            return offer, self.rules.new_session(merge(granted, update), models)
        if update is None:
            if model is None:
                raise Refusal("Missing required parameter: 'model' (send a 'session' part, or "
                              "'?model=' with the SDP offer).", "model",
                              "missing_required_parameter")
            update = {"type": "realtime", "model": model}
        return offer, self.rules.new_session(update, models)


def _ttl(expires_after: object) -> int:
    if expires_after is None:
        return DEFAULT_SECRET_TTL
    if not isinstance(expires_after, dict):
        raise Refusal("Invalid type for 'expires_after': expected an object.", "expires_after",
                      "invalid_type")
    unknown = sorted(set(expires_after) - {"anchor", "seconds"})
    if unknown:
        raise Refusal(f"Unknown parameter: 'expires_after.{shown(unknown[0], 60)}'.",
                      f"expires_after.{shown(unknown[0], 60)}", "unknown_parameter")
    if expires_after.get("anchor", "created_at") != "created_at":
        raise Refusal("Invalid 'expires_after.anchor': only 'created_at' is supported.",
                      "expires_after.anchor", "invalid_value")
    seconds = expires_after.get("seconds", DEFAULT_SECRET_TTL)
    low, high = SECRET_TTL_RANGE
    if not isinstance(seconds, int) or isinstance(seconds, bool) or not low <= seconds <= high:
        raise Refusal(f"Invalid 'expires_after.seconds': expected an integer from {low} to "
                      f"{high}.", "expires_after.seconds", "invalid_value")
    return seconds


def _offer(sdp: object) -> str:
    if isinstance(sdp, bytes | bytearray):
        if len(sdp) > MAX_SDP_BYTES:
            raise Refusal(f"The SDP offer is too large: at most {MAX_SDP_BYTES} bytes.", "sdp",
                          "invalid_value")
        try:
            sdp = sdp.decode()
        except UnicodeDecodeError:
            sdp = None
    if not isinstance(sdp, str) or not sdp.startswith("v=0"):
        raise Refusal("Invalid 'sdp': expected an SDP offer (text starting with 'v=0').", "sdp",
                      "invalid_value")
    if len(sdp) > MAX_SDP_BYTES:
        raise Refusal(f"The SDP offer is too large: at most {MAX_SDP_BYTES} bytes.", "sdp",
                      "invalid_value")
    return sdp
