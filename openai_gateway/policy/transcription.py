"""`POST /v1/audio/transcriptions` and `/v1/audio/translations`: the rules over their multipart
fields, and what they ask to be made.

Parameters are OpenAI's (spec: CreateTranscriptionRequest, CreateTranslationRequest; SDK 3.57:
TranscriptionCreateParams, TranslationCreateParams), written as the SDKs write multipart
fields: arrays with brackets (`include[]`), objects with keys in brackets
(`chunking_strategy[type]`). `file` is one file part. `response_format` and
`timestamp_granularities[]` must be in their `[validation]` allowlists; `prompt`, `keywords[]`
and `known_speaker_names[]` count in `validation.max_input_chars`.

How long the upload plays, from above (`audio_seconds`): its size over the fewest bytes a
second its format can hold.
- WAV of PCM, float, A-law or mu-law samples: sample rate x block align, from its header;
- MP3: 1,000 bytes a second (8 kbit/s, the lowest bitrate of MPEG layer III);
- anything else: 750 bytes a second (6 kbit/s, Opus's lowest bitrate; the Opus in WebM or Ogg
  that browsers record is the usual case). FLAC, AAC and a WAV of another codec can hold
  silence in fewer bytes a second: such a file is reserved for less than it plays, and its
  answer's usage (tokens, or whisper-1's seconds) settles it.
- at most MAX_SECONDS for the models that refuse longer audio (OpenAI answers 400 past it).
Each `known_speaker_references[]` sample adds 10 s (OpenAI takes samples of 2 to 10 s).
A token-billed model reads AUDIO_TOKENS_PER_SECOND for each second and writes at most
MAX_OUTPUT_TOKENS.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..config.settings import ValidationSettings
from . import sniff
from .fields import Fields, utf8_bytes
from .form import Form, FormPart
from .media import SNAPSHOT
from .refusal import Refusal
from .units import Kind, Units

TRANSCRIPTIONS = "/v1/audio/transcriptions"
TRANSLATIONS = "/v1/audio/translations"
FILES = frozenset({"file"})
TEXT = {
    TRANSCRIPTIONS: frozenset({
        "model", "language", "languages[]", "keywords[]", "prompt", "response_format",
        "temperature", "include[]", "timestamp_granularities[]", "stream",
        "chunking_strategy", "chunking_strategy[type]", "chunking_strategy[prefix_padding_ms]",
        "chunking_strategy[silence_duration_ms]", "chunking_strategy[threshold]",
        "known_speaker_names[]"}),
    TRANSLATIONS: frozenset({"model", "prompt", "response_format", "temperature"}),
}
#: Text parameters that carry data (audio samples as data URLs): counted, not read.
DATA = {TRANSCRIPTIONS: frozenset({"known_speaker_references[]"}), TRANSLATIONS: frozenset()}
#: A translation's formats (no diarized_json).
TRANSLATION_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
INCLUDE = ("logprobs",)
#: MP3's lowest bitrate (MPEG-2.5 layer III, 8 kbit/s): no MP3 plays longer per byte.
MP3_MIN_BYTES_PER_SECOND = 1000
#: Opus's lowest bitrate (RFC 6716: 6 kbit/s), the floor for every other format.
MIN_BYTES_PER_SECOND = 750
#: Audio OpenAI refuses past this length, by model: "audio duration ... is longer than 1400
#: seconds which is the maximum for this model" (1500 in earlier reports; the larger is kept).
MAX_SECONDS = dict.fromkeys(("gpt-4o-transcribe", "gpt-4o-mini-transcribe",
                             "gpt-4o-transcribe-diarize"), 1500)
#: OpenAI's per-minute estimate for gpt-4o-transcribe ($0.006 at $6 per 1M audio tokens) is
#: 1,000 audio tokens a minute, 16.7 a second; one per 50 ms is the bound.
AUDIO_TOKENS_PER_SECOND = 20
#: gpt-4o-transcribe and gpt-4o-mini-transcribe write at most 2,000 tokens (model pages).
MAX_OUTPUT_TOKENS = 2000
#: Seconds one known speaker sample may hold.
SPEAKER_SAMPLE_SECONDS = 10
MAX_SPEAKERS = 4


@dataclass(frozen=True, slots=True)
class Audio:
    units: Units
    #: `stream: true` (transcriptions only; whisper-1 ignores it and answers JSON).
    stream: bool
    #: Characters of text the model reads, for max_input_chars.
    chars: int


def check(route: str, form: Form, model: str | None, rules: ValidationSettings,
          upload_bytes: int) -> Audio:
    """The rules above over a collected form (policy.form.collect with TEXT[route], FILES
    and DATA[route]); raises `Refusal` naming the parameter."""
    files = form.files.get("file")
    if not files:
        raise Refusal("Missing required parameter: 'file'.", "file")
    fields = Fields(form.text, text=True)
    formats = rules.transcription_formats if route == TRANSCRIPTIONS else tuple(
        f for f in rules.transcription_formats if f in TRANSLATION_FORMATS)
    fields.choice("response_format", formats, "transcription_formats")
    fields.number("temperature", 0.0, 1.0)
    prompt = fields.string("prompt")
    stream = False
    words: list[str] = []
    references = form.data.get("known_speaker_references[]", [])
    if route == TRANSCRIPTIONS:
        stream = bool(fields.boolean("stream"))
        fields.string("language")
        fields.strings("languages[]")
        fields.strings("include[]", INCLUDE)
        fields.strings("timestamp_granularities[]", rules.timestamp_granularities,
                       "timestamp_granularities")
        _chunking(fields)
        words = fields.strings("keywords[]") + fields.strings("known_speaker_names[]")
        if len(references) > MAX_SPEAKERS:
            raise Refusal(f"'known_speaker_references[]' has {len(references)} samples; at "
                          f"most {MAX_SPEAKERS} are allowed.", "known_speaker_references[]")
    seconds = upload_seconds(files[0], model) + SPEAKER_SAMPLE_SECONDS * len(references)
    kind: Kind = "transcription" if route == TRANSCRIPTIONS else "translation"
    units = Units(kind, text_tokens=utf8_bytes(prompt, *words), audio_seconds=seconds,
                  audio_input_tokens=seconds * AUDIO_TOKENS_PER_SECOND,
                  output_tokens=MAX_OUTPUT_TOKENS, upload_bytes=upload_bytes)
    return Audio(units, stream, len(prompt or "") + sum(map(len, words)))


def upload_seconds(file: FormPart, model: str | None) -> int:
    """The most seconds `file` can play (see the module docstring), whole seconds up."""
    per_second = sniff.wav_rate(file.head) or (
        MP3_MIN_BYTES_PER_SECOND if sniff.is_mp3(file.head) else MIN_BYTES_PER_SECOND)
    seconds = math.ceil(file.size / per_second)
    cap = MAX_SECONDS.get(SNAPSHOT.sub("", model)) if model else None
    return min(seconds, cap) if cap else seconds


def _chunking(fields: Fields) -> None:
    """`chunking_strategy`: "auto", or a server VAD object in bracketed fields."""
    fields.choice("chunking_strategy", ("auto",))
    vad = [n for n in fields.values if n.startswith("chunking_strategy[")]
    if not vad:
        return
    if fields.given("chunking_strategy"):
        raise Refusal("'chunking_strategy' is given both as \"auto\" and as an object.",
                      "chunking_strategy")
    fields.choice("chunking_strategy[type]", ("server_vad",))
    if not fields.given("chunking_strategy[type]"):
        raise Refusal("Missing required parameter: 'chunking_strategy[type]'.",
                      "chunking_strategy[type]")
    fields.integer("chunking_strategy[prefix_padding_ms]", 0, 60_000)
    fields.integer("chunking_strategy[silence_duration_ms]", 0, 60_000)
    fields.number("chunking_strategy[threshold]", 0.0, 1.0)
