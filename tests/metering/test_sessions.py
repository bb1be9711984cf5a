"""Realtime sessions open at once per caller, counted in buckets of the store: the limit,
across processes sharing memcached, the refresh of live sessions and the slots of a process
that stopped refreshing (it died) coming free within two buckets."""
from __future__ import annotations

import time
import uuid

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
    """A clock the test moves: at the start of a bucket of 30 s, near the real time (the
    memory store forgets counters by the real one)."""

    def __init__(self) -> None:
        self.now = float(int(time.time()) // 30 * 30)

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


@pytest.fixture(params=["memory", "memcached"])
async def store(request):
    url = "memory://" if request.param == "memory" else request.getfixturevalue("memcached_url")
    store = open_store(parse_storage_url(url), timeout=0.5)
    yield store
    await store.close()


async def test_live_sessions_stay_counted_and_a_dead_process_frees_them_in_two_buckets(
        store):
    memory = store  # the same moves on each store
    clock = Clock()
    clock.now += 25  # late in a bucket
    alive, dead = slots_on(memory, clock), slots_on(memory, clock)
    ana = Caller(f"user:{uuid.uuid4().hex}", "-")  # memcached outlives the test
    await alive.acquire(ana)
    await dead.acquire(ana)
    newcomer = slots_on(memory, clock)
    clock.now += 10  # the next bucket, before anyone moved: both still count
    with pytest.raises(TooManySessions):
        await newcomer.acquire(ana)
    await alive.refresh()  # the live process moves its session; the dead one cannot
    with pytest.raises(TooManySessions):
        await newcomer.acquire(ana)
    for _ in range(3):  # a bucket later the dead one no longer counts, the live one does
        clock.now += 30
        await alive.refresh()
        held = await newcomer.acquire(ana)
        with pytest.raises(TooManySessions):
            await newcomer.acquire(ana)
        await newcomer.release(held)


async def test_a_session_closed_after_a_move_frees_its_slot(memory):
    clock = Clock()
    slots = slots_on(memory, clock, limit=1)
    slot = await slots.acquire(ANA)
    clock.now += 30
    await slots.refresh()
    with pytest.raises(TooManySessions):
        await slots.acquire(ANA)
    await slots.release(slot)
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
