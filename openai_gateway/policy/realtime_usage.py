"""What a realtime session's server events say it cost, pure: `Charge`s, and the session's
model and input transcription model as the upstream last reported them.

Billed events (OpenAI's API reference):
- `response.done` ("always emitted, no matter the final state"): `response.usage`, "this will
  correspond to billing": text, audio and image input tokens, cached tokens among them (with
  their own `cached_tokens_details`), text and audio output tokens. A response cancelled or cut
  at its cap is billed what it generated;
- `conversation.item.input_audio_transcription.completed`: `usage` billed "according to the
  ASR model's pricing": tokens (`{"type": "tokens", ...}`) or seconds of audio
  (`{"type": "duration", "seconds": ...}`, for models priced by the minute).
Only the top-level `type` of an event is believed (a transcript or a tool's arguments may
spell any event), and a usage that cannot be read is a charge with `usage=None`: the meter then
charges what it reserved, never nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

from .usage import Usage, usage_of

RESPONSE_CREATED = "response.created"
RESPONSE_DONE = "response.done"
TRANSCRIBED = "conversation.item.input_audio_transcription.completed"
SESSION_EVENTS = ("session.created", "session.updated")
#: The event types a relay must read (the others pass unread): a frame that does not hold one
#: of these strings cannot be one of them. A frame that does is parsed to be sure.
WATCHED = (RESPONSE_CREATED, RESPONSE_DONE, TRANSCRIBED, *SESSION_EVENTS)


@dataclass(frozen=True, slots=True)
class Charge:
    """One billed thing of a session.

    kind: "response" (a response.done: settles one reserved response) or "transcription".
    model: the model whose prices apply (the session's, or its transcription model).
    usage: the tokens, None when the event carried no readable usage (charge the reservation).
    seconds: audio seconds of a duration-billed transcription (0.0 otherwise).
    response_id, status: the response's, for logs ("" for a transcription).
    """

    kind: str
    model: str
    usage: Usage | None
    seconds: float = 0.0
    response_id: str = ""
    status: str = ""


def watched(frame: str) -> bool:
    """Might this server frame be one the relay must read? (A cheap test before parsing.)"""
    return any(kind in frame for kind in WATCHED)


def response_charge(event: dict, model: str) -> Charge:
    """The charge of a `response.done` event."""
    response = event.get("response")
    response = response if isinstance(response, dict) else {}
    rid, status = response.get("id"), response.get("status")
    return Charge("response", model, usage_of(response.get("usage")),
                  response_id=rid if isinstance(rid, str) else "",
                  status=status if isinstance(status, str) else "")


def transcription_charge(event: dict, model: str) -> Charge:
    """The charge of an input transcription's `completed` event (tokens or seconds)."""
    usage = event.get("usage")
    if isinstance(usage, dict) and usage.get("type") == "duration":
        seconds = usage.get("seconds")
        if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0:
            return Charge("transcription", model, Usage(), seconds=float(seconds))
        return Charge("transcription", model, None)
    return Charge("transcription", model, usage_of(usage))


def session_models(event: dict) -> tuple[str | None, str | None]:
    """(the session's model, its input transcription model) as `session.created` or
    `session.updated` shows them; None where the event does not say."""
    session = event.get("session")
    if not isinstance(session, dict):
        return None, None
    model = session.get("model")
    audio = session.get("audio")
    inner = audio.get("input") if isinstance(audio, dict) else None
    transcription = inner.get("transcription") if isinstance(inner, dict) else None
    asr = transcription.get("model") if isinstance(transcription, dict) else None
    return (model if isinstance(model, str) else None, asr if isinstance(asr, str) else None)


def max_output_of(event: dict) -> object:
    """A `response.created` event's `response.max_output_tokens` (int, "inf" or None)."""
    response = event.get("response")
    return response.get("max_output_tokens") if isinstance(response, dict) else None
