"""The price table, the cost of an answer from its usage, and how spend is exported."""
from __future__ import annotations

import datetime
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openai_gateway.metering.prices import (
    DEFAULT_PRICES,
    MICRO,
    OTHER,
    Price,
    PriceTable,
    Usage,
    cost,
    estimate,
    micro_from_usd,
    usd,
)
from openai_gateway.observability.metrics import Metrics
from openai_gateway.policy.usage import usage_of

REQUIRED = ("gpt-4o-mini", "gpt-4o", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o1", "o3",
            "o3-mini", "o4-mini", "gpt-5", "gpt-5-mini", "gpt-5-nano", "text-embedding-3-small",
            "text-embedding-3-large", "text-embedding-ada-002", "omni-moderation-latest")
EMBEDDINGS = ("text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002")


def usd_row(price: Price) -> tuple[str, str, str]:
    return usd(price.input), usd(price.cached_input), usd(price.output)


# --- the shipped table ---------------------------------------------------------------------

@pytest.mark.parametrize("model", REQUIRED)
def test_defaults_cover_openai_current_models(model):
    assert model in DEFAULT_PRICES


@pytest.mark.parametrize("model,price", sorted(DEFAULT_PRICES.items()))
def test_every_default_row_has_three_prices_and_a_date(model, price):
    for value in (price.input, price.cached_input, price.output):
        assert type(value) is int and value >= 0
    assert price.cached_input <= price.input
    assert datetime.date.fromisoformat(price.as_of) <= datetime.date(2026, 12, 31)
    assert model == model.strip() and model


@pytest.mark.parametrize("model", EMBEDDINGS)
def test_embedding_models_price_input_only(model):
    price = DEFAULT_PRICES[model]
    assert price.input > 0 and price.output == 0


def test_moderation_is_free():
    assert usd_row(DEFAULT_PRICES["omni-moderation-latest"]) == ("0.000000",) * 3


@pytest.mark.parametrize("model,row", [
    ("gpt-4o-mini", ("0.150000", "0.075000", "0.600000")),
    ("gpt-4o", ("2.500000", "1.250000", "10.000000")),
    ("gpt-4.1-nano", ("0.100000", "0.025000", "0.400000")),
    ("o4-mini", ("1.100000", "0.275000", "4.400000")),
    ("gpt-5-nano", ("0.050000", "0.005000", "0.400000")),
    ("text-embedding-3-small", ("0.020000", "0.020000", "0.000000")),
])
def test_known_rows_in_dollars_per_million(model, row):
    assert usd_row(DEFAULT_PRICES[model]) == row


def test_the_shipped_table_cannot_be_changed_in_place():
    with pytest.raises(TypeError):
        DEFAULT_PRICES["gpt-4o-mini"] = Price(0, 0, 0)  # type: ignore[index]


# --- overrides -----------------------------------------------------------------------------

def test_config_overrides_a_default_row_and_adds_new_ones():
    table = PriceTable({"gpt-4o-mini": Price.from_usd(input=0.3, cached_input=0.1, output=1.2),
                        "llama-3.1-8b": Price.from_usd(input="0.05", output="0.08")})
    assert usd_row(table.price_for("gpt-4o-mini")) == ("0.300000", "0.100000", "1.200000")
    assert usd_row(table.price_for("llama-3.1-8b")) == ("0.050000", "0.050000", "0.080000")
    assert table.price_for("gpt-4o") == DEFAULT_PRICES["gpt-4o"]  # the rest stays
    assert len(table) == len(DEFAULT_PRICES) + 1


def test_overrides_do_not_touch_the_shipped_table():
    PriceTable({"gpt-4o": Price.from_usd(input=1, output=1)})
    assert usd(DEFAULT_PRICES["gpt-4o"].input) == "2.500000"


def test_an_empty_default_table_prices_only_the_config():
    table = PriceTable({"mine": Price.from_usd(input=1, output=2)}, defaults={})
    assert table.price_for("gpt-4o-mini") is None
    assert list(table) == ["mine"]


@pytest.mark.parametrize("kwargs,field", [
    ({"input": -1, "output": 1}, "input"),
    ({"input": 1, "output": "lots"}, "output"),
    ({"input": 1, "output": 1, "cached_input": float("nan")}, "cached_input"),
    ({"input": True, "output": 1}, "input"),
])
def test_from_usd_names_the_bad_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        Price.from_usd(**kwargs)


def test_cached_price_above_input_price_is_refused():
    with pytest.raises(ValueError, match="cached_input"):
        Price.from_usd(input=0.1, cached_input=0.2, output=1)


@pytest.mark.parametrize("bad", [0.15, -1, True, "1"])
def test_price_fields_take_integer_micro_dollars_only(bad):
    with pytest.raises(ValueError, match="from_usd"):
        Price(bad, 0, 0)


# --- finding a model's row -----------------------------------------------------------------

@pytest.mark.parametrize("model,row", [
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
    ("gpt-4o-2024-08-06", "gpt-4o"),
    ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
    ("o3-2025-04-16", "o3"),
    ("o1-pro-2025-03-19", "o1-pro"),
    ("gpt-5-mini-2025-08-07", "gpt-5-mini"),
    ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),  # a snapshot with its own, higher price
])
def test_dated_snapshots_find_their_family(model, row):
    table = PriceTable()
    assert table.price_for(model) == DEFAULT_PRICES[row]
    assert table.label_for(model) == row


def test_the_old_four_digit_snapshot_form_finds_its_family():
    table = PriceTable({"gpt-4": Price.from_usd(input=30, output=60)}, defaults={})
    assert table.price_for("gpt-4-0613") == table.price_for("gpt-4")


def test_an_exact_row_for_a_snapshot_wins_over_its_family():
    snap = Price.from_usd(input=9, output=9)
    table = PriceTable({"gpt-4o-mini-2024-07-18": snap})
    assert table.price_for("gpt-4o-mini-2024-07-18") == snap
    assert table.price_for("gpt-4o-mini") == DEFAULT_PRICES["gpt-4o-mini"]


def test_gpt_4o_mini_is_never_priced_as_gpt_4o():
    only_4o = PriceTable({"gpt-4o": Price.from_usd(input=2.5, output=10)}, defaults={})
    assert only_4o.price_for("gpt-4o-mini") is None
    assert only_4o.price_for("gpt-4o-mini-2024-07-18") is None
    assert PriceTable().price_for("gpt-4o-mini") != PriceTable().price_for("gpt-4o")


@pytest.mark.parametrize("model", [
    "o1-pro-preview",                # not o1 (o1-pro costs ten times more)
    "gpt-4o-realtime-preview",       # realtime bills audio, not gpt-4o's rate
    "gpt-4o-mini-search-preview",    # adds a per-call search fee
    "gpt-5-codex-max",
    "o3-deep-research",
    "gpt-5.6-sol",                   # left out on purpose: its price moved during 2026
    "ft:gpt-4o-mini-2024-07-18:org::abc123",  # fine-tuned models cost more
    "GPT-4O-MINI",                   # model names are case-sensitive upstream
    "",
])
def test_variants_and_unknown_models_have_no_price(model):
    table = PriceTable()
    assert table.price_for(model) is None
    assert model not in table
    assert table.label_for(model) == OTHER


@pytest.mark.parametrize("model,row", [("gpt-5.1", "gpt-5.1"), ("gpt-5.4-mini", "gpt-5.4-mini")])
def test_point_releases_are_their_own_rows(model, row):
    assert PriceTable().label_for(model) == row


@pytest.mark.parametrize("model", [None, 42, ["gpt-4o"], {"a": 1}])
def test_a_model_that_is_not_a_string_has_no_price(model):
    table = PriceTable()
    assert table.price_for(model) is None  # type: ignore[arg-type]
    assert table.label_for(model) == OTHER  # type: ignore[arg-type]


def test_the_lookup_memo_is_bounded_and_stays_correct():
    class Small(PriceTable):
        CACHE_SIZE = 8

    table = Small()
    for i in range(100):
        assert table.price_for(f"made-up-{i}") is None
        assert table.price_for("gpt-4o-mini-2024-07-18") == DEFAULT_PRICES["gpt-4o-mini"]
    assert len(table._memo) <= Small.CACHE_SIZE


def test_items_are_sorted_for_display():
    names = [name for name, _ in PriceTable().items()]
    assert names == sorted(DEFAULT_PRICES)


# --- the cost of an answer -----------------------------------------------------------------

def test_cached_tokens_are_priced_at_the_cached_price():
    price = DEFAULT_PRICES["gpt-4o-mini"]
    usage = usage_of({"prompt_tokens": 2000, "completion_tokens": 500,
                             "prompt_tokens_details": {"cached_tokens": 1500}})
    # 500 x $0.15 + 1500 x $0.075 + 500 x $0.60 per 1M = $0.0004875, rounded up to 488 µ$
    assert cost(price, usage) == 488
    uncached = usage_of({"prompt_tokens": 2000, "completion_tokens": 500})
    assert cost(price, uncached) == 600  # 2000 x 0.15 + 500 x 0.60 = 600 µ$ exactly


def test_reasoning_tokens_are_output_and_not_counted_twice():
    usage = usage_of({"input_tokens": 100, "output_tokens": 1000,
                             "output_tokens_details": {"reasoning_tokens": 900}})
    # 100 x $2 + 1000 x $8 per 1M = $0.0082
    assert cost(DEFAULT_PRICES["o3"], usage) == 8200


def test_embeddings_cost_their_input_only():
    price = DEFAULT_PRICES["text-embedding-3-large"]
    assert cost(price, usage_of({"prompt_tokens": 1_000_000,
                                        "total_tokens": 1_000_000})) == 130_000


@pytest.mark.parametrize("usage,micro", [
    (Usage(input=0, cached_input=0, output=0), 0),   # nothing used, nothing charged
    (Usage(input=1, cached_input=0, output=0), 1),   # $0.00000005 rounds up to one micro-dollar
    (Usage(input=0, cached_input=0, output=1), 1),   # $0.0000004 too
    (Usage(input=20, cached_input=0, output=0), 1),  # exactly $0.000001
    (Usage(input=21, cached_input=0, output=0), 2),  # a hair over: up
    (Usage(input=1_000_000), 50_000),
])
def test_costs_round_up_to_the_micro_dollar(usage, micro):
    assert cost(DEFAULT_PRICES["gpt-5-nano"], usage) == micro


def test_a_free_model_costs_nothing_whatever_it_reads():
    assert cost(DEFAULT_PRICES["omni-moderation-latest"], Usage(input=10**9, output=10**6)) == 0


def test_cost_clamps_an_inconsistent_usage():
    price = DEFAULT_PRICES["gpt-4o-mini"]
    assert cost(price, Usage(input=10, cached_input=50, output=0)) == cost(
        price, Usage(input=10, cached_input=10, output=0))
    assert cost(price, Usage(input=-5, cached_input=-5, output=-5)) == 0


usages = st.tuples(st.integers(0, 2_000_000), st.integers(0, 2_000_000),
                   st.integers(0, 200_000)).map(
    lambda t: Usage(input=t[0], cached_input=min(t[1], t[0]), output=t[2]))


@given(model=st.sampled_from(sorted(DEFAULT_PRICES)), usage=usages)
def test_cost_is_the_exact_dollar_amount_rounded_up(model, usage):
    price = DEFAULT_PRICES[model]
    exact = (Fraction((usage.input - usage.cached_input) * price.input
                      + usage.cached_input * price.cached_input
                      + usage.output * price.output, 1_000_000))
    got = cost(price, usage)
    assert got >= exact and got - exact < 1


@given(model=st.sampled_from(sorted(DEFAULT_PRICES)), usage=usages,
       spare_in=st.integers(0, 1000), spare_out=st.integers(0, 1000))
def test_the_reservation_covers_any_answer_within_the_caps(model, usage, spare_in, spare_out):
    price = DEFAULT_PRICES[model]
    reserved = estimate(price, usage.input + spare_in, usage.output + spare_out)
    assert reserved >= cost(price, usage)


REALTIME = Price.from_usd(input=4.0, cached_input=0.40, output=16.0, audio_input=32.0,
                          audio_output=64.0)
IMAGE_MODEL = Price.from_usd(input=5.0, cached_input=1.25, image_input=10.0, output=40.0)


def test_audio_and_image_rates_default_to_the_text_rates():
    price = Price.from_usd(input=0.6, audio_output=12.0, output=0.6)
    assert (price.audio_input, price.image_input, price.audio_output) == (600_000, 600_000,
                                                                          12_000_000)
    row = DEFAULT_PRICES["gpt-4o-mini"]  # chat models bill the images they read as input
    assert row.image_input == row.audio_input == row.input and row.audio_output == row.output


@pytest.mark.parametrize("field", ["audio_input", "image_input", "audio_output"])
def test_media_rates_are_checked_like_the_others(field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        Price.from_usd(input=1, output=1, **{field: -1})


def test_each_part_of_a_usage_is_priced_at_its_rate():
    # realtime: 313 text + 476 audio in, 640 of them cached; 9 text + 23 audio out
    usage = Usage(input=789, output=32, cached_input=640, audio_input=476, audio_output=23)
    # The cached discount comes off the cheapest part first (text: 313, then 327 of audio).
    assert cost(REALTIME, usage) == 640 * 0.4 + (476 - 327) * 32 + 9 * 16 + 23 * 64  # µ$
    # gpt-image-1: 25 text and 194 image tokens in, 272 out
    usage = Usage(input=219, output=272, image_input=194)
    assert cost(IMAGE_MODEL, usage) == (25 * 5 + 194 * 10 + 272 * 40)  # µ$: exact here


def test_parts_larger_than_their_totals_are_clamped():
    assert cost(REALTIME, Usage(input=10, audio_input=50, output=5, audio_output=50)) == cost(
        REALTIME, Usage(input=10, audio_input=10, output=5, audio_output=5))


@given(usage=st.builds(Usage, input=st.integers(0, 10**6), output=st.integers(0, 10**5),
                       cached_input=st.integers(0, 10**6), audio_input=st.integers(0, 10**6),
                       image_input=st.integers(0, 10**6), audio_output=st.integers(0, 10**5)),
       price=st.sampled_from([REALTIME, IMAGE_MODEL, DEFAULT_PRICES["gpt-4o-mini"]]))
def test_a_reservation_of_the_parts_covers_any_usage_of_them(usage, price):
    tin = usage.input
    reserved = estimate(price, tin, usage.output, image_tokens=usage.image_input,
                        audio_tokens=usage.audio_input)
    assert reserved >= cost(price, usage)


def test_estimate_prices_reserved_images_and_audio_at_their_rates():
    assert estimate(IMAGE_MODEL, 1000, 0, image_tokens=800) == 200 * 5 + 800 * 10
    assert estimate(REALTIME, 1000, 0, audio_tokens=1000) == 1000 * 32
    # An answer may be spoken: the output cap at the dearer of the two output rates.
    assert estimate(REALTIME, 0, 1000) == 1000 * 64
    chat = DEFAULT_PRICES["gpt-4o"]
    assert estimate(chat, 1445, 1, image_tokens=1445) == estimate(chat, 1445, 1)


def test_estimate_is_input_at_full_price_plus_the_output_cap():
    # 1000 x $0.15 + 4096 x $0.60 per 1M = $0.0026076 -> 2608 µ$
    assert estimate(DEFAULT_PRICES["gpt-4o-mini"], 1000, 4096) == 2608
    assert estimate(DEFAULT_PRICES["gpt-4o-mini"], 0, 0) == 0


# --- money as integers and text ------------------------------------------------------------

@pytest.mark.parametrize("micro,text", [
    (0, "0.000000"), (1, "0.000001"), (12_345, "0.012345"), (1_500_000, "1.500000"),
    (-1, "-0.000001"), (-2_500_000, "-2.500000"), (10**15 + 7, "1000000000.000007"),
])
def test_usd_formats_six_decimals(micro, text):
    assert usd(micro) == text


@pytest.mark.parametrize("dollars,micro", [
    (0, 0), (1, MICRO), (0.075, 75_000), ("0.075", 75_000), (Decimal("2.5"), 2_500_000),
    (0.1 + 0.2, 300_001),        # the float 0.30000000000000004 is above $0.30: rounds up
    ("0.0000001", 1),            # below a micro-dollar: up, never to zero
    (" 1.25 ", 1_250_000), ("1e-3", 1000),
])
def test_micro_from_usd_is_exact_and_rounds_up(dollars, micro):
    assert micro_from_usd(dollars) == micro


@pytest.mark.parametrize("bad", [-0.01, "-1", float("inf"), float("nan"), "nan", "abc", "",
                                 True, None, [1]])
def test_micro_from_usd_refuses_what_is_not_an_amount(bad):
    with pytest.raises(ValueError):
        micro_from_usd(bad)


# --- metrics -------------------------------------------------------------------------------

def test_spend_and_budget_families_are_exported():
    metrics = Metrics()
    metrics.spend.labels("gpt-4o-mini", "free").inc(cost(DEFAULT_PRICES["gpt-4o-mini"],
                                                         Usage(input=2000, cached_input=0,
                                                               output=500)))
    metrics.budget_remaining.labels("day").value = micro_from_usd("0.25")
    metrics.budget_warn.labels("month").value = 1
    text = metrics.exposition().decode()
    assert "# TYPE gateway_spend_usd_total counter" in text
    assert 'gateway_spend_usd_total{model="gpt-4o-mini",tier="free"} 0.0006' in text
    assert "# TYPE gateway_budget_remaining_usd gauge" in text
    assert 'gateway_budget_remaining_usd{period="day"} 0.25' in text
    assert 'gateway_budget_warn{period="month"} 1' in text


def test_money_is_shown_exactly_however_it_was_added():
    """Counted in integer micro-dollars, shown divided once: 0.004746, never the float sum
    0.004745999999999999 (issue 22)."""
    metrics = Metrics()
    for micro in (1_000, 3_746):
        metrics.spend.labels("gpt-4o-mini", "free").inc(micro)
    text = metrics.exposition().decode()
    assert 'gateway_spend_usd_total{model="gpt-4o-mini",tier="free"} 0.004746' in text


def test_spend_labels_stay_bounded_by_the_price_table():
    table = PriceTable()
    labels = {table.label_for(f"random-model-{i}") for i in range(200)}
    labels |= {table.label_for("gpt-4o-mini-2024-07-18"), table.label_for("gpt-4o-mini")}
    assert labels == {OTHER, "gpt-4o-mini"}
