"""The limit and dollar-budget grammar: alone, and in the settings' limit keys (one problem line
naming the key for a bad limit)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from limits import (
    RateLimitItemPerDay,
    RateLimitItemPerHour,
    RateLimitItemPerMinute,
    RateLimitItemPerMonth,
    RateLimitItemPerSecond,
    parse,
)

from openai_gateway.config.limits import (
    PERIODS,
    SPEND_EXPECTED,
    as_limits,
    as_spend,
    limit_text,
    parse_limit,
)
from openai_gateway.config.settings import ClientSettings, RateLimitSettings
from openai_gateway.config.settings import parse as parse_settings

from ..support.settings import ENV, GOOD_HASH, LIMIT_HINT, problems


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


# --- in the settings ----------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "abc", "", "60/fortnight", "-1/minute", "60 minute", "1/minute trailing",
    # Accepted by the limits library's own parser, but not what anyone means:
    "0/minute",             # a limit nobody passes
    "60/minutes",           # limits reads it as 60 a minute: a forgotten multiple?
    "100/5 minute", "100/1 minutes",  # a plural exactly with a multiple of 2 or more
    "60/minute;1000/day",   # one limit per list entry
    "60/Minute", " 60/minute", "060/minute", "1.5/minute", "60 / minute", "60per minute",
])
@pytest.mark.parametrize("place, key", [
    (lambda limits: {"rate_limit": {"requests": limits}}, "rate_limit.requests[0]"),
    (lambda limits: {"rate_limit": {"tokens": limits}}, "rate_limit.tokens[0]"),
    (lambda limits: {"rate_limit": {"rules": [{"route": "/v1/embeddings", "requests": limits}]}},
     "rate_limit.rules[0].requests[0]"),
    (lambda limits: {"clients": [{"name": "a", "key_sha256": GOOD_HASH, "tokens": limits}]},
     "clients[0].tokens[0]"),
])
def test_bad_limit_strings(text, place, key):
    assert problems(place([text])) == [f"{key}: got {text!r}, {LIMIT_HINT}"]


@pytest.mark.parametrize("text, item", [
    ("60/minute", RateLimitItemPerMinute(60)),
    ("60 per minute", RateLimitItemPerMinute(60)),
    ("10 per hour", RateLimitItemPerHour(10)),
    ("100/5 minutes", RateLimitItemPerMinute(100, 5)),
    ("10/2 seconds", RateLimitItemPerSecond(10, 2)),
    ("1000/day", RateLimitItemPerDay(1000)),
    ("5 per 3 months", RateLimitItemPerMonth(5, 3)),
])
def test_limits_are_parsed_once_into_items(text, item):
    s = parse_settings({"rate_limit": {"requests": [text], "tokens": [text]}}, environ=ENV)
    assert s.rate_limit.requests == s.rate_limit.tokens == (item,)
    assert s.rate_limit.requests[0].multiples == item.multiples


def test_limits_are_kept_shortest_window_first():
    doc = {"rate_limit": {"requests": ["1000/day", "10/2 seconds", "60/minute"],
                          "rules": [{"model": "gpt-4o", "tokens": ["9/hour", "1/second"]}]},
           "clients": [{"name": "a", "key_sha256": GOOD_HASH, "requests": ["2/day", "1/hour"]}]}
    s = parse_settings(doc, environ=ENV)
    assert s.rate_limit.requests == (RateLimitItemPerSecond(10, 2), RateLimitItemPerMinute(60),
                                     RateLimitItemPerDay(1000))
    assert s.rate_limit.rules[0].tokens == (RateLimitItemPerSecond(1), RateLimitItemPerHour(9))
    assert s.clients[0].requests == (RateLimitItemPerHour(1), RateLimitItemPerDay(2))


def test_text_limits_given_in_code_are_parsed_the_same_way():
    # Tests and the demo's defaults build settings directly, with text.
    direct = RateLimitSettings(requests=("1000/day", "60/minute"))
    assert direct.requests == parse_settings({}, environ=ENV).rate_limit.requests
    assert ClientSettings(tokens=("5/second",)).tokens == (RateLimitItemPerSecond(5),)
    assert as_limits(["1/hour"]) == (RateLimitItemPerHour(1),)
    with pytest.raises(ValueError):
        RateLimitSettings(requests=("60/minutes",))


@pytest.mark.parametrize("text, micro, item", [
    ("0.50/day", 500_000, RateLimitItemPerDay), ("10/month", 10_000_000, RateLimitItemPerMonth),
    ("0.000001 per hour", 1, RateLimitItemPerHour), ("2.5/7 days", 2_500_000, RateLimitItemPerDay),
])
def test_spend_limits_are_micro_dollars(text, micro, item):
    [got] = parse_settings({"rate_limit": {"spend": [text]}}, environ=ENV).rate_limit.spend
    assert got.item == item(micro, got.item.multiples) and got.item.amount == micro
    assert got.text == text and got.usd == micro / 1_000_000


@pytest.mark.parametrize("text", ["0/day", "0.00/day", "0.0000001/day", "-1/day", "$1/day",
                                  "1/fortnight", "1/days", "1,50/day", "1e3/day", ".5/day"])
def test_bad_spend_limits(text):
    assert problems({"rate_limit": {"spend": [text]}}) == [
        f"rate_limit.spend[0]: got {text!r}, expected {SPEND_EXPECTED}"]
