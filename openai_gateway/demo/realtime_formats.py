"""OpenAI's realtime formats, as pure functions: the session object, usage, events, errors.

Shapes as the GA Realtime API sends them (`/v1/realtime`, no `OpenAI-Beta` header); the
official SDK's types validate them (tests/test_fake_realtime.py). How the fake counts tokens:

- text: a prompt part costs `count_tokens` (about four characters a token); an answer costs
  one token a word;
- input audio: `AUDIO_BYTES_PER_TOKEN` bytes of 24 kHz 16-bit mono PCM a token (ten a second,
  OpenAI's documented rate is of that order), rounded up per item;
- output audio: `AUDIO_TOKENS_PER_WORD` audio tokens per spoken word, besides the word's
  transcript token (counted as output text, as OpenAI does);
- an input image: `IMAGE_TOKENS`;
- cached input: what the previous response of the session already read (prefix caching),
  reported inside the input tokens, as OpenAI does.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from .formats import count_tokens, new_id

#: 24 000 samples a second of 16-bit PCM is 48 000 bytes: ten tokens a second.
AUDIO_BYTES_PER_TOKEN = 4800
#: Some 20 audio tokens a second of speech at some 2.5 words a second.
AUDIO_TOKENS_PER_WORD = 8
#: A low-detail image.
IMAGE_TOKENS = 85
#: 20 ms of 24 kHz 16-bit silence: the audio of one `response.output_audio.delta`.
AUDIO_CHUNK = bytes(960)
DEFAULT_INSTRUCTIONS = "You are a fake realtime model. Your answers are numbered words."
#: Every session field the GA API knows; anything else in a `session` object is an error.
SESSION_FIELDS = frozenset({
    "type", "model", "instructions", "output_modalities", "audio", "include", "tracing",
    "tools", "tool_choice", "parallel_tool_calls", "reasoning", "max_output_tokens",
    "truncation", "prompt"})


def event(kind: str, **fields) -> dict:
    """A server event: its type, a fresh event_id, then its fields."""
    return {"type": kind, "event_id": new_id("event_"), **fields}


def error_event(message: str, *, kind: str = "invalid_request_error", code: str | None = None,
                param: str | None = None, event_id: str | None = None) -> dict:
    """OpenAI's `error` server event; `event_id` names the client event that caused it."""
    return event("error", error={"type": kind, "code": code, "message": message,
                                 "param": param, "event_id": event_id})


def http_error(message: str, code: str | None = None, param: str | None = None,
               kind: str = "invalid_request_error") -> dict:
    """OpenAI's error body for an HTTP answer."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def default_session(model: str) -> dict:
    """A new session's configuration, as `session.created` shows it."""
    vad = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
           "silence_duration_ms": 200, "idle_timeout_ms": None, "create_response": True,
           "interrupt_response": True}
    pcm = {"type": "audio/pcm", "rate": 24000}
    return {"type": "realtime", "object": "realtime.session", "id": new_id("sess_"),
            "model": model, "output_modalities": ["audio"],
            "instructions": DEFAULT_INSTRUCTIONS, "tools": [], "tool_choice": "auto",
            "max_output_tokens": "inf", "tracing": None, "truncation": "auto", "prompt": None,
            "expires_at": int(time.time()) + 3600,
            "audio": {"input": {"format": pcm, "transcription": None, "noise_reduction": None,
                                "turn_detection": vad},
                      "output": {"format": pcm, "voice": "alloy", "speed": 1.0}},
            "include": None}


def session_problem(update: object) -> tuple[str, str] | None:
    """(message, param) of what is wrong with a session configuration, or None."""
    if not isinstance(update, dict):
        return "The session must be an object.", "session"
    unknown = sorted(set(update) - SESSION_FIELDS)
    if unknown:
        return f"Unknown parameter: 'session.{unknown[0]}'.", f"session.{unknown[0]}"
    if update.get("type", "realtime") != "realtime":
        return "Only realtime sessions are supported here.", "session.type"
    cap = update.get("max_output_tokens", "inf")
    if cap != "inf" and not (isinstance(cap, int) and not isinstance(cap, bool)
                             and 1 <= cap <= 4096):
        return ("Invalid 'session.max_output_tokens': expected an integer between 1 and 4096 "
                "or 'inf'.", "session.max_output_tokens")
    modalities = update.get("output_modalities", ["audio"])
    if modalities not in (["audio"], ["text"]):
        return "Invalid 'session.output_modalities'.", "session.output_modalities"
    return None


def merge_session(current: dict, update: dict) -> dict:
    """`current` with the fields of a session update: `audio.input` and `audio.output` merge
    field by field, every other field is replaced (the model never changes)."""
    merged = {**current, **{k: v for k, v in update.items() if k not in ("model", "audio")}}
    audio = update.get("audio")
    if isinstance(audio, dict):
        merged["audio"] = {side: {**current["audio"][side], **(audio.get(side) or {})}
                           for side in ("input", "output")}
    return merged


@dataclass
class Tokens:
    """Tokens by modality."""

    text: int = 0
    audio: int = 0
    image: int = 0

    @property
    def total(self) -> int:
        return self.text + self.audio + self.image

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(self.text + other.text, self.audio + other.audio, self.image + other.image)

    def capped(self, limit: Tokens) -> Tokens:
        return Tokens(min(self.text, limit.text), min(self.audio, limit.audio),
                      min(self.image, limit.image))


def audio_tokens(pcm: bytes) -> int:
    return -(-len(pcm) // AUDIO_BYTES_PER_TOKEN)


def item_tokens(item: dict) -> Tokens:
    """What a conversation item costs the model to read."""
    tokens = Tokens()
    for part in item.get("content") or []:
        kind = part.get("type")
        if kind in ("input_text", "text", "output_text"):
            tokens.text += count_tokens(part.get("text") or "")
        elif kind == "input_image":
            tokens.image += IMAGE_TOKENS
        elif kind in ("input_audio", "output_audio"):
            tokens.audio += part.get("_audio_tokens", 0)  # its transcript is not read again
    if item.get("type") in ("function_call", "function_call_output"):
        tokens.text += count_tokens(str(item.get("arguments") or item.get("output") or ""))
    return tokens


def usage_doc(read: Tokens, cached: Tokens, out_text: int, out_audio: int) -> dict:
    """OpenAI's `response.usage`: cached tokens are counted inside the input tokens."""
    return {"total_tokens": read.total + out_text + out_audio,
            "input_tokens": read.total, "output_tokens": out_text + out_audio,
            "input_token_details": {
                "text_tokens": read.text, "audio_tokens": read.audio,
                "image_tokens": read.image, "cached_tokens": cached.total,
                "cached_tokens_details": {"text_tokens": cached.text,
                                          "audio_tokens": cached.audio,
                                          "image_tokens": cached.image}},
            "output_token_details": {"text_tokens": out_text, "audio_tokens": out_audio}}


def transcription_usage(audio: int, transcript: str) -> dict:
    """The usage of an input audio transcription (billed at the transcription model's rates)."""
    out = len(transcript.split())
    return {"type": "tokens", "total_tokens": audio + out, "input_tokens": audio,
            "input_token_details": {"text_tokens": 0, "audio_tokens": audio},
            "output_tokens": out}


def public_item(item: dict) -> dict:
    """An item as events show it: without its audio bytes and the fake's bookkeeping."""
    content = [{k: v for k, v in part.items() if not k.startswith("_") and k != "audio"}
               for part in item.get("content") or []]
    return {**item, "content": content} if "content" in item else dict(item)
