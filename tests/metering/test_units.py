"""Money for voice and pictures: the shipped rows, the reservation (an upper bound of what the
request can cost) and the settlement (from the usage, else from the request)."""
from __future__ import annotations

import orjson
import pytest

from openai_gateway.config.settings import ValidationSettings
from openai_gateway.demo import media_formats
from openai_gateway.demo.media_formats import image_usage, transcription_usage, wav
from openai_gateway.metering.prices import Price, PriceTable, configured, cost
from openai_gateway.metering.unit_prices import MEDIA_ROWS, UnitRates
from openai_gateway.metering.units import image_output_tokens, reserve, settle, spoken
from openai_gateway.policy import RequestPolicy
from openai_gateway.policy.form import FormPart
from openai_gateway.policy.speech import played_seconds
from openai_gateway.policy.units import Units
from openai_gateway.policy.usage import Usage, usage_of

TABLE = PriceTable()


def price(model: str) -> Price:
    found = TABLE.price_for(model)
    assert found is not None, model
    return found


def test_every_media_row_is_shipped_dated():
    for model in MEDIA_ROWS:
        assert price(model).as_of == "2026-12-06"
    assert price("gpt-4o-mini-tts-2025-12-15") is price("gpt-4o-mini-tts")
    assert price("gpt-image-2-2026-04-21") is price("gpt-image-2")


def test_unit_rates_in_micro_dollars():
    assert price("tts-1").units.per_million_chars == 15_000_000
    assert price("tts-1-hd").units.per_million_chars == 30_000_000
    assert price("whisper-1").units.per_minute == 6000
    assert price("dall-e-3").units.image_price("hd", "1792x1024") == 120_000
    assert price("dall-e-2").units.image_price("standard", "256x256") == 16_000
    assert price("gpt-image-1").units.tokens("high", "1024x1536") == 6240


@pytest.mark.parametrize("quality, size, tokens", [
    ("auto", "1024x1024", 4160),         # the dearest quality
    ("low", "auto", 408),                # the dearest size
    ("auto", "auto", 6240),
    ("standard", "1024x1024", 6240),     # not a quality of this model: the dearest of all
    ("high", "2048x2048", 6240 * 4),     # no row: per megapixel of the dearest high row
    ("low", "512x512", 408),             # smaller than a row: the dearest of its quality
])
def test_image_tokens_from_above(quality, size, tokens):
    assert price("gpt-image-1").units.tokens(quality, size) == tokens


def test_gpt_image_2_per_megapixel_bound_covers_the_calculators_large_sizes():
    rates = price("gpt-image-2").units
    # OpenAI's calculator: 2048x2048 high 14,272 tokens, 3840x2160 high 13,342.
    assert rates.tokens("high", "2048x2048") >= 14_272
    assert rates.tokens("high", "3840x2160") >= 13_342


def test_per_image_tables_agree_with_openais_per_image_prices():
    """The published per-image prices are the token tables at the output rates, to the tenth of
    a cent they are printed in (gpt-image-1 high: 4,160 x $40 / 1M = $0.1664, printed 0.167);
    gpt-image-1-mini's and gpt-image-2's derived figures are never less."""
    published = {"gpt-image-1": {"high/1024x1024": 0.167, "medium/1536x1024": 0.063,
                                 "low/1024x1536": 0.016},
                 "gpt-image-1.5": {"high/1024x1024": 0.133, "high/1024x1536": 0.200,
                                   "low/1024x1024": 0.009},
                 "gpt-image-1-mini": {"high/1024x1024": 0.036, "medium/1024x1536": 0.015,
                                      "low/1024x1024": 0.005},
                 "gpt-image-2": {"high/1024x1024": 0.211, "medium/1536x1024": 0.041,
                                 "low/1024x1024": 0.006}}
    for model, rows in published.items():
        p = price(model)
        for key, dollars in rows.items():
            quality, size = key.split("/")
            micro = p.units.tokens(quality, size) * p.output / 1_000_000
            assert micro >= dollars * 1_000_000 - 1000, (model, key)


# --- reserve and settle --------------------------------------------------------------------


def speech_units(text: str, **body) -> Units:
    parsed = RequestPolicy(ValidationSettings(allowed_models=())).check(
        "/v1/audio/speech", orjson.dumps({"model": "m", "voice": "alloy", "input": text,
                                          **body}))
    assert parsed.units is not None
    return parsed.units


def test_tts_1_reserves_and_settles_characters():
    units = speech_units("x" * 4096)
    assert reserve(price("tts-1"), units) == 4096 * 15 == settle(price("tts-1"), units, None)
    assert reserve(price("tts-1-hd"), units) == 4096 * 30


def test_gpt_4o_mini_tts_reserves_the_audio_bound_and_settles_from_usage():
    units = speech_units("x" * 4096)
    p = price("gpt-4o-mini-tts")
    assert reserve(p, units) == -(-(4096 * 600_000 + 4096 * 3 * 12_000_000) // 1_000_000)
    # The measured bill of 4,096 characters: 877 text tokens, 5,392 audio tokens.
    measured = Usage(input=877, output=5392)
    assert settle(p, units, measured) == cost(p, measured) < reserve(p, units)
    assert settle(p, units, None) == reserve(p, units)  # audio bytes report no usage


def transcription_units(data: bytes, model: str, size: int | None = None) -> Units:
    part = FormPart("file", "a.wav", "audio/wav", len(data) if size is None else size, None,
                    data[:4096])
    parsed = RequestPolicy(ValidationSettings(allowed_models=())).check_form(
        "/v1/audio/transcriptions", [FormPart("model", None, None, len(model), model), part])
    assert parsed.units is not None
    return parsed.units


def test_whisper_reserves_the_seconds_bound_and_settles_the_reported_seconds():
    units = transcription_units(wav(59.5), "whisper-1")
    assert units.audio_seconds == 60
    p = price("whisper-1")
    assert reserve(p, units) == 6000  # one minute
    assert settle(p, units, usage_of({"type": "duration", "seconds": 30})) == 3000
    assert settle(p, units, usage_of({"type": "duration", "seconds": 29.2})) == 3000
    assert settle(p, units, None) == 6000  # text formats report nothing: the bound


@pytest.mark.parametrize("model", ["gpt-4o-transcribe", "gpt-4o-mini-transcribe"])
@pytest.mark.parametrize("seconds", [1.0, 30.0, 600.0])
def test_a_transcriptions_reservation_covers_its_usage(model, seconds):
    units = transcription_units(wav(seconds), model)
    p = price(model)
    text = "word " * 500
    usage = usage_of(transcription_usage(model, seconds, "", text))
    assert usage is not None and usage.audio_input > 0
    assert cost(p, usage) <= reserve(p, units)
    assert settle(p, units, usage) == cost(p, usage)


def image_units(body: dict) -> Units:
    parsed = RequestPolicy(ValidationSettings(allowed_models=(), max_n=10)).check(
        "/v1/images/generations", orjson.dumps({"model": "m", "prompt": "a red fox", **body}))
    assert parsed.units is not None
    return parsed.units


def test_dall_e_reserves_and_settles_per_image():
    p = price("dall-e-3")
    assert reserve(p, image_units({"quality": "hd", "size": "1024x1792"})) == 120_000
    assert reserve(p, image_units({})) == 120_000  # auto and auto: the dearest
    units = image_units({"quality": "standard", "size": "1024x1024"})
    assert settle(p, units, None) == reserve(p, units) == 40_000
    assert reserve(price("dall-e-2"), image_units({"n": 3, "size": "512x512"})) == 3 * 18_000


@pytest.mark.parametrize("model", ["gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5",
                                   "gpt-image-2"])
@pytest.mark.parametrize("body", [
    {"quality": "high", "size": "1024x1536", "n": 2},
    {"quality": "low", "size": "1024x1024", "stream": True, "partial_images": 3},
    {"stream": True, "partial_images": 2},
    {"quality": "medium", "size": "1536x1024"},
])
def test_an_images_reservation_covers_what_openais_tables_bill(model, body):
    units = image_units(body)
    p = price(model)
    quality = "high" if units.quality == "auto" else units.quality
    size = "1024x1536" if units.size == "auto" else units.size
    tokens = dict(p.units.image_tokens)[f"{quality}/{size}"]
    billed = Usage(input=units.text_tokens, output=units.images * tokens
                   + units.images * units.partial_images * 100)
    assert cost(p, billed) <= reserve(p, units)


def test_an_edits_input_images_are_reserved_at_the_image_input_rate():
    parsed = RequestPolicy(ValidationSettings(allowed_models=())).check(
        "/v1/images/edits", orjson.dumps({"model": "gpt-image-1", "prompt": "p", "images": [
            {"image_url": "https://x/a.png"}, {"image_url": "https://x/b.png"}]}))
    units = parsed.units
    p = price("gpt-image-1")
    fake = Usage(**{"input": 1 + 2 * media_formats.EDIT_IMAGE_TOKENS, "output": 6240,
                    "image_input": 2 * media_formats.EDIT_IMAGE_TOKENS})
    assert cost(p, fake) <= reserve(p, units)
    assert units.image_input_tokens == 2 * (65 + 8 * 129 + 6240)


def test_the_fakes_image_usage_settles_below_the_reservation():
    units = image_units({"quality": "high", "size": "1024x1024", "stream": True,
                         "partial_images": 2, "n": 2})
    usage = usage_of(image_usage("a red fox", 2, "1024x1024", "high", partials=4))
    p = price("gpt-image-1")
    assert settle(p, units, usage) == cost(p, usage) <= reserve(p, units)


def test_a_row_that_cannot_bound_a_request_gives_none():
    bare = Price.from_usd(input=5, output=40)  # an image model without a token table
    units = image_units({})
    assert reserve(bare, units) is None and settle(bare, units, None) is None
    assert settle(bare, units, Usage(input=1, output=2)) == cost(bare, Usage(input=1, output=2))


def test_configured_rows_take_unit_rates_and_keep_the_shipped_image_tokens():
    row = configured("gpt-image-1", input=4.0, cached_input=1.0, output=32.0)
    assert row.units.image_tokens == price("gpt-image-1").units.image_tokens
    whisper = configured("whisper-2", input=0, cached_input=0, output=0, per_minute=0.004)
    assert whisper.units == UnitRates(per_minute=4000)
    dalle = configured("dall-e-3", input=0, cached_input=0, output=0,
                       per_image={"hd/1024x1024": 0.09})
    assert dalle.units.image_price("hd", "1024x1024") == 90_000
    with pytest.raises(ValueError, match="per_image.hd/1024x1024"):
        configured("x", input=0, cached_input=0, output=0, per_image={"hd/1024x1024": -1})


# --- bounds from what was relayed, and image tokens for token budgets -----------------------


def test_speech_relayed_whole_is_bounded_by_the_seconds_it_plays():
    audio = media_formats.wav(10.0)
    seconds = played_seconds("wav", audio[:4096], len(audio))
    assert seconds == pytest.approx(10.0, abs=0.01)
    assert played_seconds("pcm", b"", 480_000) == 10.0
    assert played_seconds("mp3", audio[:4096], len(audio)) is None
    assert played_seconds("wav", b"not a wav header", len(audio)) is None
    # 150 characters: 10 s at the fake's 15 a second.
    units = Units("speech", characters=150, text_tokens=150, audio_output_tokens=450)
    used = spoken(units, seconds)
    assert (used.input, used.output, used.audio_output) == (150, 301, 301)  # 30 a second
    tts = price("gpt-4o-mini-tts")
    billed = cost(tts, Usage(input=40, output=200, audio_output=200))  # 20 a second
    assert billed < cost(tts, used) < reserve(tts, units)


def test_image_output_tokens_count_for_token_budgets():
    units = Units("image", images=2, size="1024x1024", quality="low", partial_images=2)
    assert image_output_tokens(price("gpt-image-1"), units) == 2 * (272 + 200)
    assert image_output_tokens(price("dall-e-3"), units) == 0  # billed by the image
    assert image_output_tokens(price("gpt-image-1"), Units("speech")) == 0
