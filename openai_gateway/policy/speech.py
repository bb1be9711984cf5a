"""`POST /v1/audio/speech`: the request rules, and what it asks to be made.

Parameters are OpenAI's (spec: CreateSpeechRequest; SDK 3.57: SpeechCreateParams); any other is
refused. `input` is at most 4,096 characters (OpenAI's limit; more is a 400 naming `input`),
and `input` plus `instructions` count in `validation.max_input_chars` (the model reads both).
`voice` (a name, or a custom voice `{"id": ...}`), `response_format` and `stream_format` must be
in their `[validation]` allowlists.

The audio a token-billed model (gpt-4o-mini-tts) generates is bounded by AUDIO_TOKENS_PER_CHAR
tokens per input character at speed 1, divided by `speed`. Measured: 4,096 characters became
268 s of speech billed 5,392 audio tokens (20 a second, 1.32 a character); the bound leaves 2.3
times that for slow delivery asked in `instructions`, and a slower `speed` stretches the same
words over more seconds. OpenAI publishes no cap of its own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..config.settings import ValidationSettings
from . import sniff
from .fields import Fields, unknown, utf8_bytes
from .refusal import Refusal, shown
from .units import Units

ROUTE = "/v1/audio/speech"
FIELDS = frozenset({"model", "input", "voice", "instructions", "response_format", "speed",
                    "stream_format"})
#: OpenAI's limit on `input` (and on `instructions`).
MAX_INPUT_CHARS = 4096
#: Audio tokens per input character at speed 1, an upper bound (see the module docstring).
AUDIO_TOKENS_PER_CHAR = 3
#: OpenAI's range for `speed`.
SPEEDS = (0.25, 4.0)
#: OpenAI's speech PCM: 24 kHz, 16-bit signed little-endian samples, one channel.
PCM_BYTES_PER_SECOND = 48_000
#: Audio tokens a second of generated speech is billed, from above: OpenAI counts output
#: audio at 1 token per 50 ms (20 a second; the measured bill above: 20.1), and half as much
#: again is the margin. With the seconds an uncompressed answer plays, this bounds an audio
#: answer that reports no usage far closer than AUDIO_TOKENS_PER_CHAR does.
AUDIO_TOKENS_PER_SECOND = 30


@dataclass(frozen=True, slots=True)
class Speech:
    units: Units
    #: Answered as server-sent events (`stream_format: "sse"`), else as audio bytes.
    sse: bool
    #: Characters the model reads (`input` and `instructions`), for max_input_chars.
    chars: int


def check(body: dict, rules: ValidationSettings) -> Speech:
    """The rules above over a parsed JSON body; raises `Refusal` naming the parameter."""
    unknown(body, FIELDS)
    fields = Fields(body)
    text = fields.string("input", required=True, max_chars=MAX_INPUT_CHARS)
    assert text is not None
    instructions = fields.string("instructions", max_chars=MAX_INPUT_CHARS)
    _voice(body.get("voice"), rules.speech_voices)
    fields.choice("response_format", rules.speech_formats, "speech_formats")
    stream_format = fields.choice("stream_format", rules.speech_stream_formats,
                                  "speech_stream_formats")
    speed = fields.number("speed", *SPEEDS) or 1.0
    units = Units("speech", characters=len(text), text_tokens=utf8_bytes(text, instructions),
                  audio_output_tokens=math.ceil(len(text) * AUDIO_TOKENS_PER_CHAR / speed))
    return Speech(units, stream_format == "sse", len(text) + len(instructions or ""))


def _voice(voice, allowed: tuple[str, ...]) -> None:
    if voice is None:
        raise Refusal("Missing required parameter: 'voice'.", "voice")
    name = voice
    if isinstance(voice, dict):  # a custom voice: {"id": "voice_1234"}
        unknown((f"voice.{k}" for k in voice if k != "id"), frozenset())
        name = voice.get("id")
    if not isinstance(name, str):
        raise Refusal("Invalid type for 'voice': expected a voice name or {\"id\": ...}.",
                      "voice")
    if name not in allowed:
        raise Refusal(f"Invalid value for 'voice': {shown(name)!r} is not available through "
                      f"this gateway; allowed: {', '.join(allowed) or 'none'} "
                      "(validation.speech_voices).", "voice")


def played_seconds(response_format: str | None, head: bytes, size: int) -> float | None:
    """How long `size` bytes of a speech answer play at most: PCM at OpenAI's rate, WAV at the
    rate its own header states (`head`: its first bytes); None for the compressed formats
    (MP3, Opus, AAC, FLAC), whose bytes say nothing certain of their length."""
    if response_format == "pcm":
        return size / PCM_BYTES_PER_SECOND
    if response_format == "wav":
        rate = sniff.wav_rate(head)
        return size / rate if rate else None
    return None
