"""The voice and pictures requests of OpenAI's API reference (the `examples` of
openai/openai-openapi, written as the curl commands send them) pass the default policy with
their models allowed, and carry the units they are priced by."""
from __future__ import annotations

import orjson
import pytest

from openai_gateway.config.settings import ValidationSettings
from openai_gateway.policy import RequestPolicy
from openai_gateway.policy.form import FormPart

MODELS = ("gpt-4o-mini-tts", "gpt-4o-transcribe", "gpt-4o-transcribe-diarize",
          "gpt-4o-mini-transcribe", "whisper-1", "gpt-image-1.5")
POLICY = RequestPolicy(ValidationSettings(allowed_models=MODELS))
FOX = "The quick brown fox jumped over the lazy dog."
OTTER = {"model": "gpt-image-1.5", "prompt": "A cute baby sea otter", "n": 1,
         "size": "1024x1024"}
JSON_EXAMPLES = [
    ("/v1/audio/speech", {"model": "gpt-4o-mini-tts", "input": FOX, "voice": "alloy"}),
    ("/v1/audio/speech", {"model": "gpt-4o-mini-tts", "input": FOX, "voice": "alloy",
                          "stream_format": "sse"}),
    ("/v1/images/generations", OTTER),
    ("/v1/images/generations", dict(OTTER, stream=True)),
]


def field(name: str, value: str) -> FormPart:
    return FormPart(name, None, None, len(value.encode()), value)


def upload(name: str, filename: str, size: int = 50_000) -> FormPart:
    """curl -F name=@filename: a file part, its type guessed by curl."""
    return FormPart(name, filename, "application/octet-stream", size, None, b"ID3")


GIFTS = [field("model", "gpt-image-1.5")] + [
    upload("image[]", f"{n}.png") for n in ("body-lotion", "bath-bomb", "incense-kit", "soap")
] + [field("prompt", "Create a lovely gift basket with these four items in it")]
FORM_EXAMPLES = [
    ("/v1/audio/transcriptions", [upload("file", "audio.mp3"),
                                  field("model", "gpt-4o-transcribe")]),
    ("/v1/audio/transcriptions", [upload("file", "meeting.wav"),
                                  field("model", "gpt-4o-transcribe-diarize"),
                                  field("response_format", "diarized_json"),
                                  field("chunking_strategy", "auto"),
                                  field("known_speaker_names[]", "agent"),
                                  field("known_speaker_references[]",
                                        "data:audio/wav;base64,AAA...")]),
    ("/v1/audio/transcriptions", [upload("file", "audio.mp3"),
                                  field("model", "gpt-4o-mini-transcribe"),
                                  field("stream", "true")]),
    ("/v1/audio/transcriptions", [upload("file", "audio.mp3"), field("include[]", "logprobs"),
                                  field("model", "gpt-4o-transcribe"),
                                  field("response_format", "json")]),
    ("/v1/audio/transcriptions", [upload("file", "audio.mp3"),
                                  field("timestamp_granularities[]", "word"),
                                  field("model", "whisper-1"),
                                  field("response_format", "verbose_json")]),
    ("/v1/audio/translations", [upload("file", "german.m4a"), field("model", "whisper-1")]),
    ("/v1/images/edits", GIFTS),
    ("/v1/images/edits", [*GIFTS, field("stream", "true")]),
]


@pytest.mark.parametrize("route, body", JSON_EXAMPLES)
def test_json_examples_pass(route, body):
    parsed = POLICY.check(route, orjson.dumps(body))
    assert parsed.units is not None and parsed.model == body["model"]
    assert parsed.stream is (body.get("stream") is True or body.get("stream_format") == "sse")


@pytest.mark.parametrize("route, parts", FORM_EXAMPLES)
def test_multipart_examples_pass(route, parts):
    parsed = POLICY.check_form(route, parts, upload_bytes=sum(p.size for p in parts))
    assert parsed.units is not None and parsed.model in MODELS
    if route == "/v1/images/edits":
        assert parsed.units.input_images == 4
    else:
        assert parsed.units.audio_seconds >= 50  # 50 KB at 1,000 bytes a second at most
