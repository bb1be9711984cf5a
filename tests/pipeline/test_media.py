"""The voice and pictures routes through the gateway's pipeline (pipeline.media), in process:
how each answer is charged (the access log's `charged`, its cost against the fake's own bill),
the cost header, `model_not_priced`, the cache's rules per route, and the media timeout.
Through a real `python gateway.py` with the official SDK: tests/process/test_media_sdk.py."""
from __future__ import annotations

import asyncio
import logging
import math
from decimal import Decimal

import orjson
import pytest
from aiohttp import web

from openai_gateway.config.settings import ValidationSettings
from openai_gateway.demo.media_formats import speech_seconds, wav
from openai_gateway.metering.prices import MICRO, PriceTable, cost
from openai_gateway.metering.units import reserve
from openai_gateway.policy import RequestPolicy, Usage

from ..support.uploads import CTYPE, gateway_to, multipart, transcription

TABLE = PriceTable()
TEXT = "Read this sentence aloud, please, at an even pace."
#: Every model allowed, a dollar budget so money is counted and shown.
CONFIG = {"validation": {"allowed_models": []}, "rate_limit": {"spend": ["5/day"]}}


@pytest.fixture
def access(caplog):
    """The next access log line, as a dict: await access() after each request (a relayed
    answer is logged once its handler ends, which may be just after its client read it)."""
    caplog.set_level(logging.INFO, logger="gateway.access")
    seen = [0]

    async def next_line() -> dict:
        for _ in range(200):
            lines = [r.access for r in caplog.records if hasattr(r, "access")]
            if len(lines) > seen[0]:
                seen[0] = len(lines)
                return lines[-1]
            await asyncio.sleep(0.01)
        raise AssertionError("no access line")
    return next_line


def reservation(route: str, body: dict) -> int:
    parsed = RequestPolicy(ValidationSettings(allowed_models=())).check(
        route, orjson.dumps(body))
    price = TABLE.price_for(body["model"])
    assert price is not None and parsed.units is not None
    micro = reserve(price, parsed.units)
    assert micro is not None
    return micro


def micro_of(line: dict) -> int:
    return round(Decimal(str(line["cost_usd"])) * MICRO)


# --- how each answer is charged ------------------------------------------------------------


@pytest.mark.parametrize("fmt, charged", [("wav", "relayed"), ("pcm", "relayed"),
                                          ("mp3", "reservation")])
async def test_token_billed_speech_is_bounded_by_the_seconds_it_plays(make_gateway, fake,
                                                                      access, fmt, charged):
    """gpt-4o-mini-tts reports no usage with audio: WAV and PCM relayed whole are charged by
    the seconds they play (never below what the fake billed), MP3 its reservation."""
    gw = await make_gateway(CONFIG)
    body = {"model": "gpt-4o-mini-tts", "input": TEXT, "voice": "alloy",
            "response_format": fmt}
    resp = await gw.post("/v1/audio/speech", json=body)
    audio = await resp.read()
    assert resp.status == 200 and len(audio) > 48_000 * speech_seconds(TEXT) * 0.9
    assert "x-gateway-cost-usd" not in resp.headers  # relayed as it came: headers went first
    line = await access()
    assert line["charged"] == charged
    billed = fake.media.ledger.produced[-1].usage
    price = TABLE.price_for("gpt-4o-mini-tts")
    assert price is not None
    bill = cost(price, Usage(input=billed["input_tokens"], output=billed["output_tokens"],
                             audio_output=billed["output_tokens"]))
    reserved = reservation("/v1/audio/speech", body)
    assert bill <= micro_of(line) <= reserved
    if charged == "relayed":
        print(f"\n{fmt}: charged {micro_of(line)} µ$ for a bill of {bill} µ$ "
              f"(reservation {reserved} µ$)")
        assert micro_of(line) < reserved / 1.4


async def test_speech_as_events_is_charged_its_usage(make_gateway, fake, access):
    gw = await make_gateway(CONFIG)
    resp = await gw.post("/v1/audio/speech", json={
        "model": "gpt-4o-mini-tts", "input": TEXT, "voice": "alloy", "stream_format": "sse"})
    text = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    assert text.count("speech.audio.delta") > 3 and text.rstrip().endswith("}")
    line = await access()
    assert line["charged"] == "usage"
    assert line["tokens_out"] == fake.media.ledger.produced[-1].usage["output_tokens"]


async def test_a_model_billed_by_the_character_is_charged_its_characters(make_gateway, access):
    gw = await make_gateway(CONFIG)
    resp = await gw.post("/v1/audio/speech", json={"model": "tts-1", "input": TEXT,
                                                   "voice": "nova"})
    assert resp.status == 200 and await resp.read()
    line = await access()
    assert line["charged"] == "units"
    assert micro_of(line) == math.ceil(len(TEXT) * 15)  # $15 per 1M characters


async def test_whisper_is_charged_its_seconds_and_shows_the_cost(make_gateway, access):
    gw = await make_gateway(CONFIG)
    resp = await gw.post("/v1/audio/transcriptions", data=transcription(wav(61.2)),
                         headers={"Content-Type": CTYPE})
    doc = await resp.json()
    assert resp.status == 200 and doc["usage"] == {"type": "duration", "seconds": 62}
    assert resp.headers["x-gateway-cost-usd"] == "0.006200"  # 62 s at $0.006 a minute
    assert (await access())["charged"] == "usage"


async def test_a_translation_without_usage_is_charged_its_seconds_bound(make_gateway, access):
    gw = await make_gateway(CONFIG)
    body = transcription(wav(30.0))
    resp = await gw.post("/v1/audio/translations", data=body, headers={"Content-Type": CTYPE})
    assert resp.status == 200 and "usage" not in await resp.json()
    line = await access()
    # The WAV's header bounds its 30 s (rounded up to whole seconds).
    assert line["charged"] == "units" and micro_of(line) == math.ceil(31 * 6000 / 60)


async def test_images_by_the_image_and_by_the_token(make_gateway, fake, access):
    gw = await make_gateway(CONFIG)
    resp = await gw.post("/v1/images/generations", json={
        "model": "dall-e-3", "prompt": "a lighthouse", "size": "1792x1024", "quality": "hd",
        "n": 1})
    assert resp.status == 200 and resp.headers["x-gateway-cost-usd"] == "0.120000"
    assert (await access())["charged"] == "units"
    body = {"model": "gpt-image-1-mini", "prompt": "a lighthouse", "size": "1024x1024",
            "quality": "low", "n": 2}
    resp = await gw.post("/v1/images/generations", json=body)
    doc = await resp.json()
    assert resp.status == 200 and len(doc["data"]) == 2
    line = await access()
    assert line["charged"] == "usage" and line["tokens_out"] == doc["usage"]["output_tokens"]
    assert micro_of(line) <= reservation("/v1/images/generations", body)
    assert Decimal(resp.headers["x-gateway-cost-usd"]) == Decimal(str(line["cost_usd"]))


async def test_an_upstream_refusal_costs_nothing(make_gateway, access):
    gw = await make_gateway(CONFIG)
    # The fake refuses SSE speech from tts-1, as OpenAI does.
    resp = await gw.post("/v1/audio/speech", json={"model": "tts-1", "input": TEXT,
                                                   "voice": "alloy", "stream_format": "sse"})
    assert resp.status == 400 and (await resp.json())["error"]["param"] == "stream_format"
    assert (await access())["charged"] == "none"


@pytest.mark.parametrize("route, body", [
    ("/v1/images/generations", {"model": "my-image", "prompt": "p"}),
    ("/v1/audio/speech", {"model": "my-tts", "input": "hi", "voice": "alloy"}),
])
async def test_a_dollar_budget_needs_a_bound(make_gateway, fake, route, body):
    """An image model priced by the token without its image table cannot bound an image; a
    model without a row cannot bound anything: with a dollar budget both are refused."""
    gw = await make_gateway({**CONFIG, "prices": {"my-image": {"input": 1.0, "output": 1.0}}})
    resp = await gw.post(route, json=body)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "model_not_priced"
    assert fake.media.ledger.requests == []


async def test_token_budgets_see_the_image_output_tokens(make_gateway, fake):
    gw = await make_gateway({**CONFIG, "rate_limit": {"tokens": ["1000/minute"]}})
    body = {"model": "gpt-image-1-mini", "prompt": "a fox", "quality": "low",
            "size": "1024x1024"}
    resp = await gw.post("/v1/images/generations", json={**body, "n": 2})  # 2 x 688 tokens
    assert resp.status == 429 and (await resp.json())["error"]["type"] == "tokens"
    resp = await gw.post("/v1/images/generations", json=body)
    assert resp.status == 200
    # Settled to the usage: 272 image tokens and the prompt's few.
    assert 1000 - int(resp.headers["x-ratelimit-remaining-tokens"]) < 300
    assert len(fake.media.ledger.requests) == 1


# --- the cache ----------------------------------------------------------------------------


async def test_speech_and_transcripts_are_cached_where_listed(make_gateway, fake):
    gw = await make_gateway({**CONFIG, "cache": {"routes": [
        "/v1/audio/speech", "/v1/audio/transcriptions", "/v1/images/generations"]}})
    speech = {"model": "gpt-4o-mini-tts", "input": TEXT, "voice": "alloy",
              "response_format": "wav"}
    first = await gw.post("/v1/audio/speech", json=speech)
    audio = await first.read()
    again = await gw.post("/v1/audio/speech", json=speech)
    assert (first.headers["X-Cache"], again.headers["X-Cache"]) == ("MISS", "HIT")
    assert await again.read() == audio and again.content_type == first.content_type

    def upload(audio: bytes, *fields: tuple[str, bytes]) -> bytes:
        return multipart(("model", None, None, b"whisper-1"),
                         ("response_format", None, None, b"srt"), *(
                             (name, None, None, value) for name, value in fields),
                         ("file", "a.wav", "audio/wav", audio))

    async def transcribe(body: bytes):
        resp = await gw.post("/v1/audio/transcriptions", data=body,
                             headers={"Content-Type": CTYPE})
        assert resp.status == 200
        return resp.headers["X-Cache"], resp.headers["Content-Type"], await resp.text()

    one = await transcribe(upload(wav(2.0)))
    assert one[0] == "MISS" and one[1].startswith("text/plain")
    assert await transcribe(upload(wav(2.0))) == ("HIT", *one[1:])  # another boundary
    assert (await transcribe(upload(wav(2.5))))[0] == "MISS"  # other bytes
    sampled = upload(wav(2.0), ("temperature", b"0.4"))
    assert (await transcribe(sampled))[0] == "BYPASS"
    assert (await transcribe(upload(wav(2.0), ("temperature", b"0"))))[0] == "MISS"
    # Images are sampled: listed, they are still not cached unless cache.sampled.
    image = {"model": "gpt-image-1-mini", "prompt": "a cat", "quality": "low"}
    resp = await gw.post("/v1/images/generations", json=image)
    assert resp.headers["X-Cache"] == "BYPASS"
    posts = [r.route for r in fake.media.ledger.requests]
    assert posts.count("/v1/audio/speech") == 1 and posts.count(
        "/v1/audio/transcriptions") == 4


async def test_media_routes_are_not_cached_by_default(make_gateway):
    gw = await make_gateway(CONFIG)
    speech = {"model": "tts-1", "input": TEXT, "voice": "alloy"}
    for _ in range(2):
        resp = await gw.post("/v1/audio/speech", json=speech)
        assert resp.headers["X-Cache"] == "BYPASS"


# --- the other JSON edit, timeouts --------------------------------------------------------


async def test_a_json_image_edit_goes_upstream_as_json(make_gateway, fake):
    gw = await make_gateway(CONFIG)
    resp = await gw.post("/v1/images/edits", json={
        "model": "gpt-image-1-mini", "prompt": "add a hat", "quality": "low",
        "images": [{"image_url": "https://example.com/cat.png"}]})
    assert resp.status == 200, await resp.text()
    seen = fake.media.ledger.requests[-1]
    assert seen.content_type == "application/json" and seen.json["images"]


async def test_image_routes_wait_media_timeout_for_their_first_byte(aiohttp_server,
                                                                   aiohttp_client):
    async def slow(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(0.6)
        return web.json_response({"created": 1, "data": [{"b64_json": "AA=="}]})

    app = web.Application()
    app.router.add_post("/v1/images/generations", slow)
    app.router.add_post("/v1/chat/completions", slow)
    server = await aiohttp_server(app)
    client = await gateway_to(aiohttp_client, str(server.make_url("/v1")), {
        "upstream": {"first_byte_timeout": 0.2, "media_timeout": 5.0, "retries": 0}})
    resp = await client.post("/v1/images/generations", json={
        "model": "dall-e-2", "prompt": "p", "response_format": "b64_json"})
    assert resp.status == 200, await resp.text()
    resp = await client.post("/v1/chat/completions", json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status == 504
