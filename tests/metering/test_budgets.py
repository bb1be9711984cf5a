"""Token and dollar budgets: reserve before forwarding, settle after, on memory and memcached."""
from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace
from unittest import mock

import pytest
from limits import parse

from openai_gateway.config.limits import parse_spend
from openai_gateway.errors import (
    BudgetExceeded,
    RateLimited,
    SpendLimited,
    StorageUnavailable,
    TokensRateLimited,
)
from openai_gateway.metering.budgets import Reservation
from openai_gateway.metering.headers import format_usd
from openai_gateway.metering.rules import Limit, Limits
from openai_gateway.store import Window, windows

from ..conftest import free_port
from ..support.meter import Meter
from ..support.store_fixtures import redis_factory  # noqa: F401  (fixture)

CHAT, MINI, BIG = "/v1/chat/completions", "gpt-4o-mini", "gpt-4o"
DAY, MONTH = 86_400, 2_592_000  # limits' granularities: a month is 30 days


def spend_item(text: str):
    """A dollar budget as the settings hand it over: a limit of micro-dollars."""
    return parse_spend(text).item


def make(url="memory://", *, tokens=(), spend=(), rules=(), daily=0.0, monthly=0.0,
         on_error="closed") -> Meter:
    settings = SimpleNamespace(requests=(), tokens=tuple(parse(t) for t in tokens),
                               spend=tuple(spend_item(s) for s in spend), rules=tuple(rules),
                               strategy="auto")
    return Meter(settings, url, on_error=on_error,
                 budget=SimpleNamespace(daily_usd=daily, monthly_usd=monthly))


def rule(model: str, tokens=(), spend=()) -> SimpleNamespace:
    return SimpleNamespace(route="", model=model, requests=(),
                           tokens=tuple(parse(t) for t in tokens),
                           spend=tuple(spend_item(s) for s in spend))


def caller(limits: Limits | None = None) -> SimpleNamespace:
    """A fresh caller: memcached is shared by every test of the session."""
    return SimpleNamespace(id=f"test:{uuid.uuid4()}", limits=limits)


@pytest.fixture(scope="session")
def redis_url(redis_factory) -> str:  # noqa: F811
    return f"redis://{redis_factory().address}/3"


@pytest.fixture(params=["memory", "memcached", "redis"])
def url(request) -> str:
    if request.param == "memory":
        return "memory://"
    return request.getfixturevalue(f"{request.param}_url")


async def reserve(lim: Meter, who, tokens=1, micro_usd=0, model=MINI):
    return await lim.reserve(who, CHAT, model, tokens=tokens, micro_usd=micro_usd)


async def left(lim: Meter, who, model=MINI) -> dict[str, str]:
    """The settled headers of a request that used nothing: the budgets as they stand."""
    return await lim.settle(await reserve(lim, who, model=model), tokens=0, micro_usd=0)


# --- reservations are all or nothing, and exact ------------------------------------------------


async def test_100_concurrent_reservations_exactly_the_number_that_fit(url):
    lim = make(url, tokens=["1000/day"])
    who = caller()
    async with lim.running():
        results = await asyncio.gather(*(reserve(lim, who, tokens=30) for _ in range(100)),
                                       return_exceptions=True)
        taken = [r for r in results if not isinstance(r, BaseException)]
        assert len(taken) == 33  # 33 * 30 = 990; a 34th would make 1020
        assert all(isinstance(r, TokensRateLimited) for r in results if r not in taken)
        assert (await left(lim, who))["x-ratelimit-remaining-tokens"] == "10"


async def test_settle_refunds_the_rest_and_charges_an_overrun_up_to_empty(url):
    lim = make(url, tokens=["1000/day"])
    who = caller()
    async with lim.running():
        first = await reserve(lim, who, tokens=500)
        assert first.headers["x-ratelimit-remaining-tokens"] == "500"
        settled = await lim.settle(first, tokens=200, micro_usd=0)
        assert settled["x-ratelimit-remaining-tokens"] == "800"
        second = await reserve(lim, who, tokens=300)
        settled = await lim.settle(second, tokens=900, micro_usd=0)  # 600 over: empties it
        assert settled["x-ratelimit-remaining-tokens"] == "0"
        with pytest.raises(TokensRateLimited):
            await reserve(lim, who, tokens=1)


async def test_nothing_delivered_gives_everything_back(url):
    lim = make(url, tokens=["1000/day"], spend=["1/day"])
    who = caller()
    async with lim.running():
        held = await reserve(lim, who, tokens=1000, micro_usd=1_000_000)
        with pytest.raises(RateLimited):
            await reserve(lim, who)
        assert await lim.settle(held, tokens=0, micro_usd=0) == {
            "x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "1000",
            "x-ratelimit-reset-tokens": "0ms", "x-ratelimit-limit-spend": "1.000000",
            "x-ratelimit-remaining-spend": "1.000000"}
        await reserve(lim, who, tokens=1000, micro_usd=1_000_000)


@pytest.mark.parametrize("used, remaining", [(0, "900"), (300, "600")])
async def test_a_second_settle_does_nothing(url, used, remaining):
    lim = make(url, tokens=["1000/day"])
    who = caller()
    async with lim.running():
        a, _b = await reserve(lim, who, tokens=100), await reserve(lim, who, tokens=100)
        first = await lim.settle(a, tokens=used, micro_usd=0)
        assert await lim.settle(a, tokens=used, micro_usd=0) == {}
        assert first["x-ratelimit-remaining-tokens"] == remaining  # b still holds its 100
        assert (await left(lim, who))["x-ratelimit-remaining-tokens"] == remaining


async def test_when_a_later_budget_refuses_the_earlier_ones_get_their_part_back(url):
    lim = make(url, tokens=["1000/day"], spend=["1/day"], daily=0.10,
               rules=[rule(BIG, tokens=["100/day"])])
    who = caller()
    async with lim.running():
        with pytest.raises(TokensRateLimited) as info:  # the rule's 100 refuses after "all"
            await reserve(lim, who, tokens=500, model=BIG)
        assert info.value.headers["x-ratelimit-limit-tokens"] == "100"
        with pytest.raises(BudgetExceeded):  # the gateway's $0.10 refuses after the caller's $1
            await reserve(lim, who, tokens=1000, micro_usd=200_000)
        held = await reserve(lim, who, tokens=1000, micro_usd=100_000)  # all was given back
        assert held.headers["x-ratelimit-remaining-tokens"] == "0"
        assert held.headers["x-ratelimit-remaining-spend"] == "0.900000"


async def test_budgets_of_the_caller_replace_the_defaults_kind_by_kind(url):
    lim = make(url, tokens=["1000/day"], spend=["1/day"])
    own = caller(Limits(tokens=(parse("50/day"),)))  # its spend: None, so the default $1
    unlimited = caller(Limits(tokens=(), spend=()))
    async with lim.running():
        held = await reserve(lim, own, tokens=50, micro_usd=1)
        assert held.headers["x-ratelimit-limit-tokens"] == "50"
        assert held.headers["x-ratelimit-limit-spend"] == "1.000000"
        nothing = await reserve(lim, unlimited, tokens=10**9, micro_usd=10**12)
        assert nothing.holds == () and nothing.headers == {}


async def test_no_budgets_no_work():
    lim = make(tokens=[])
    async with lim.running():
        held = await reserve(lim, caller(), tokens=10**9, micro_usd=10**9)
        assert held.holds == () and held.headers == {}
        assert await lim.settle(held, tokens=10**9, micro_usd=10**9) == {}
        assert lim.store.windows == {}


# --- dollars ------------------------------------------------------------------------------


async def test_the_callers_dollar_budget_refuses_with_insufficient_quota(url):
    lim = make(url, spend=["0.50/day"])
    who = caller()
    async with lim.running():
        held = await reserve(lim, who, micro_usd=400_000)
        assert held.headers == {"x-ratelimit-limit-spend": "0.500000",
                                "x-ratelimit-remaining-spend": "0.100000"}
        with pytest.raises(SpendLimited) as info:
            await reserve(lim, who, micro_usd=200_000)
        err = info.value
        assert (err.status, err.type, err.code) == (429, "insufficient_quota",
                                                    "spend_limit_exceeded")
        assert err.message.startswith("Spending limit reached: $0.50 per day, $0.10 left, "
                                      "this request needs about $0.20. Please try again in ")
        assert err.headers["x-ratelimit-remaining-spend"] == "0.100000"
        assert 1 <= int(err.headers["Retry-After"]) <= 2 * DAY
        settled = await lim.settle(held, tokens=0, micro_usd=123_456)
        assert settled["x-ratelimit-remaining-spend"] == "0.376544"


async def test_the_gateway_ceiling_is_shared_and_says_budget_exceeded(url):
    lim = make(url, daily=20.0)
    async with lim.running():
        before = (await lim.gateway_spend())["daily"]["spent_micro"]
        first, second = caller(), caller()
        held = await reserve(lim, first, micro_usd=19_900_000 - before)
        assert held.headers == {}  # the gateway's ceiling is no caller's business
        with pytest.raises(BudgetExceeded) as info:
            await reserve(lim, second, micro_usd=200_000)  # another caller, the same ceiling
        err = info.value
        assert (err.status, err.type, err.code) == (429, "insufficient_quota", "budget_exceeded")
        assert err.message.startswith("The gateway's budget is used up: $20.00 per day for all "
                                      "clients, $0.10 left, this request needs about $0.20.")
        assert set(err.headers) == {"Retry-After"}
        await lim.settle(held, tokens=0, micro_usd=0)
        # What settling left of the ceiling, for its gauges without reading the store again.
        assert held.ceilings == {"daily": (20_000_000, 20_000_000 - before)}
        await reserve(lim, second, micro_usd=200_000)


async def test_a_budget_smaller_than_one_request_says_so_not_used_up(url):
    """Nothing spent, and a request whose worst case is more than the whole budget: the
    refusal says it can never fit and what to change (it used to say "Spending limit reached,
    $0.002 left" with a day's Retry-After)."""
    lim = make(url, spend=["0.002/day"], daily=0.001, tokens=["100/day"])
    who = caller()
    async with lim.running():
        with pytest.raises(TokensRateLimited) as tokens:
            await lim.reserve(who, CHAT, MINI, tokens=150, micro_usd=None)
        assert "more than the whole token budget of 100 per day: it can never fit" in \
            tokens.value.message
        with pytest.raises(SpendLimited) as spend:
            await reserve(lim, who, micro_usd=2_500)
        err = spend.value
        assert err.code == "spend_limit_exceeded"
        assert err.message.startswith("This request may cost up to $0.0025 (its input and its "
                                      "output cap at the model's prices), more than the whole "
                                      "spending limit of $0.002 per day: it can never fit.")
        assert "max_tokens" in err.message and "left" not in err.message
    lim = make(url, daily=0.001)
    async with lim.running():
        with pytest.raises(BudgetExceeded) as gateway:
            await reserve(lim, caller(), micro_usd=1_500)
        assert "more than the gateway's whole budget for all clients of $0.001 per day" in \
            gateway.value.message
    # Waiting cannot help: no Retry-After, and the header the official SDKs obey instead of
    # retrying a 429 on their own (x-should-retry).
    for refused in (tokens.value, err, gateway.value):
        assert refused.headers["x-should-retry"] == "false"
        assert "Retry-After" not in refused.headers


async def test_gateway_spend_reports_each_configured_ceiling(url):
    lim = make(url, daily=21.0, monthly=300.0)
    async with lim.running():
        before = await lim.gateway_spend()
        held = await reserve(lim, caller(), micro_usd=1_000_000)
        await lim.settle(held, tokens=0, micro_usd=250_000)
        now = await lim.gateway_spend()
        assert set(now) == {"daily", "monthly"}
        for name, limit, window in (("daily", 21.0, DAY), ("monthly", 300.0, MONTH)):
            row = now[name]  # integer micro-dollars: exact
            assert row["limit_micro"] == limit * 1_000_000 and row["window_seconds"] == window
            assert row["spent_micro"] == before[name]["spent_micro"] + 250_000
            assert row["remaining_micro"] == row["limit_micro"] - row["spent_micro"]
            assert 0 < row["reset_seconds"] <= 2 * window
    assert await make(url).gateway_spend() == {}


async def test_a_free_request_passes_an_empty_dollar_budget():
    lim = make(spend=["0.000001/day"])
    who = caller()
    async with lim.running():
        await reserve(lim, who, micro_usd=1)
        with pytest.raises(SpendLimited):
            await reserve(lim, who, micro_usd=1)
        await reserve(lim, who, micro_usd=0)  # a model priced at zero costs nothing


# --- windows: a day, a month (30 days), refunds across a window's turn -------------------------


def at(clock: list[float]):
    return mock.patch("time.time", lambda: clock[0])


async def test_a_month_is_thirty_days_and_frees_as_the_window_slides():
    lim = make(monthly=10.0)
    start = MONTH * 700.0  # the start of one of limits' month windows (aligned to the epoch)
    clock = [start + 1]
    async with lim.running():
        with at(clock):
            await reserve(lim, caller(), micro_usd=6_000_000)
            with pytest.raises(BudgetExceeded) as info:
                await reserve(lim, caller(), micro_usd=5_000_000)
            wait = int(info.value.headers["Retry-After"])
            # The $6 turn into the previous window after 30 days and weigh less each second:
            # $5 fit once at most $5 of them still count, 35 days after they were spent.
            assert wait == pytest.approx(MONTH - 1 + MONTH / 6, abs=2)
            clock[0] += wait - 3600
            with pytest.raises(BudgetExceeded):
                await reserve(lim, caller(), micro_usd=5_000_000)
            clock[0] += 3600
            await reserve(lim, caller(), micro_usd=5_000_000)
            spend = await lim.gateway_spend()
            assert spend["monthly"]["window_seconds"] == MONTH


async def test_a_day_budget_refuses_until_the_weighted_count_makes_room():
    lim = make(spend=["1/day"])
    who = caller()
    clock = [DAY * 20_000.0 + DAY - 60]  # a minute before the day's window turns
    async with lim.running():
        with at(clock):
            await reserve(lim, who, micro_usd=1_000_000)
            with pytest.raises(SpendLimited) as info:
                await reserve(lim, who, micro_usd=500_000)
            # After the turn the $1 weighs (1 - elapsed/day): $0.50 fit at mid-day.
            assert int(info.value.headers["Retry-After"]) == pytest.approx(60 + DAY / 2, abs=2)
            clock[0] += 60 + DAY / 2 + 2
            await reserve(lim, who, micro_usd=500_000)


async def test_a_refund_goes_back_to_the_window_it_was_taken_from():
    lim = make(tokens=["100/minute"])
    who = caller()
    clock = [60 * 1_000_000.0 + 59.5]
    async with lim.running():
        with at(clock):
            held = await reserve(lim, who, tokens=100)
            clock[0] += 1  # the minute turned: the 100 are the previous window's now
            with pytest.raises(TokensRateLimited):
                await reserve(lim, who, tokens=10)
            settled = await lim.settle(held, tokens=0, micro_usd=0)
            assert settled["x-ratelimit-remaining-tokens"] == "100"


# --- storage failures: reserve follows on_error, settle never raises ---------------------------


@pytest.mark.parametrize("on_error", ["open", "closed"])
async def test_storage_down(on_error):
    lim = make(f"memcached://127.0.0.1:{free_port()}", tokens=["1000/day"], spend=["1/day"],
               daily=5.0, on_error=on_error)
    async with lim.running():
        if on_error == "closed":
            with pytest.raises(StorageUnavailable):
                await reserve(lim, caller(), tokens=10, micro_usd=10)
        else:  # allowed, with nothing to report
            held = await reserve(lim, caller(), tokens=10, micro_usd=10)
            assert held.holds == () and held.headers == {}
        # Taken before the storage went down: settling fails quietly.
        held = Reservation(tuple(lim.budgets.holds(caller(), CHAT, MINI, 10, 10)))
        assert await lim.settle(held, tokens=5, micro_usd=5) == {}
        assert held.settled
        with pytest.raises(StorageUnavailable):
            await lim.gateway_spend()


async def test_a_cancelled_request_still_settles_when_shielded(memcached_url):
    lim = make(memcached_url, tokens=["1000/day"])
    who = caller()
    async with lim.running():
        held = await reserve(lim, who, tokens=1000)
        started = asyncio.Event()

        async def request():
            try:
                started.set()
                await asyncio.sleep(30)
            finally:
                await asyncio.shield(lim.settle(held, tokens=0, micro_usd=0))

        task = asyncio.create_task(request())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)
        assert held.settled
        assert (await left(lim, who))["x-ratelimit-remaining-tokens"] == "1000"


async def test_memcached_month_counters_count(memcached_url):
    """memcached reads a TTL over 30 days as a Unix time; limits keeps a month's counter 60
    days, so without the absolute time it expired at once and never counted."""
    lim = make(memcached_url, spend=["10/month"])
    who = caller()
    async with lim.running():
        await reserve(lim, who, micro_usd=4_000_000)
        assert (await left(lim, who))["x-ratelimit-remaining-spend"] == "6.000000"


# --- pure parts ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, amount, per", [
    ("0.50/day", 500_000, "day"), ("10 per month", 10_000_000, "month"),
    ("1/day", 1_000_000, "day"), ("0.000001/minute", 1, "minute"),
    ("2/2 hours", 2_000_000, "2 hours"),
])
def test_spend_item(text, amount, per):
    limit = Limit.of(spend_item(text))
    assert (limit.amount, limit.per) == (amount, per)


@pytest.mark.parametrize("text", ["0.0000001/day", "x/day", "1/fortnight", "-1/day", "1"])
def test_spend_item_refuses(text):
    with pytest.raises(ValueError, match="a dollar budget like"):
        spend_item(text)


@pytest.mark.parametrize("micro, text", [
    (500_000, "$0.50"), (12_000_000, "$12.00"), (150, "$0.00015"), (0, "$0.00"),
    (1_234_567, "$1.234567"), (100_000, "$0.10"),
])
def test_format_usd(micro, text):
    assert format_usd(micro) == text


W = Window("k", 100, 60)


@pytest.mark.parametrize("prev, cur, now, need, seconds", [
    (0, 0, 600.0, 100, 0.0),  # empty: fits now
    (0, 60, 630.0, 40, 0.0),  # exactly fits
    (0, 60, 630.0, 41, 30.0 + 60 * (1 - 60 / 60)),  # the 60 must turn and decay a bit
    (100, 0, 630.0, 50, 0.0),  # the previous window weighs 50 now: fits
    (100, 0, 630.0, 60, 30.0 - 41 * 60 / 100),  # ... 41 after 5.4 s
    (100, 10, 630.0, 60, 30.0 - 31 * 60 / 100),
    (100, 0, 630.0, 101, 60.0),  # more than the budget: a full window
])
def test_wait_for(prev, cur, now, need, seconds):
    assert windows.wait_for(W, prev, cur, now, need) == pytest.approx(max(seconds, 0.0))


def test_spend_arrives_as_items_or_as_objects_carrying_one():
    item = spend_item("0.50/day")
    carried = SimpleNamespace(item=item, text="0.50/day")  # settings' SpendLimit
    assert Limits(spend=(carried,)).spend == Limits(spend=(item,)).spend


def test_limit_keys_are_limits_own():
    item = parse("7/2 hours")
    assert Limit.of(item).key("usd", "abc", "rule1") == item.key_for("usd", "abc", "rule1")
