"""Request limits on the memory store, and the x-ratelimit-* header values, without an app."""
from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from limits import RateLimitItemPerMinute, parse
from limits.aio.storage import MemoryStorage as LimitsMemoryStorage
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

from openai_gateway.config.settings import ClientSettings, RateLimitSettings, RuleSettings
from openai_gateway.errors import RateLimited
from openai_gateway.identity.callers import Caller, _plan
from openai_gateway.identity.keys import hash_key
from openai_gateway.metering.headers import LimitState, format_reset, limit_headers
from openai_gateway.metering.rules import Limits
from openai_gateway.store import Hit, Window
from openai_gateway.store.memory import MemoryStore

from ..support.meter import Meter

CHAT, EMBEDDINGS = "/v1/chat/completions", "/v1/embeddings"
MINI = "gpt-4o-mini"
ANON = Caller(id="ip:198.51.100.1", ip="198.51.100.1")
OTHER = Caller(id="ip:198.51.100.2", ip="198.51.100.2")
BACKEND = ClientSettings(name="backend", key_sha256=hash_key("k1"), requests=("5/minute",),
                         tokens=("1000/minute",))
PLAIN = ClientSettings(name="plain", key_sha256=hash_key("k2"))
UNLIMITED = ClientSettings(name="unlimited", key_sha256=hash_key("k3"), requests=(), tokens=())
RESET = re.compile(r"^(\d+ms|(\d+h)?(\d+m)?\d+s)$")


def client(settings: ClientSettings) -> Caller:
    """A client key's caller as callers.py builds it: its own limits, None where unset."""
    plan = _plan(None, settings)
    return Caller(id="key:" + settings.name, ip="198.51.100.1", settings=settings,
                  limits=plan.limits)


def limiter(requests=(), tokens=(), rules=(), clients=(), strategy="auto",
            url="memory://") -> Meter:
    return Meter(RateLimitSettings(requests=tuple(requests), tokens=tuple(tokens),
                                   rules=tuple(rules), strategy=strategy), url)


async def allowed(lim: Meter, who: Caller = ANON, route=CHAT, model=MINI, times=1) -> list:
    return [await lim.check_requests(who, route, model) for _ in range(times)]


async def refused(lim: Meter, who: Caller = ANON, route=CHAT, model=MINI) -> RateLimited:
    with pytest.raises(RateLimited) as info:
        await lim.check_requests(who, route, model)
    return info.value


# --- formats --------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds, text", [
    (0.02, "20ms"), (0, "0ms"), (-3, "0ms"), (0.5, "500ms"), (0.999, "999ms"), (1, "1s"),
    (1.2, "2s"), (59, "59s"), (59.5, "1m0s"), (60, "1m0s"), (61, "1m1s"), (360, "6m0s"),
    (3600, "1h0m0s"), (3723, "1h2m3s"), (86400, "24h0m0s"),
])
def test_format_reset(seconds, text):
    assert format_reset(seconds) == text


@pytest.mark.parametrize("requests, tokens, expected", [
    (None, None, {}),
    (LimitState(60, 59, 0.5), None, {"x-ratelimit-limit-requests": "60",
                                     "x-ratelimit-remaining-requests": "59",
                                     "x-ratelimit-reset-requests": "500ms"}),
    (None, LimitState(1000, 0, 61), {"x-ratelimit-limit-tokens": "1000",
                                     "x-ratelimit-remaining-tokens": "0",
                                     "x-ratelimit-reset-tokens": "1m1s"}),
    (LimitState(3, 1, 20), LimitState(10, 9, 3723), {
        "x-ratelimit-limit-requests": "3", "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "20s", "x-ratelimit-limit-tokens": "10",
        "x-ratelimit-remaining-tokens": "9", "x-ratelimit-reset-tokens": "1h2m3s"}),
])
def test_headers(requests, tokens, expected):
    assert limit_headers(requests, tokens) == expected


@pytest.mark.parametrize("limit, remaining, shown", [
    (500_000, 250_000, ("0.500000", "0.250000")), (10_000_000, 0, ("10.000000", "0.000000")),
    (1, 1, ("0.000001", "0.000001")), (1_500_000, -5, ("1.500000", "0.000000")),
])
def test_spend_headers_are_dollars_with_six_decimals(limit, remaining, shown):
    h = limit_headers(spend=LimitState(limit, remaining, 10))
    assert h == {"x-ratelimit-limit-spend": shown[0], "x-ratelimit-remaining-spend": shown[1]}


# --- request limits -------------------------------------------------------------------------


async def test_exactly_the_limit_then_429():
    lim = limiter(["3/minute"])
    async with lim.running():
        states = await allowed(lim, times=3)
        assert [(s.limit, s.remaining) for s in states] == [(3, 2), (3, 1), (3, 0)]
        assert all(0 < s.reset <= 60 for s in states)
        err = await refused(lim)
        assert (err.status, err.type, err.code) == (429, "requests", "rate_limit_exceeded")
        assert err.message.startswith("Rate limit reached for requests: 3 per minute. "
                                      "Please try again in ")
        h = err.headers
        assert set(h) == {"Retry-After", "x-ratelimit-limit-requests",
                          "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"}
        assert 1 <= int(h["Retry-After"]) <= 60
        assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("3", "0")
        assert RESET.match(h["x-ratelimit-reset-requests"])
        # Still refused; another client has its own budget.
        await refused(lim)
        assert [s.remaining for s in await allowed(lim, OTHER, times=3)] == [2, 1, 0]


async def test_two_windows_the_tighter_one_refuses_and_is_reported():
    lim = limiter(["10/minute", "2/day"])
    async with lim.running():
        assert [(s.limit, s.remaining) for s in await allowed(lim, times=2)] == [(2, 1), (2, 0)]
        err = await refused(lim)
        assert err.headers["x-ratelimit-limit-requests"] == "2"
        assert 3600 < int(err.headers["Retry-After"]) <= 86400
        assert err.message.startswith("Rate limit reached for requests: 2 per day.")


async def test_shorter_window_refuses_first():
    lim = limiter(["2/day", "1/minute"])
    async with lim.running():
        assert [(s.limit, s.remaining) for s in await allowed(lim)] == [(1, 0)]
        err = await refused(lim)
        assert err.headers["x-ratelimit-limit-requests"] == "1"
        assert 1 <= int(err.headers["Retry-After"]) <= 60


async def test_no_request_limits_means_no_state():
    lim = limiter([])
    async with lim.running():
        assert await allowed(lim, times=50) == [None] * 50


@pytest.mark.parametrize("who, passes", [
    (client(BACKEND), 5),  # its own limits replace the defaults
    (client(PLAIN), 1),  # no limits of its own: the defaults
    (ANON, 1),
])
async def test_client_key_limits_replace_the_defaults(who, passes):
    lim = limiter(["1/minute"], clients=[BACKEND, PLAIN, UNLIMITED])
    async with lim.running():
        states = await allowed(lim, who, times=passes)
        assert states[-1].limit == passes and states[-1].remaining == 0
        err = await refused(lim, who)
        assert err.headers["x-ratelimit-limit-requests"] == str(passes)


async def test_client_key_with_empty_limits_is_unlimited():
    lim = limiter(["1/minute"], clients=[UNLIMITED])
    async with lim.running():
        assert await allowed(lim, client(UNLIMITED), times=20) == [None] * 20


async def test_rule_by_route_applies_in_addition():
    lim = limiter(["3/minute"], rules=[RuleSettings(route=EMBEDDINGS, requests=("1/minute",))])
    async with lim.running():
        [state] = await allowed(lim, route=EMBEDDINGS, model="text-embedding-3-small")
        assert (state.limit, state.remaining) == (1, 0)  # the tightest is reported
        err = await refused(lim, route=EMBEDDINGS, model="text-embedding-3-small")
        assert err.headers["x-ratelimit-limit-requests"] == "1"
        # Other routes only see the default, which counted the embeddings requests too.
        [state] = await allowed(lim, route=CHAT)
        assert (state.limit, state.remaining) == (3, 0)
        assert (await refused(lim)).headers["x-ratelimit-limit-requests"] == "3"


async def test_rule_by_model_applies_in_addition():
    lim = limiter(["3/minute"], rules=[RuleSettings(model="gpt-4o", requests=("1/minute",))])
    async with lim.running():
        await allowed(lim, model="gpt-4o")
        assert (await refused(lim, model="gpt-4o")).headers["x-ratelimit-limit-requests"] == "1"
        await allowed(lim, OTHER, model="gpt-4o")  # rules are per client too
        await allowed(lim, model=MINI)
        assert (await refused(lim, model=MINI)).headers["x-ratelimit-limit-requests"] == "3"


@pytest.mark.parametrize("route, model, limited", [
    (CHAT, "gpt-4o", True), (EMBEDDINGS, "gpt-4o", False), (CHAT, MINI, False),
])
async def test_rule_with_route_and_model_needs_both(route, model, limited):
    lim = limiter([], rules=[RuleSettings(route=CHAT, model="gpt-4o", requests=("1/minute",))])
    async with lim.running():
        first = await lim.check_requests(ANON, route, model)
        if limited:
            assert first.limit == 1
            await refused(lim, route=route, model=model)
        else:
            assert first is None and await allowed(lim, route=route, model=model) == [None]


# --- token budgets through reserve / settle ------------------------------------------------
# The budgets themselves are tested in test_budgets.py.


async def reserve(lim, who, model, tokens):
    return await lim.reserve(who, CHAT, model, tokens=tokens, micro_usd=None)


async def test_reserve_refuses_an_estimate_above_the_remaining_budget():
    lim = limiter(tokens=["100/minute"])
    async with lim.running():
        with pytest.raises(RateLimited) as info:
            await reserve(lim, ANON, MINI, 101)
        err = info.value
        assert err.status == 429
        # More than the whole budget: told it can never fit, not that the limit was reached.
        assert err.message.startswith("This request may use up to 101 tokens (its input and its "
                                      "output cap), more than the whole token budget of 100 per "
                                      "minute: it can never fit.")
        h = err.headers
        assert (h["x-ratelimit-limit-tokens"], h["x-ratelimit-remaining-tokens"]) == ("100", "100")
        assert h["x-should-retry"] == "false" and "Retry-After" not in h  # waiting won't help
        assert RESET.match(h["x-ratelimit-reset-tokens"])
        taken = await reserve(lim, ANON, MINI, 100)  # exactly the budget fits
        assert (taken.tokens.limit, taken.tokens.remaining) == (100, 0)


async def test_reserve_then_settle_refunds_or_charges():
    lim = limiter(tokens=["100/minute"])
    async with lim.running():
        first = await reserve(lim, ANON, MINI, 90)
        assert first.tokens.remaining == 10
        with pytest.raises(RateLimited):  # the first reservation holds 90 of 100
            await reserve(lim, ANON, MINI, 90)
        settled = await lim.settle(first, tokens=30, micro_usd=0)  # refund 60
        assert settled["x-ratelimit-remaining-tokens"] == "70"
        second = await reserve(lim, ANON, MINI, 10)
        await lim.settle(second, tokens=50, micro_usd=0)  # overrun: +40
        assert (await reserve(lim, ANON, MINI, 1)).tokens.remaining == 19


async def test_token_budgets_per_client_key_and_rule():
    rule = RuleSettings(model="gpt-4o", tokens=("50/minute",))
    lim = limiter(tokens=["100/minute"], rules=[rule], clients=[BACKEND, UNLIMITED])
    async with lim.running():
        assert (await reserve(lim, client(BACKEND), MINI, 1000)).tokens.limit == 1000
        assert not (await reserve(lim, client(UNLIMITED), MINI, 10 ** 9)).holds
        # The rule's budget applies in addition, and the tightest is reported.
        with pytest.raises(RateLimited) as info:
            await reserve(lim, ANON, "gpt-4o", 51)
        assert info.value.headers["x-ratelimit-limit-tokens"] == "50"
        taken = await reserve(lim, ANON, "gpt-4o", 50)
        assert (taken.tokens.limit, taken.tokens.remaining) == (50, 0)
        # That reservation used the rule's whole budget and half of the client's.
        with pytest.raises(RateLimited):
            await reserve(lim, ANON, "gpt-4o", 1)
        assert (await reserve(lim, ANON, MINI, 50)).tokens.remaining == 0


async def test_no_token_limits():
    lim = limiter(["10/minute"])
    async with lim.running():
        taken = await reserve(lim, ANON, MINI, 10 ** 9)
        assert not taken.holds
        assert await lim.settle(taken, tokens=10 ** 9, micro_usd=0) == {}


# --- strategy and storage -------------------------------------------------------------------


@pytest.mark.parametrize("strategy, url, expected", [
    ("auto", "memory://", "moving-window"),
    ("auto", "memcached://127.0.0.1:1", "sliding-window-counter"),
    ("sliding-window-counter", "memory://", "sliding-window-counter"),
    ("moving-window", "memory://", "moving-window"),
])
def test_strategy(strategy, url, expected):
    assert limiter(["1/minute"], strategy=strategy, url=url).strategy == expected


@pytest.mark.parametrize("uri, cls", [
    ("async+gateway-memory://", MemoryStore),
])
def test_our_storages_are_registered_with_limits(uri, cls):
    storage = storage_from_string(uri)
    assert type(storage) is cls and isinstance(storage, Storage)


async def test_reconfigure_keeps_the_counters():
    lim = limiter(["2/minute"])
    async with lim.running():
        await allowed(lim)
        lim.configure(RateLimitSettings(requests=("2/minute",), tokens=()))
        [state] = await allowed(lim)
        assert state.remaining == 0
        await refused(lim)


@pytest.mark.parametrize("strategy", ["moving-window", "sliding-window-counter"])
async def test_a_zero_limit_refuses_and_never_fails(strategy):
    # Settings refuse "0/minute"; the limiter must not fail on one either (it used to 500).
    lim = Meter(SimpleNamespace(requests=(RateLimitItemPerMinute(0),), tokens=(), rules=(),
                                strategy=strategy))
    async with lim.running():
        for _ in range(2):
            err = await refused(lim)
            assert err.headers["x-ratelimit-limit-requests"] == "0"
            assert 1 <= int(err.headers["Retry-After"]) <= 60


async def test_limits_given_as_items_and_carried_by_the_caller():
    """The settings hand over parsed RateLimitItems; a caller may carry its own Limits (its
    client key's or tier's), which replace the defaults kind by kind."""
    lim = Meter(SimpleNamespace(requests=(parse("1/minute"),), tokens=(), rules=(),
                                strategy="auto"))
    tier = SimpleNamespace(id="user:ada", limits=Limits(requests=(parse("3/minute"),)))
    async with lim.running():
        assert [s.remaining for s in await allowed(lim, tier, times=3)] == [2, 1, 0]
        await refused(lim, tier)
        await allowed(lim)
        await refused(lim)


# --- the memory store answers exactly like limits' own MemoryStorage --------------------------


def _run_against_reference(steps, item, strategy, compare):
    async def run():
        clock = [1_000_000.0]
        ours, ref = MemoryStore(), LimitsMemoryStorage()
        a, b = strategy(ours), strategy(ref)
        with mock.patch("time.time", lambda: clock[0]):
            for who, cost, wait in steps:
                clock[0] += wait
                ok = await a.hit(item, who, cost=cost)
                assert ok == await b.hit(item, who, cost=cost)
                await compare(ours, ref, a, b, who, clock[0], ok)
        await ours.close()
        if ref.timer:
            ref.timer.cancel()

    asyncio.run(run())


STEPS = st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 3),
                           st.floats(0, 4, allow_nan=False)), max_size=60)


@given(steps=STEPS)
@settings(max_examples=60, deadline=None)
def test_memory_moving_window_matches_limits_reference(steps):
    item = parse("5/10 seconds")

    async def compare(ours, ref, a, b, who, now, ok):
        if ok:  # an allowed hit also forgets the entries that left the window
            assert all(expires >= now for expires in ours.events[item.key_for(who)])
        ours_stats, ref_stats = await a.get_window_stats(item, who), await b.get_window_stats(
            item, who)
        assert ours_stats.remaining == ref_stats.remaining
        # Reset times agree whenever they are in the future; with an empty window limits
        # reports its oldest (long expired) entry, which trimming may drop (to the
        # microsecond: ours is stored as an expiry time, not a start time).
        assert max(ours_stats.reset_time - now, 0) == pytest.approx(
            max(ref_stats.reset_time - now, 0), abs=1e-6)
        assert len(ours.events.get(item.key_for(who), [])) <= item.amount

    _run_against_reference(steps, item, MovingWindowRateLimiter, compare)


@given(steps=st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 4),
                                st.floats(0, 9, allow_nan=False)), max_size=60))
@settings(max_examples=60, deadline=None)
def test_memory_sliding_window_counter_matches_limits_reference(steps):
    """The store's sliding-window counters (sliding.count over the memory store's counters)
    decide and report exactly as limits' SlidingWindowCounterRateLimiter on its own
    MemoryStorage."""
    item = parse("6/10 seconds")

    async def run():
        clock = [1_000_000.0]
        ours, ref = MemoryStore(), LimitsMemoryStorage()
        theirs = SlidingWindowCounterRateLimiter(ref)
        with mock.patch("time.time", lambda: clock[0]):
            for who, cost, wait in steps:
                clock[0] += wait
                w = Window(item.key_for(who), item.amount, item.get_expiry())
                counted = await ours.count([Hit(w, cost)], now=clock[0])
                assert counted.allowed == await theirs.hit(item, who, cost=cost)
                stats = await theirs.get_window_stats(item, who)
                assert counted.stats(w).remaining == stats.remaining
        await ours.close()
        if ref.timer:
            ref.timer.cancel()

    asyncio.run(run())


def test_a_client_under_its_limit_keeps_one_window_of_entries():
    """A returning client that never reaches its limit must not accumulate entries up to
    the limit (1,000 such clients on "120/minute" held 120,000 entries after 33 minutes)."""
    item = parse("120/minute")

    async def run():
        clock = [1_000_000.0]
        storage = MemoryStore()
        limiter = MovingWindowRateLimiter(storage)
        with mock.patch("time.time", lambda: clock[0]):
            for _ in range(600):  # one hit every 10 s for 100 minutes
                clock[0] += 10
                assert await limiter.hit(item, "returning")
            entries = storage.events[item.key_for("returning")]
            assert 6 <= len(entries) <= 7  # the last minute's hits, not 120
            remaining = (await limiter.get_window_stats(item, "returning")).remaining
            assert 120 - 7 <= remaining <= 120 - 6
        await storage.close()

    asyncio.run(run())


def test_the_sweep_yields_to_the_loop_and_keeps_keys_hit_meanwhile():
    """A million clients on a day limit made one sweep hold the event loop for ~70 ms; it now
    works in batches. A key hit between two batches is re-checked, never dropped."""
    item = parse("2/second")

    async def run():
        clock = [1_000_000.0]
        storage = MemoryStore()
        storage.SWEEP_BATCH = 3
        storage._next_sweep = float("inf")  # only the sweep started below
        limiter = MovingWindowRateLimiter(storage)
        with mock.patch("time.time", lambda: clock[0]):
            for who in "abcdefgh":
                assert await limiter.hit(item, who)
            clock[0] += 5  # every client idle: all due
            sweep = asyncio.ensure_future(storage._sweep())
            await asyncio.sleep(0)  # the first batch ran, then the sweep let us in
            assert not sweep.done()
            assert len(storage.events) == 5  # three forgotten, five still to be looked at
            key = next(iter(storage.events))  # one of those, active again
            who = next(w for w in "abcdefgh" if item.key_for(w) == key)
            assert await limiter.hit(item, who)
            await sweep
            assert list(storage.events) == [key]
            assert (await limiter.get_window_stats(item, who)).remaining == 1

    asyncio.run(run())


def test_the_sweep_forgets_counters_once_both_their_windows_passed():
    w = Window("{k}", 5, 10)

    async def run():
        clock = [1_000_000.0]
        storage = MemoryStore()
        storage._next_sweep = float("inf")
        with mock.patch("time.time", lambda: clock[0]):
            await storage.count([Hit(w, 1)], now=clock[0])
            clock[0] += 10  # the first hit is the previous window's now: it still counts
            await storage.count([Hit(w, 1)], now=clock[0])
            clock[0] += 10  # ... and so does the second, one window on
            await storage._sweep()
            assert len(storage.windows) == 1
            counted = await storage.count([Hit(w, 0)], now=clock[0])
            assert counted.stats(w).remaining == 4
            clock[0] += 10  # both windows have passed: nothing counts, the key is forgotten
            await storage._sweep()
            assert storage.windows == {}
        await storage.close()

    asyncio.run(run())
