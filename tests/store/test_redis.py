"""Redis through one client library (redis-py): the URL and its options, a batched counter
store, limits' exact moving window across processes, aiocache, and an outage, against a real
redis-server."""
from __future__ import annotations

import asyncio
import time

import pytest
from aiocache import RedisCache
from limits import RateLimitItemPerMinute
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from openai_gateway.config.storage import parse_storage_url
from openai_gateway.store.errors import ServerDown
from openai_gateway.store.redis import RedisStore, RedisURL

from ..support.store_fixtures import redis_factory, relays, tls_files  # noqa: F401  (fixtures)

PASSWORD = "redis-test-PASSWORD-7c1e"   # must never appear in a URL we build


def parse_redis_url(text: str) -> RedisURL:
    """The store's URL as the gateway builds it from `storage.url` (config/storage.py parses
    it: tests/test_storage.py)."""
    url = parse_storage_url(text)
    [(host, port)] = url.servers
    return RedisURL(url.tls, host, port, url.db, url.username or None)


def test_options_carry_the_password_and_urls_never_do():
    url = parse_redis_url("rediss://cache:6380/3")
    assert url.limits_uri() == "async+rediss://cache:6380/3"
    assert url.limits_options(PASSWORD, 0.5)["password"] == PASSWORD
    assert url.limits_options(PASSWORD, 0.5)["implementation"] == "redispy"
    cache = url.aiocache_options(PASSWORD, 0.5)
    assert cache["ssl"] is True and cache["password"] == PASSWORD and cache["db"] == 3
    assert parse_redis_url("redis://[::1]:7000/0").limits_uri() == "async+redis://[::1]:7000/0"


@pytest.fixture(scope="module")
def redis_server(redis_factory):  # noqa: F811
    return redis_factory(password=PASSWORD)


@pytest.fixture
async def store(redis_server):
    s = RedisStore(parse_redis_url(f"redis://{redis_server.address}/1"), password=PASSWORD)
    yield s
    await s.close()


async def test_counters_and_bytes(store):
    first = await store.incr_many([("r-a", 3, 60), ("r-b", 1, 60)])
    assert first.values == {"r-a": 3, "r-b": 1}
    assert (await store.incr_many([("r-a", 2, 60)])).values == {"r-a": 5}
    got = await store.get_many(["r-a", "r-b", "r-missing"])
    assert got.values == {"r-a": b"5", "r-b": b"1"}
    assert (await store.decr_many([("r-a", 9), ("r-missing", 1)])).values == {"r-a": 0,
                                                                              "r-missing": 0}
    assert await store.client.exists("r-missing") == 0
    assert await store.set("r-entry", b"\x00v", 60) and await store.get("r-entry") == b"\x00v"
    assert not await store.add("r-entry", b"x", 60) and await store.add("r-new", b"x", 60)
    assert await store.delete("r-entry") and await store.get("r-entry") is None


async def test_the_ttl_is_set_when_a_counter_is_created_and_never_pushed_back(store):
    await store.incr_many([("r-ttl", 1, 100)])
    await store.client.expire("r-ttl", 50)          # as if 50 s had passed
    await store.incr_many([("r-ttl", 1, 100)])
    assert 0 < await store.client.ttl("r-ttl") <= 50


async def test_increments_are_atomic_across_clients(redis_server):
    url = parse_redis_url(f"redis://{redis_server.address}/1")
    a, b = RedisStore(url, password=PASSWORD), RedisStore(url, password=PASSWORD)
    try:
        await asyncio.gather(*(s.incr_many([("r-atomic", 1, 60), ("r-atomic-2", 2, 60)])
                               for s in [a, b] * 100))
        got = await a.get_many(["r-atomic", "r-atomic-2"])
    finally:
        await a.close()
        await b.close()
    assert got.values == {"r-atomic": b"200", "r-atomic-2": b"400"}


async def test_each_batch_is_one_round_trip(redis_server, relays):  # noqa: F811
    relay = await relays(redis_server.address)
    s = RedisStore(parse_redis_url(f"redis://{relay.address}/1"), password=PASSWORD)
    try:
        # Warm-up: the connection handshake (AUTH, SELECT) and loading each script once.
        await s.incr_many([("warm", 1, 60)])
        await s.decr_many([("warm", 1)])
        counts = {}
        for name, call in [
            ("get_many of 7 keys", s.get_many([f"g{i}" for i in range(7)])),
            ("incr_many of 4 counters", s.incr_many([(f"i{i}", 1, 60) for i in range(4)])),
            ("decr_many of 2 counters", s.decr_many([("i0", 1), ("i1", 1)])),
        ]:
            relay.reset()
            await call
            counts[name] = relay.turns
    finally:
        await s.close()
    assert counts == dict.fromkeys(counts, 1)


async def test_limits_moving_window_is_exact_across_two_processes(redis_server):
    url = parse_redis_url(f"redis://{redis_server.address}/2")
    # Two storages with their own connections stand for two gateway processes.
    one, two = (storage_from_string(url.limits_uri(), **url.limits_options(PASSWORD, 0.5))
                for _ in range(2))
    a, b = MovingWindowRateLimiter(one), MovingWindowRateLimiter(two)
    item = RateLimitItemPerMinute(6)
    ident = f"client-{time.time()}"
    results = [await (a if i % 2 else b).hit(item, ident) for i in range(10)]
    assert results == [True] * 6 + [False] * 4
    assert (await a.get_window_stats(item, ident)).remaining == 0


async def test_aiocache_shares_entries_through_the_same_client_library(redis_server):
    url = parse_redis_url(f"redis://{redis_server.address}/3")
    one, two = RedisCache(**url.aiocache_options(PASSWORD, 0.5)), RedisCache(
        **url.aiocache_options(PASSWORD, 0.5))
    try:
        await one.set("answer", {"choices": [1]}, ttl=60)
        assert await two.get("answer") == {"choices": [1]}
    finally:
        await one.close()
        await two.close()


async def test_an_outage_fails_fast_then_recovers(redis_factory):  # noqa: F811
    server = redis_factory(password=PASSWORD)
    url = parse_redis_url(f"redis://{server.address}")
    s = RedisStore(url, password=PASSWORD, timeout=0.3)
    limiter = MovingWindowRateLimiter(
        storage_from_string(url.limits_uri(), **url.limits_options(PASSWORD, 0.3)))
    item = RateLimitItemPerMinute(6)
    try:
        assert (await s.incr_many([("o", 1, 60)])).values == {"o": 1}
        server.kill()
        first = await s.incr_many([("o", 1, 60)])
        assert isinstance(first.failed["o"], ServerDown) and s.down_servers() == [s.server]
        started = time.monotonic()
        with pytest.raises(ServerDown):
            await s.guarded(limiter.hit(item, "o"))          # limits' calls fail fast too
        with pytest.raises(ServerDown):
            await s.get("o")
        assert time.monotonic() - started < 0.3
        server.restart()
        deadline = time.monotonic() + 5
        while s.down_servers() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert s.down_servers() == []
        assert (await s.incr_many([("o", 1, 60)])).values == {"o": 1}   # no persistence
        assert await s.guarded(limiter.hit(item, "o"))
    finally:
        await s.close()


async def test_rediss_with_a_private_ca_for_all_three_users(redis_factory, tls_files):  # noqa: F811
    server = redis_factory(password=PASSWORD, tls=tls_files)
    url = parse_redis_url(f"rediss://localhost:{server.port}/4")
    ca = tls_files["ca"]
    store = RedisStore(url, password=PASSWORD, ca_file=ca)
    cache = RedisCache(**url.aiocache_options(PASSWORD, 0.5, ca_file=ca))
    limiter = MovingWindowRateLimiter(
        storage_from_string(url.limits_uri(), **url.limits_options(PASSWORD, 0.5, ca_file=ca)))
    untrusted = RedisStore(url, password=PASSWORD)   # the system store does not know our CA
    try:
        assert (await store.incr_many([("t", 2, 60)])).values == {"t": 2}
        await cache.set("t-entry", "v", ttl=60)
        assert await cache.get("t-entry") == "v"
        assert [await limiter.hit(RateLimitItemPerMinute(1), "t") for _ in range(2)] == [True,
                                                                                         False]
        refused = await untrusted.incr_many([("t", 1, 60)])
        assert isinstance(refused.failed["t"], ServerDown)
    finally:
        await store.close()
        await untrusted.close()
        await cache.close()
