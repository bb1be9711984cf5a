"""The request policy of speech, transcription and translation: each rule refuses with a 400
naming its parameter, and what is let through carries the units it is priced by."""
from __future__ import annotations

import math

import orjson
import pytest

from openai_gateway.config.settings import ValidationSettings
from openai_gateway.demo.media_formats import wav
from openai_gateway.policy import Refusal, RequestPolicy
from openai_gateway.policy.form import HEAD_BYTES, FormPart
from openai_gateway.policy.speech import AUDIO_TOKENS_PER_CHAR
from openai_gateway.policy.transcription import (
    AUDIO_TOKENS_PER_SECOND,
    MAX_OUTPUT_TOKENS,
    MIN_BYTES_PER_SECOND,
    MP3_MIN_BYTES_PER_SECOND,
)

MODELS = ("gpt-4o-mini-tts", "tts-1", "gpt-4o-transcribe", "whisper-1")
SPEECH = "/v1/audio/speech"
TRANSCRIBE = "/v1/audio/transcriptions"
TRANSLATE = "/v1/audio/translations"


def policy(**rules) -> RequestPolicy:
    return RequestPolicy(ValidationSettings(allowed_models=MODELS, **rules))


def speech(body: dict, **rules):
    return policy(**rules).check(SPEECH, orjson.dumps(
        {"model": "gpt-4o-mini-tts", "voice": "alloy", **body}))


def refused(call, *args, **kw) -> Refusal:
    with pytest.raises(Refusal) as e:
        call(*args, **kw)
    return e.value


def text(name: str, value: str) -> FormPart:
    data = value.encode()
    return FormPart(name, None, None, len(data), value)


def file(name: str, data: bytes, filename: str = "a.wav", ctype: str = "audio/wav",
         size: int | None = None) -> FormPart:
    return FormPart(name, filename, ctype, len(data) if size is None else size, None,
                    data[:HEAD_BYTES])


def form(route: str, *parts: FormPart, model: str = "gpt-4o-transcribe", **rules):
    given = list(parts)
    if not any(p.name == "model" for p in given):
        given.insert(0, text("model", model))
    return policy(**rules).check_form(route, given, upload_bytes=12345)


AUDIO = wav(2.0)  # 24 kHz, 16-bit mono: 48,000 bytes a second


# --- speech -----------------------------------------------------------------------------------


def test_speech_units_bound_the_audio_by_the_characters():
    parsed = speech({"input": "Hello, world", "instructions": "Speak calmly."})
    units = parsed.units
    assert units.kind == "speech" and units.characters == 12
    assert units.audio_output_tokens == 12 * AUDIO_TOKENS_PER_CHAR
    assert units.text_tokens == len("Hello, worldSpeak calmly.")
    assert parsed.input_chars == 12 + 13 and parsed.max_tokens == units.audio_output_tokens
    assert parsed.stream is False and parsed.model == "gpt-4o-mini-tts"


def test_a_slower_speed_is_more_audio():
    assert speech({"input": "x" * 10, "speed": 0.25}).units.audio_output_tokens == \
        10 * AUDIO_TOKENS_PER_CHAR * 4


def test_utf8_bytes_bound_the_text_tokens():
    assert speech({"input": "日本語"}).units.text_tokens == 9


def test_sse_is_a_stream():
    assert speech({"input": "hi", "stream_format": "sse"}).stream is True


def test_input_over_4096_characters_is_refused_naming_input():
    e = refused(speech, {"input": "x" * 4097}, max_input_chars=100_000)
    assert e.param == "input" and "4096" in e.message


def test_input_and_instructions_count_in_max_input_chars():
    e = refused(speech, {"input": "x" * 60, "instructions": "y" * 60}, max_input_chars=100)
    assert e.param == "input" and e.code == "context_length_exceeded"


@pytest.mark.parametrize("body, param", [
    ({"input": "hi", "voice": "robot"}, "voice"),
    ({"input": "hi", "voice": {"id": "voice_123"}}, "voice"),
    ({"input": "hi", "voice": {"id": "alloy", "name": "x"}}, "voice.name"),
    ({"input": "hi", "voice": 3}, "voice"),
    ({"input": "hi", "response_format": "ogg"}, "response_format"),
    ({"input": "hi", "stream_format": "websocket"}, "stream_format"),
    ({"input": "hi", "speed": 5}, "speed"),
    ({"input": "hi", "speed": "fast"}, "speed"),
    ({"input": 3}, "input"),
    ({"input": "hi", "seed": 1}, "seed"),
    ({"input": "hi", "model": "gpt-4o"}, "model"),
])
def test_speech_refusals_name_their_parameter(body, param):
    assert refused(speech, body).param == param


def test_speech_without_voice_or_input():
    assert refused(policy().check, SPEECH, b'{"model":"tts-1","input":"x"}').param == "voice"
    assert refused(policy().check, SPEECH, b'{"model":"tts-1","voice":"nova"}').param == "input"


def test_allowlists_are_the_operators():
    assert speech({"input": "hi", "voice": {"id": "voice_123"}},
                  speech_voices=("voice_123",)).units.characters == 2
    assert refused(speech, {"input": "hi", "response_format": "pcm"},
                   speech_formats=("mp3",)).param == "response_format"
    assert refused(speech, {"input": "hi", "stream_format": "sse"},
                   speech_stream_formats=("audio",)).message.endswith(
        "(validation.speech_stream_formats).")


def test_a_duplicate_key_is_refused():
    raw = b'{"model":"tts-1","voice":"alloy","input":"a","input":"b"}'
    assert refused(policy().check, SPEECH, raw).param == "input"


# --- multipart rules (policy.form) -------------------------------------------------------------


def test_transcription_units():
    parsed = form(TRANSCRIBE, file("file", AUDIO), text("prompt", "Names: Ada."),
                  text("response_format", "json"))
    units = parsed.units
    seconds = math.ceil(len(AUDIO) / 48_000)  # the header's rate: exactly 2 s and a header
    assert units.audio_seconds == seconds == 3
    assert units.audio_input_tokens == seconds * AUDIO_TOKENS_PER_SECOND
    assert units.output_tokens == MAX_OUTPUT_TOKENS and units.upload_bytes == 12345
    assert parsed.input_chars == len("Names: Ada.") and parsed.body["prompt"] == "Names: Ada."
    assert parsed.audio_tokens == units.audio_input_tokens and not parsed.stream


@pytest.mark.parametrize("head, per_second", [
    (b"ID3\x04" + b"\0" * 100, MP3_MIN_BYTES_PER_SECOND),
    (b"\xff\xfb\x90\x00" + b"\0" * 100, MP3_MIN_BYTES_PER_SECOND),
    (b"\x1aE\xdf\xa3" + b"\0" * 100, MIN_BYTES_PER_SECOND),  # WebM (Opus from a browser)
    (b"OggS" + b"\0" * 100, MIN_BYTES_PER_SECOND),
    (b"fLaC" + b"\0" * 100, MIN_BYTES_PER_SECOND),
    (b"RIFF\0\0\0\0WAVEfmt " + b"\0" * 100, MIN_BYTES_PER_SECOND),  # unreadable WAV
])
def test_the_upload_size_bounds_its_seconds_by_its_format(head, per_second):
    parsed = form(TRANSCRIBE, file("file", head, size=1_000_000), model="whisper-1")
    assert parsed.units.audio_seconds == math.ceil(1_000_000 / per_second)


def test_models_that_refuse_long_audio_are_capped():
    parsed = form(TRANSCRIBE, file("file", b"OggS", size=25_000_000))
    assert parsed.units.audio_seconds == 1500  # gpt-4o-transcribe refuses longer audio
    assert form(TRANSCRIBE, file("file", b"OggS", size=25_000_000),
                model="whisper-1").units.audio_seconds == math.ceil(25_000_000 / 750)


def test_stream_and_arrays_as_the_sdk_writes_them():
    parsed = form(TRANSCRIBE, file("file", AUDIO), text("stream", "true"),
                  text("include[]", "logprobs"), text("timestamp_granularities[]", "word"),
                  text("timestamp_granularities[]", "segment"),
                  text("chunking_strategy[type]", "server_vad"),
                  text("chunking_strategy[threshold]", "0.5"))
    assert parsed.stream is True and parsed.body["timestamp_granularities[]"] == [
        "word", "segment"]


def test_known_speakers_add_their_samples_seconds():
    sample = FormPart("known_speaker_references[]", None, None, 700_000, None)  # not read
    parsed = form(TRANSCRIBE, file("file", AUDIO), text("known_speaker_names[]", "agent"),
                  sample, text("known_speaker_references[]", "data:audio/wav;base64,AAAA"),
                  model="gpt-4o-transcribe")
    assert parsed.units.audio_seconds == 3 + 2 * 10 and parsed.input_chars == len("agent")
    e = refused(form, TRANSCRIBE, file("file", AUDIO), *[sample] * 5)
    assert e.param == "known_speaker_references[]"


@pytest.mark.parametrize("parts, param", [
    ([text("model", "whisper-1"), text("model", "gpt-4o-transcribe")], "model"),
    ([text("language", "en"), text("language", "fr")], "language"),
    ([text("file", "not a file")], "file"),
    ([text("temperature", "2")], "temperature"),
    ([text("temperature", "warm")], "temperature"),
    ([text("stream", "yes")], "stream"),
    ([text("response_format", "docx")], "response_format"),
    ([text("timestamp_granularities[]", "char")], "timestamp_granularities[]"),
    ([text("include[]", "everything")], "include[]"),
    ([text("unknown_field", "1")], "unknown_field"),
    ([file("prompt", b"x")], "prompt"),
    ([text("chunking_strategy", "auto"), text("chunking_strategy[type]", "server_vad")],
     "chunking_strategy"),
    ([text("chunking_strategy[threshold]", "0.5")], "chunking_strategy[type]"),
    ([text("chunking_strategy[type]", "client_vad")], "chunking_strategy[type]"),
    ([FormPart("prompt", None, None, 10**6, None)], "prompt"),
    ([FormPart(None, None, None, 1, "x")], None),
])
def test_transcription_refusals_name_their_parameter(parts, param):
    e = refused(form, TRANSCRIBE, file("file", AUDIO), *parts, model="whisper-1")
    assert e.param == param


def test_a_second_file_is_a_repeated_parameter():
    e = refused(form, TRANSCRIBE, file("file", AUDIO), file("file", AUDIO))
    assert e.param == "file" and "more than once" in e.message


def test_a_missing_file():
    assert refused(form, TRANSCRIBE, text("prompt", "x")).param == "file"


def test_translations_take_fewer_parameters_and_formats():
    assert form(TRANSLATE, file("file", AUDIO), model="whisper-1").units.kind == "translation"
    assert refused(form, TRANSLATE, file("file", AUDIO), text("stream", "true"),
                   model="whisper-1").param == "stream"
    assert refused(form, TRANSLATE, file("file", AUDIO), text("response_format",
                                                               "diarized_json"),
                   model="whisper-1").param == "response_format"


def test_the_model_allowlist_applies_to_a_form():
    e = refused(form, TRANSCRIBE, file("file", AUDIO), model="gpt-4o-mini-transcribe")
    assert e.param == "model" and e.code == "model_not_found"


def test_the_prompt_counts_in_max_input_chars():
    e = refused(form, TRANSCRIBE, file("file", AUDIO), text("prompt", "x" * 101),
                max_input_chars=100)
    assert e.param == "prompt" and e.code == "context_length_exceeded"
