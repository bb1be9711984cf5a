"""The voice and pictures routes through a real `python gateway.py`, asked by the official SDK:
speech arrives chunk by chunk as the upstream speaks, a WAV made here is transcribed (also as
a stream) and translated, an image stream carries partial images of megabytes, and an edit's
images and mask reach the upstream byte for byte (the fake hashes every part)."""
from __future__ import annotations

import base64
import io
import math
import struct
import time
import wave

import openai
import pytest

from openai_gateway.demo.media_formats import png, speech_seconds
from openai_gateway.demo.media_ledger import PartSeen

from ..conftest import ORIGIN

MODELS = ["gpt-4o-mini-tts", "tts-1", "gpt-4o-transcribe", "whisper-1", "gpt-image-1-mini"]


def spoken_wav(seconds: float, rate: int = 16_000) -> bytes:
    """A 440 Hz tone as a 16-bit mono WAV file, made with the `wave` module."""
    frames = int(seconds * rate)
    samples = struct.pack(f"<{frames}h", *(int(9000 * math.sin(2 * math.pi * 440 * i / rate))
                                           for i in range(frames)))
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples)
    return out.getvalue()


@pytest.fixture
async def sdk(gateway_process):
    gp = await gateway_process({"validation": {"allowed_models": MODELS},
                                "rate_limit": {"spend": ["10/day"]}})
    client = openai.AsyncOpenAI(base_url=gp.url + "/v1", api_key="unused", max_retries=0,
                                default_headers={"Origin": ORIGIN})
    yield client
    await client.close()


async def test_speech_arrives_chunk_by_chunk_as_it_is_spoken(sdk, fake):
    fake.media.pace, fake.media.chunk_bytes = 0.03, 9600
    text = "The gateway passes each piece of audio on as it arrives."
    arrivals, audio = [], b""
    t0 = time.monotonic()
    async with sdk.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts", voice="alloy", input=text, response_format="wav") as resp:
        assert resp.headers["content-type"] == "audio/wav"
        assert resp.headers.get("transfer-encoding") == "chunked"
        assert "x-gateway-cost-usd" not in resp.headers
        async for chunk in resp.iter_bytes():
            arrivals.append(time.monotonic() - t0)
            audio += chunk
    pieces = math.ceil(len(audio) / 9600)
    # The upstream took pieces x 0.03 s to speak; the client heard it over that time, the
    # first piece long before the last.
    assert len(arrivals) >= pieces // 2 and arrivals[-1] - arrivals[0] >= 0.5 * pieces * 0.03
    assert arrivals[0] < arrivals[-1] / 3
    with wave.open(io.BytesIO(audio)) as w:
        assert w.getnframes() / w.getframerate() == pytest.approx(speech_seconds(text), abs=0.01)


async def test_a_wav_made_here_is_transcribed_whole_and_as_a_stream(sdk, fake):
    audio = spoken_wav(3.0)
    result = await sdk.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("note.wav", audio, "audio/wav"), language="en")
    assert "3.0 seconds" in result.text and result.usage.type == "tokens"
    seen = fake.media.ledger.requests[-1]
    assert seen.files("file") == [PartSeen.of("file", "note.wav", "audio/wav", audio)]
    assert seen.values("language") == ["en"]

    events = []
    stream = await sdk.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("note.wav", audio, "audio/wav"), stream=True)
    async for event in stream:
        events.append(event)
    assert {e.type for e in events[:-1]} == {"transcript.text.delta"}
    assert events[-1].type == "transcript.text.done" and events[-1].usage.output_tokens > 0
    assert "".join(e.delta for e in events[:-1]) == events[-1].text


async def test_a_translation(sdk, fake):
    audio = spoken_wav(2.0)
    result = await sdk.audio.translations.create(model="whisper-1",
                                                 file=("fr.wav", audio, "audio/wav"))
    assert "translation of 2.0 seconds" in result.text
    assert fake.media.ledger.requests[-1].files("file")[0].sha256 == \
        PartSeen.of("file", "fr.wav", "audio/wav", audio).sha256


async def test_an_image_stream_carries_partial_images_of_megabytes(sdk, fake):
    fake.media.image_event_bytes = 3_000_000
    events = []
    stream = await sdk.images.generate(model="gpt-image-1-mini", prompt="a red fox",
                                       size="1024x1024", quality="low", stream=True,
                                       partial_images=2)
    async for event in stream:
        events.append(event)
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + [
        "image_generation.completed"]
    for event in events:
        image = base64.b64decode(event.b64_json)
        assert len(event.b64_json) >= 3_000_000 and image[:8] == b"\x89PNG\r\n\x1a\n"
    assert events[-1].usage.output_tokens == 272 + 2 * 100  # low 1024x1024 and two partials


async def test_an_edits_images_and_mask_reach_the_upstream_byte_for_byte(sdk, fake):
    a, b, m = png(seed=1), png(seed=2, total_bytes=400_000), png(seed=3)
    result = await sdk.images.edit(model="gpt-image-1-mini", prompt="put them together",
                                   image=[("a.png", a, "image/png"), ("b.png", b, "image/png")],
                                   mask=("mask.png", m, "image/png"), quality="low")
    assert result.usage.input_tokens_details.image_tokens > 0
    seen = fake.media.ledger.requests[-1]
    assert [p.name for p in seen.parts if p.filename] == ["image[]", "image[]", "mask"]
    assert seen.files("image[]") == [PartSeen.of("image[]", "a.png", "image/png", a),
                                     PartSeen.of("image[]", "b.png", "image/png", b)]
    assert seen.files("mask") == [PartSeen.of("mask", "mask.png", "image/png", m)]
