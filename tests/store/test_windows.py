"""The sliding-window arithmetic, and the store's counting over a real memcached, decide exactly
as limits' own SlidingWindowCounterRateLimiter over its MemoryStorage, hit for hit, on a
controlled clock."""
from __future__ import annotations

import asyncio
import uuid
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from openai_gateway.store import Hit, windows
from openai_gateway.store.memcached import MemcachedCluster
from openai_gateway.store.windows import Window


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_keys_share_a_tag_and_follow_limits_window_indices():
    w = Window("client-1", 10, 60)
    # limits' own example: TimestampedSlidingWindow.sliding_window_keys("mykey", 60, ...)
    assert windows.keys(w, 1738576292.6631825) == ("{client-1}/28976270", "{client-1}/28976271")
    assert windows.keys(w, 120.0) == ("{client-1}/1", "{client-1}/2")


@pytest.mark.parametrize(("prev", "cur", "now", "cost", "room"), [
    (0, 9, 30.0, 1, True),      # 9 + 1 = 10 fits 10
    (0, 10, 30.0, 1, False),
    (10, 0, 90.0, 5, True),     # half the previous window weighs: floor(5) + 5 = 10
    (10, 0, 90.0, 6, False),
    (0, 0, 0.0, 11, False),     # a cost over the whole amount never fits
])
def test_has_room(prev, cur, now, cost, room):
    assert windows.has_room(Window("k", 10, 60), prev, cur, now, cost) is room


def test_stats_of_an_untouched_window():
    assert windows.stats(Window("k", 10, 60), 0, 0, 500.0) == windows.Stats(500.0, 10)


# --- against limits ------------------------------------------------------------------------

limit_sets = st.lists(st.tuples(st.integers(1, 6), st.sampled_from([3, 10, 60])),
                      min_size=1, max_size=2)
hit_runs = st.lists(st.tuples(st.floats(0, 25, allow_nan=False), st.integers(1, 3)),
                    min_size=1, max_size=30)


async def _compare(server: str, spec, hits, start: float) -> None:
    clock = Clock(start)
    run = uuid.uuid4().hex
    items = [RateLimitItemPerSecond(amount, seconds) for amount, seconds in spec]
    wins = [Window(f"{run}-{i}", amount, seconds) for i, (amount, seconds) in enumerate(spec)]
    limiter = SlidingWindowCounterRateLimiter(MemoryStorage())
    cluster = MemcachedCluster([server])
    try:
        with mock.patch("time.time", clock):
            for gap, cost in hits:
                clock.now += gap
                # The gateway's rule for several limits: a hit counts on all of them or none.
                expected = all([await limiter.test(i, run, str(n), cost=cost)
                                for n, i in enumerate(items)])
                if expected:
                    assert all([await limiter.hit(i, run, str(n), cost=cost)
                                for n, i in enumerate(items)])
                # The gateway's path: count first, decide after, in one round trip.
                got = await cluster.count([Hit(w, cost) for w in wins], now=clock.now)
                assert got.allowed == expected and not got.failed
                for n, (item, w) in enumerate(zip(items, wins, strict=True)):
                    reset_at, remaining = await limiter.get_window_stats(item, run, str(n))
                    assert got.stats(w) == windows.Stats(reset_at, remaining)
    finally:
        await cluster.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=limit_sets, hits=hit_runs, start=st.floats(2e9, 2e9 + 600, allow_nan=False))
def test_same_decisions_and_stats_as_limits(memcached_url, spec, hits, start):
    asyncio.run(_compare(memcached_url.removeprefix("memcached://"), spec, hits, start))


async def test_concurrent_hits_from_two_processes_never_exceed_the_limit(memcached_url):
    # Two clusters stand for two gateway processes sharing one memcached.
    server = memcached_url.removeprefix("memcached://")
    a, b = MemcachedCluster([server]), MemcachedCluster([server])
    w = Window(f"race-{uuid.uuid4().hex}", 10, 60)
    now = 2e9 + 30
    try:
        results = await asyncio.gather(*(c.count([Hit(w)], now=now) for c in [a, b] * 40))
        allowed = sum(r.allowed for r in results)
        counted = windows.count(await a.get(windows.keys(w, now)[1]))
    finally:
        await a.close()
        await b.close()
    assert 1 <= allowed <= 10
    # Fewer than 10 may pass (a reader can see another's increment before its give-back:
    # limits documents the same), never more; every refused increment was given back.
    assert counted == allowed
