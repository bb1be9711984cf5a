"""Realtime models' prices: text, audio and image rates, and cached audio at its own rate."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openai_gateway.metering.prices import (
    DEFAULT_PRICES,
    Price,
    PriceTable,
    configured,
    cost,
    usd,
)
from openai_gateway.policy.usage import Usage, usage_of

#: (text in, cached text, text out, audio in, cached audio, audio out, image in), $ per 1M.
ROWS = {
    "gpt-realtime": ("4", "0.4", "16", "32", "0.4", "64", "5"),
    "gpt-realtime-1.5": ("4", "0.4", "16", "32", "0.4", "64", "5"),
    "gpt-realtime-2": ("4", "0.4", "24", "32", "0.4", "64", "5"),
    "gpt-realtime-2.1": ("4", "0.4", "24", "32", "0.4", "64", "5"),
    "gpt-realtime-mini": ("0.6", "0.06", "2.4", "10", "0.3", "20", "0.8"),
    "gpt-realtime-2.1-mini": ("0.6", "0.06", "2.4", "10", "0.3", "20", "0.8"),
    "gpt-4o-mini-realtime-preview": ("0.6", "0.3", "2.4", "10", "0.3", "20", "0.6"),
}


def dollars(price: Price) -> tuple[str, ...]:
    return tuple(usd(getattr(price, f)).rstrip("0").rstrip(".") for f in (
        "input", "cached_input", "output", "audio_input", "cached_audio_input",
        "audio_output", "image_input"))


@pytest.mark.parametrize("model,row", sorted(ROWS.items()))
def test_realtime_rows_in_dollars_per_million(model, row):
    assert dollars(DEFAULT_PRICES[model]) == row
    assert DEFAULT_PRICES[model].as_of == "2026-12-06"


@pytest.mark.parametrize("model,family", [
    ("gpt-realtime-2025-08-28", "gpt-realtime"),
    ("gpt-realtime-mini-2025-10-06", "gpt-realtime-mini"),
    ("gpt-realtime-mini-2025-12-15", "gpt-realtime-mini"),
    ("gpt-realtime-1.5-2026-02-25", "gpt-realtime-1.5"),
    ("gpt-4o-mini-realtime-preview-2024-12-17", "gpt-4o-mini-realtime-preview"),
])
def test_dated_realtime_names_find_their_family(model, family):
    table = PriceTable()
    assert table.label_for(model) == family and table.price_for(model) == DEFAULT_PRICES[family]


def test_the_realtime_reasoning_models_are_marked():
    assert [m for m in ROWS if DEFAULT_PRICES[m].reasoning] == [
        "gpt-realtime-2", "gpt-realtime-2.1", "gpt-realtime-2.1-mini"]


#: OpenAI's example `response.done` usage (its API reference), with cached audio added.
DONE = {"total_tokens": 253, "input_tokens": 132, "output_tokens": 121,
        "input_token_details": {"text_tokens": 119, "audio_tokens": 13, "image_tokens": 0,
                                "cached_tokens": 74,
                                "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 10,
                                                          "image_tokens": 0}},
        "output_token_details": {"text_tokens": 30, "audio_tokens": 91}}


def exact_micro(model: str, usage: dict) -> float:
    """What OpenAI bills, part by part, from the usage's own details (micro-dollars)."""
    r = [float(x) for x in ROWS[model]]
    i, o = usage["input_token_details"], usage["output_token_details"]
    c = i["cached_tokens_details"]
    return ((i["text_tokens"] - c["text_tokens"]) * r[0] + c["text_tokens"] * r[1]
            + (i["audio_tokens"] - c["audio_tokens"]) * r[3] + c["audio_tokens"] * r[4]
            + o["text_tokens"] * r[2] + o["audio_tokens"] * r[5])


@pytest.mark.parametrize("model", ["gpt-realtime", "gpt-realtime-mini"])
def test_a_response_done_costs_each_part_at_its_rate(model):
    usage = usage_of(DONE)
    assert usage == Usage(input=132, output=121, cached_input=74, audio_input=13,
                          audio_output=91, cached_audio_input=10)
    got = cost(DEFAULT_PRICES[model], usage)
    assert got - 1 < exact_micro(model, DONE) <= got


def test_cached_audio_on_mini_is_not_billed_at_the_cached_text_rate():
    mini = DEFAULT_PRICES["gpt-realtime-mini"]
    audio = Usage(input=1_000_000, audio_input=1_000_000, cached_input=1_000_000,
                  cached_audio_input=1_000_000)
    assert usd(cost(mini, audio)) == "0.300000"  # not 0.06
    # Told nothing about which cached tokens were audio: the smallest discount first, so an
    # all-audio prompt whose cache is not broken down is billed as cached text only where
    # text could have been cached.
    untold = Usage(input=1_000_000, audio_input=1_000_000, cached_input=1_000_000)
    assert usd(cost(mini, untold)) == "0.300000"
    mixed = Usage(input=2_000_000, audio_input=1_000_000, cached_input=1_000_000)
    assert usd(cost(mini, mixed)) == "10.060000"  # the text was the cached part


@given(text=st.integers(0, 10_000), audio=st.integers(0, 10_000),
       cached_text=st.integers(0, 10_000), cached_audio=st.integers(0, 10_000),
       out_text=st.integers(0, 5_000), out_audio=st.integers(0, 5_000),
       told=st.booleans(), model=st.sampled_from(sorted(ROWS)))
def test_never_less_than_openai_bills_whatever_the_usage_says(
        text, audio, cached_text, cached_audio, out_text, out_audio, told, model):
    cached_text, cached_audio = min(cached_text, text), min(cached_audio, audio)
    doc = {"input_tokens": text + audio, "output_tokens": out_text + out_audio,
           "input_token_details": {"text_tokens": text, "audio_tokens": audio,
                                   "cached_tokens": cached_text + cached_audio,
                                   "cached_tokens_details": {"text_tokens": cached_text,
                                                             "audio_tokens": cached_audio}},
           "output_token_details": {"text_tokens": out_text, "audio_tokens": out_audio}}
    usage = usage_of(doc)
    if not told:  # a usage that does not break its cached tokens down
        usage = Usage(usage.input, usage.output, usage.cached_input, 0, usage.audio_input, 0,
                      usage.audio_output)
    got = cost(DEFAULT_PRICES[model], usage)
    assert got >= exact_micro(model, doc) - 1e-6
    if told:
        assert got - 1 < exact_micro(model, doc)


def test_an_operators_row_may_price_cached_audio():
    row = configured("my-voice", input=1.0, cached_input=0.1, output=2.0, audio_input=8.0,
                     audio_output=16.0, cached_audio_input=0.5)
    assert usd(row.cached_audio_input) == "0.500000"
    assert usd(configured("v", input=1.0, cached_input=0.1, output=2.0,
                          audio_input=8.0).cached_audio_input) == "0.100000"
    # Unset, it is never above the audio rate (a row whose audio is cheaper than cached text).
    assert usd(Price.from_usd(input=1, cached_input=1, output=1,
                              audio_input="0.5").cached_audio_input) == "0.500000"
    with pytest.raises(ValueError, match="cached_audio_input"):
        Price.from_usd(input=1, output=1, audio_input=1, cached_audio_input=2)
