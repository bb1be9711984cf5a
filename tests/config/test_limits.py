"""The limit and dollar-budget grammar, without settings."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from limits import RateLimitItemPerMinute, parse

from openai_gateway.config.limits import PERIODS, as_limits, as_spend, limit_text, parse_limit


@given(amount=st.integers(1, 10**9), multiple=st.integers(1, 1000),
       period=st.sampled_from(sorted(PERIODS)))
def test_the_canonical_text_parses_back_to_the_same_limit(amount, multiple, period):
    item = PERIODS[period](amount, multiple)
    text = limit_text(item)
    assert parse_limit(text) == item and parse_limit(text).multiples == multiple
    # and the limits library reads our text the same way
    assert parse(text) == item and parse(text).multiples == multiple


@pytest.mark.parametrize("text", ["60 per minute", "60/minute", "100/5 minutes"])
def test_text_round_trip_is_canonical(text):
    assert limit_text(parse_limit(text)) == text.replace(" per ", "/")


def test_as_limits_sorts_and_keeps_items():
    item = RateLimitItemPerMinute(5)
    got = as_limits(["1/day", item, "2/second"])
    assert [limit_text(i) for i in got] == ["2/second", "5/minute", "1/day"]
    assert got[1] is item


def test_as_spend_keeps_the_text():
    [spend] = as_spend(["0.25 per day"])
    assert spend.text == "0.25 per day" and spend.item.amount == 250_000 and spend.usd == 0.25
    with pytest.raises(ValueError):
        as_spend(["0.25/days"])
