"""The cache's rules for the voice and pictures routes (which requests may be replayed), and
the entries of answers that are neither JSON nor SSE (speech audio, subtitles)."""
from __future__ import annotations

import orjson
import pytest

from openai_gateway.cache.keys import Entry
from openai_gateway.cache.prompts import media_cacheable
from openai_gateway.config.settings import ValidationSettings
from openai_gateway.policy import RequestPolicy
from openai_gateway.policy.form import FormPart

POLICY = RequestPolicy(ValidationSettings(allowed_models=()))


def json_request(route: str, **body):
    return POLICY.check(route, orjson.dumps(body))


def transcription(**fields: str):
    parts = [FormPart("file", "a.wav", "audio/wav", 10_000, head=b"")]
    parts += [FormPart(name, None, None, len(value), value) for name, value in fields.items()]
    return POLICY.check_form("/v1/audio/transcriptions", parts, upload_bytes=10_000)


SPEECH = {"model": "tts-1", "input": "hi", "voice": "alloy"}
IMAGE = {"model": "gpt-image-1-mini", "prompt": "a fox"}


@pytest.mark.parametrize("parsed, sampled, cacheable", [
    (json_request("/v1/audio/speech", **SPEECH), False, True),
    (json_request("/v1/audio/speech", **SPEECH, stream_format="sse"), True, False),
    (transcription(model="whisper-1"), False, True),                 # default temperature 0
    (transcription(model="whisper-1", temperature="0.0"), False, True),
    (transcription(model="whisper-1", temperature="0.3"), False, False),
    (transcription(model="whisper-1", temperature="0.3"), True, True),
    (transcription(model="gpt-4o-transcribe", stream="true"), True, False),
    (json_request("/v1/images/generations", **IMAGE), False, False),  # sampled
    (json_request("/v1/images/generations", **IMAGE), True, True),
    (json_request("/v1/images/generations", **IMAGE, response_format="url"), True, False),
    (json_request("/v1/images/generations", model="dall-e-3", prompt="p"), True, False),
    (json_request("/v1/images/generations", model="dall-e-3", prompt="p",
                  response_format="b64_json"), True, True),
    (json_request("/v1/images/generations", **IMAGE, stream=True), True, False),
])
def test_which_media_answers_may_be_replayed(parsed, sampled, cacheable):
    assert media_cacheable(parsed, sampled) is cacheable


def test_a_typed_entry_keeps_its_content_type():
    entry = Entry(False, b"RIFF\x00\x01binary\nwith newlines", "audio/wav")
    assert Entry.decode(entry.encode()) == entry
    assert Entry.decode(entry.encode(), trusted=True) == entry
    text = Entry(False, b"1\n00:00:00,000 --> 00:00:02,000\nhi\n", "text/plain; charset=utf-8")
    assert Entry.decode(text.encode()) == text


@pytest.mark.parametrize("raw", [b"Taudio/wav", b"Tnot a type\nbody", b"T" + b"a/" + b"b" * 300
                                 + b"\nbody", b"Taudio/wav\r\x00\nbody"])
def test_a_typed_entry_that_does_not_parse_is_a_miss(raw):
    assert Entry.decode(raw) is None
