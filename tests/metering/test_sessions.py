"""Realtime sessions open at once per caller, counted in buckets of the store: the limit,
across processes sharing memcached, the refresh of live sessions and the slots of a process
that stopped refreshing (it died) coming free within two buckets."""
from __future__ import annotations

import pytest

from openai_gateway.config.storage import parse_storage_url
from openai_gateway.errors import StorageUnavailable, TooManySessions
from openai_gateway.identity.callers import Caller
from openai_gateway.metering.limiter import StoragePolicy
from openai_gateway.metering.sessions import SessionSlots
from openai_gateway.observability.metrics import Metrics
from openai_gateway.store import open_store

ANA, BOB = Caller("user:ana", "10.0.0.1"), Caller("user:bob", "10.0.0.2")


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def slots_on(store, clock=None, limit: int = 2, on_error: str = "closed") -> SessionSlots:
    slots = SessionSlots(store, StoragePolicy(on_error, Metrics()), lambda c: c.id,
                         period=30, clock=clock or Clock())
    slots.configure(limit)
    return slots


@pytest.fixture
async def memory():
    store = open_store(parse_storage_url("memory://"), timeout=0.5)
    yield store
    await store.close()


async def test_a_caller_holds_at_most_its_limit_and_a_closed_session_frees_its_slot(memory):
    slots = slots_on(memory)
    first, second = await slots.acquire(ANA), await slots.acquire(ANA)
    with pytest.raises(TooManySessions) as refused:
        await slots.acquire(ANA)
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "30"
    assert await slots.acquire(BOB) is not None  # each caller its own
    await slots.release(first)
    await slots.release(first)  # once only
    assert await slots.acquire(ANA) is not None
    with pytest.raises(TooManySessions):
        await slots.acquire(ANA)
    await slots.release(second)
    assert len(slots.live) == 2


async def test_live_sessions_stay_counted_and_a_dead_process_frees_them_in_two_buckets(
        memory):
    clock = Clock(30 * 1000 + 29)  # the last second of a bucket
    alive, dead = slots_on(memory, clock), slots_on(memory, clock)
    await alive.acquire(ANA)
    await dead.acquire(ANA)
    for _ in range(3):  # many buckets later, the live one is still counted...
        clock.now += 30
        await alive.refresh()
        newcomer = slots_on(memory, clock, limit=2)
        if clock.now < 30 * 1002:  # ...and the dead one until its buckets are past
            with pytest.raises(TooManySessions):
                await newcomer.acquire(ANA)
    held = await newcomer.acquire(ANA)
    with pytest.raises(TooManySessions):
        await newcomer.acquire(ANA)
    await newcomer.release(held)


async def test_closing_after_a_refresh_gives_its_current_and_next_buckets_back(memory):
    clock = Clock(30 * 1000)
    slots = slots_on(memory, clock, limit=1)
    slot = await slots.acquire(ANA)
    clock.now += 30
    await slots.refresh()
    await slots.release(slot)
    # From the current bucket on (a past one is never read again).
    counts = (await memory.get_many([f"rt/open/user:ana/{b}" for b in range(1000, 1004)])
              ).values
    assert counts == {"rt/open/user:ana/1000": 1, "rt/open/user:ana/1001": 0,
                      "rt/open/user:ana/1002": 0}
    assert await slots.acquire(ANA) is not None


async def test_two_processes_on_memcached_share_the_limit(memcached_url):
    stores = [open_store(parse_storage_url(memcached_url), timeout=0.5) for _ in range(2)]
    try:
        one, two = (slots_on(s) for s in stores)
        await one.acquire(BOB)
        held = await two.acquire(BOB)
        with pytest.raises(TooManySessions):
            await one.acquire(BOB)
        await two.release(held)
        assert await one.acquire(BOB) is not None
    finally:
        for s in stores:
            await s.close()


async def test_a_store_that_fails_follows_storage_on_error(memcached_factory):
    url, server = memcached_factory()
    store = open_store(parse_storage_url(url), timeout=0.2)
    try:
        server.kill()
        server.wait(5)
        assert await slots_on(store, on_error="open").acquire(ANA) is None  # uncounted
        with pytest.raises(StorageUnavailable):
            await slots_on(store, on_error="closed").acquire(ANA)
    finally:
        await store.close()
