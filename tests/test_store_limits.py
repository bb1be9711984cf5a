"""limits' own strategies run on the ring through its public storage interface, and decide as
limits' own memcached storage does on one server."""
from __future__ import annotations

import asyncio
import uuid
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from limits import RateLimitItemPerSecond
from limits.aio.storage import MemcachedStorage
from limits.aio.strategies import FixedWindowRateLimiter, SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string

from openai_gateway.store.limits_storage import RingStorage
from openai_gateway.store.memcached import MemcachedCluster

from .store_fixtures import memcached_servers  # noqa: F401  (fixture)
from .test_store_windows import Clock


@pytest.fixture(scope="module")
def ring_and_single(memcached_factory):
    ring = [memcached_factory()[0].removeprefix("memcached://") for _ in range(3)]
    return ring, memcached_factory()[0].removeprefix("memcached://")


async def test_the_scheme_is_registered_with_limits(ring_and_single):
    ring, _ = ring_and_single
    storage = storage_from_string("async+memcached+ring://" + ",".join(ring), timeout=0.3)
    assert isinstance(storage, RingStorage)
    assert storage.cluster.ring.servers == tuple(sorted(ring)) and storage.cluster.timeout == 0.3
    assert await storage.check()
    await storage.cluster.close()


async def _compare(strategy, ring, single, spec, hits, start):
    clock = Clock(start)
    run = uuid.uuid4().hex
    items = [RateLimitItemPerSecond(a, s) for a, s in spec]
    ours = RingStorage(cluster=MemcachedCluster(ring))
    theirs = MemcachedStorage("async+memcached://" + single)
    mine, ref = strategy(ours), strategy(theirs)
    try:
        with mock.patch("time.time", clock):
            for gap, cost, which in hits:
                clock.now += gap
                item = items[which % len(items)]
                assert await mine.hit(item, run, cost=cost) == await ref.hit(item, run, cost=cost)
                assert (await mine.get_window_stats(item, run)
                        == await ref.get_window_stats(item, run))
                assert await mine.test(item, run) == await ref.test(item, run)
    finally:
        await ours.cluster.close()


spec_st = st.lists(st.tuples(st.integers(1, 6), st.sampled_from([3, 10, 60])), min_size=1,
                   max_size=3)
hits_st = st.lists(st.tuples(st.floats(0, 25, allow_nan=False), st.integers(1, 3),
                             st.integers(0, 2)), min_size=1, max_size=25)


@pytest.mark.parametrize("strategy", [SlidingWindowCounterRateLimiter, FixedWindowRateLimiter])
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=spec_st, hits=hits_st, start=st.floats(2e9, 2e9 + 600, allow_nan=False))
def test_same_decisions_as_limits_memcached_storage(ring_and_single, strategy, spec, hits,
                                                    start):
    ring, single = ring_and_single
    asyncio.run(_compare(strategy, ring, single, spec, hits, start))


async def test_a_down_server_is_a_limits_storage_error(memcached_servers):  # noqa: F811
    servers = memcached_servers(2)
    storage = RingStorage(cluster=MemcachedCluster([s.address for s in servers], timeout=0.3),
                          wrap_exceptions=True)
    limiter = SlidingWindowCounterRateLimiter(storage)
    item = RateLimitItemPerSecond(5, 60)
    idents = [f"c{i}" for i in range(40)]
    on_first = [i for i in idents
                if storage.cluster.ring.server_for(item.key_for(i)) == servers[0].address]
    servers[0].kill()
    try:
        for ident in idents:
            if ident in on_first:
                with pytest.raises(StorageError):
                    await limiter.hit(item, ident)
            else:
                assert await limiter.hit(item, ident)
        assert not await storage.check()
    finally:
        await storage.cluster.close()
