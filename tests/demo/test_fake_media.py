"""The fake voice and pictures upstream, asked directly by the official SDK: its answers parse as
OpenAI's types, streams arrive over time, media decode, parts are recorded byte for byte."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import time
import wave

import aiohttp
import av
import openai
import pytest
from aiohttp import FormData

from openai_gateway.demo.fake_media import FakeMedia
from openai_gateway.demo.fake_openai import FakeOpenAI
from openai_gateway.demo.media_formats import PCM_BYTES_PER_SECOND, png, wav, wav_seconds
from openai_gateway.demo.media_ledger import PartSeen


@pytest.fixture
async def fake(aiohttp_server):
    """(the fake's media part, an SDK client of it, the test server)."""
    media = FakeMedia()
    server = await aiohttp_server(FakeOpenAI(media=media).app())
    client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk-fake",
                                max_retries=0)
    yield media, client, server
    await client.close()


def decode_image(data: bytes) -> tuple[int, int]:
    """(width, height) of an image, decoded by FFmpeg (PyAV): a real decoder accepts it."""
    with av.open(io.BytesIO(data)) as container:
        frame = next(container.decode(video=0))
        return frame.width, frame.height


def sse_events(text: str) -> list[dict]:
    out = []
    for block in text.split("\n\n"):
        data = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
        if data:
            out.append(json.loads("".join(data)))
    return out


async def test_speech_arrives_in_chunks_over_time_and_is_a_wav(fake):
    media, client, _ = fake
    media.pace, media.chunk_bytes = 0.02, 9600
    arrivals, audio = [], b""
    async with client.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts", voice="alloy", input="Hello there, reader.",
            response_format="wav") as resp:
        assert resp.headers["content-type"] == "audio/wav"
        assert resp.headers.get("transfer-encoding") == "chunked"
        async for chunk in resp.iter_bytes():
            arrivals.append(time.monotonic())
            audio += chunk
    assert len(arrivals) >= 5 and arrivals[-1] - arrivals[0] >= 0.05
    seconds = wav_seconds(audio)
    assert seconds == pytest.approx(len("Hello there, reader.") / 15, abs=0.01)
    with wave.open(io.BytesIO(audio)) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (24000, 2, 1)
    assert media.ledger.produced[-1].usage["output_tokens"] == 27  # 1.33 s at 20 a second


async def test_speech_pcm_is_raw_samples(fake):
    media, client, _ = fake
    resp = await client.audio.speech.create(model="tts-1", voice="nova", input="x" * 30,
                                            response_format="pcm")
    assert len(resp.content) == 2 * PCM_BYTES_PER_SECOND  # 30 characters: 2 s
    assert media.ledger.produced[-1].usage == {"characters": 30}  # tts-1 bills characters


async def test_speech_sse_has_deltas_then_done_with_usage(fake):
    media, client, _ = fake
    resp = await client.audio.speech.create(model="gpt-4o-mini-tts", voice="coral",
                                            input="One two three.", stream_format="sse")
    events = sse_events(resp.text)
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(pcm) == int(len("One two three.") / 15 * 24000) * 2
    done = events[-1]
    assert done["type"] == "speech.audio.done"
    assert set(done["usage"]) == {"input_tokens", "output_tokens", "total_tokens"}
    assert done["usage"] == media.ledger.produced[-1].usage


async def test_speech_sse_is_refused_for_tts_1_as_openai_does(fake):
    _, client, _ = fake
    with pytest.raises(openai.BadRequestError) as e:
        await client.audio.speech.create(model="tts-1", voice="alloy", input="hi",
                                         stream_format="sse")
    assert e.value.body["param"] == "stream_format"


@pytest.mark.parametrize("model,kind", [("gpt-4o-transcribe", "tokens"),
                                        ("whisper-1", "duration")])
async def test_transcription_reports_usage_per_model(fake, model, kind):
    media, client, _ = fake
    audio = wav(3.0)
    result = await client.audio.transcriptions.create(model=model,
                                                      file=("talk.wav", audio, "audio/wav"))
    assert isinstance(result, openai.types.audio.Transcription)
    assert "3.0 seconds" in result.text
    assert result.usage.type == kind
    if kind == "duration":
        assert result.usage.seconds == 3
    else:
        assert result.usage.input_token_details.audio_tokens == 50  # 1,000 a minute
    seen = media.ledger.requests[-1]
    assert seen.content_type.startswith("multipart/form-data; boundary=")
    assert seen.files("file") == [PartSeen.of("file", "talk.wav", "audio/wav", audio)]
    assert seen.values("model") == [model]


async def test_transcription_stream_has_deltas_then_done_with_usage(fake):
    _, client, _ = fake
    stream = await client.audio.transcriptions.create(
        model="gpt-4o-mini-transcribe", file=("a.wav", wav(1.0), "audio/wav"), stream=True)
    events = [e async for e in stream]
    assert {e.type for e in events[:-1]} == {"transcript.text.delta"}
    assert events[-1].type == "transcript.text.done"
    assert "".join(e.delta for e in events[:-1]) == events[-1].text
    assert events[-1].usage.output_tokens == len(events[-1].text.split())


async def test_translation_json_has_no_usage_and_text_formats_are_text(fake):
    _, client, server = fake
    result = await client.audio.translations.create(model="whisper-1",
                                                    file=("a.wav", wav(2.0), "audio/wav"))
    assert result.text and getattr(result, "usage", None) is None
    srt = await client.audio.transcriptions.create(model="whisper-1", response_format="srt",
                                                   file=("a.wav", wav(2.0), "audio/wav"))
    assert srt.startswith("1\n00:00:00,000 --> 00:00:02,000\n")


async def test_image_generation_is_a_png_with_usage(fake):
    media, client, _ = fake
    result = await client.images.generate(model="gpt-image-1", prompt="a red fox", n=2,
                                          size="1024x1536", quality="low")
    assert len(result.data) == 2
    assert decode_image(base64.b64decode(result.data[0].b64_json)) == (64, 64)
    assert result.usage.output_tokens == 2 * 408
    assert media.ledger.produced[-1].usage == result.usage.model_dump(exclude_none=True)


async def test_dall_e_bills_images_and_reports_no_usage(fake):
    media, client, _ = fake
    result = await client.images.generate(model="dall-e-3", prompt="a fox", size="1024x1792",
                                          quality="hd")
    assert result.data[0].url and result.usage is None
    assert media.ledger.produced[-1].usage == {"images": 1, "size": "1024x1792",
                                               "quality": "hd"}


async def test_image_stream_sends_partials_then_completed_with_usage(fake):
    _, client, _ = fake
    stream = await client.images.generate(model="gpt-image-1", prompt="a fox", stream=True,
                                          partial_images=2, quality="high")
    events = [e async for e in stream]
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + [
        "image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    assert events[-1].usage.output_tokens == 4160 + 2 * 100  # partials cost 100 each
    assert decode_image(base64.b64decode(events[-1].b64_json)) == (64, 64)


async def test_image_events_can_carry_megabytes(fake):
    media, _, server = fake
    media.image_event_bytes = 3_000_000
    async with aiohttp.ClientSession() as session:
        async with session.post(server.make_url("/v1/images/generations"), json={
                "model": "gpt-image-1", "prompt": "big", "stream": True,
                "partial_images": 1}) as resp:
            body = await resp.read()
    blocks = body.split(b"\n\n")[:-1]
    assert len(blocks) == 2
    for block in blocks:
        assert 3_000_000 <= len(block) < 3_001_000
    last = json.loads(blocks[-1].split(b"data: ", 1)[1])
    image = base64.b64decode(last["b64_json"])
    assert decode_image(image) == (64, 64)  # the padding chunk is skipped by decoders
    assert last["usage"]["output_tokens"] == 1056 + 100


async def test_image_edit_records_every_image_part_and_the_mask(fake):
    media, client, _ = fake
    a, b, m = png(seed=1), png(seed=2), png(seed=3)
    result = await client.images.edit(model="gpt-image-1", prompt="merge them",
                                      image=[("a.png", a, "image/png"), ("b.png", b, "image/png")],
                                      mask=("m.png", m, "image/png"))
    assert result.usage.input_tokens_details.image_tokens == 3 * (65 + 4 * 129)
    seen = media.ledger.requests[-1]
    assert seen.files("image[]") == [PartSeen.of("image[]", "a.png", "image/png", a),
                                     PartSeen.of("image[]", "b.png", "image/png", b)]
    assert seen.files("mask") == [PartSeen.of("mask", "m.png", "image/png", m)]
    assert seen.files("image[]")[0].sha256 == hashlib.sha256(a).hexdigest()


async def test_image_edit_json_form(fake):
    media, client, server = fake
    async with aiohttp.ClientSession() as session:
        async with session.post(server.make_url("/v1/images/edits"), json={
                "model": "gpt-image-1.5", "prompt": "p", "images": [
                    {"image_url": "data:image/png;base64,"
                     + base64.b64encode(png()).decode()}, {"file_id": "file-1"}]}) as resp:
            doc = await resp.json()
    assert resp.status == 200 and doc["usage"]["input_tokens_details"]["image_tokens"] > 0
    assert media.ledger.requests[-1].json["images"][1] == {"file_id": "file-1"}


async def test_a_file_field_sent_as_text_is_refused_as_openai_would(fake):
    """A relay that turns image[] file parts into text fields meets a 400."""
    _, _, server = fake
    form = FormData(default_to_multipart=True)
    form.add_field("prompt", "p")
    form.add_field("image[]", "not a file")
    async with aiohttp.ClientSession() as session:
        async with session.post(server.make_url("/v1/images/edits"), data=form) as resp:
            doc = await resp.json()
    assert resp.status == 400 and doc["error"]["param"] == "image[]"
