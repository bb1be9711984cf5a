"""Spend tallies: the micro-dollars settled per tier, per UTC day and calendar month, exact, on
memory, memcached and Redis; and the spend report built on them and the ceilings."""
from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from openai_gateway.config.storage import parse_storage_url
from openai_gateway.errors import StorageUnavailable
from openai_gateway.metering.budgets import Budgets, Reservation
from openai_gateway.metering.limiter import StoragePolicy
from openai_gateway.metering.rules import Rules
from openai_gateway.metering.tally import SpendTally, spend_report
from openai_gateway.observability.metrics import Metrics
from openai_gateway.store import open_store

from ..support.store_fixtures import redis_factory  # noqa: F401  (fixture)

NO_BUDGETS = Rules(SimpleNamespace(requests=(), tokens=(), spend=(), rules=()),
                   SimpleNamespace(daily_usd=0, monthly_usd=0))
#: 2026-12-31 23:59:59 UTC and the next second, in the next day, month and year.
LAST_SECOND = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
NEXT_YEAR = LAST_SECOND + 2


@pytest.fixture(scope="module")
def redis_url(redis_factory) -> str:  # noqa: F811
    return f"redis://{redis_factory().address}/4"


@pytest.fixture(params=["memory", "memcached", "redis"])
def url(request) -> str:
    if request.param == "memory":
        return "memory://"
    return request.getfixturevalue(f"{request.param}_url")


async def add(tally: SpendTally, tier: str | None, micro: int, *, now: float) -> None:
    """A settled charge's tally, as the budgets' settlement counts it (Budgets.settle)."""
    await tally.store.adjust([], tally.charges(tier, micro, now=now), now=now)


def tally_on(url: str, tiers=("free", "pro"), on: bool = True, namespace: str = ""):
    store = open_store(parse_storage_url(url), timeout=0.5)
    # Keys of their own: memcached and Redis are shared by the session's tests.
    tally = SpendTally(store, StoragePolicy("open", Metrics()),
                       prefix=namespace or "spent-" + uuid.uuid4().hex[:8])
    tally.configure(tiers, on=on)
    return store, tally


async def test_each_tier_counts_exact_micro_dollars_per_day_and_month(url):
    store, tally = tally_on(url)
    try:
        for tier, micro in (("free", 4_746), ("free", 1), ("pro", 250_000), (None, 7),
                            ("gold", 3)):  # "gold" is no configured tier: counted as none
            await add(tally, tier, micro, now=LAST_SECOND)
        report = await tally.read(now=LAST_SECOND)
        assert report == {
            "day": {"date": "2026-12-31", "spent_micro": 254_757,
                    "tiers": {"free": 4_747, "pro": 250_000, "none": 10}},
            "month": {"month": "2026-12", "spent_micro": 254_757,
                      "tiers": {"free": 4_747, "pro": 250_000, "none": 10}}}
        # A second later it is another day, month and year: they start from nothing.
        await add(tally, "pro", 1_000_001, now=NEXT_YEAR)
        later = await tally.read(now=NEXT_YEAR)
        assert later["day"] == {"date": "2027-01-01", "spent_micro": 1_000_001,
                                "tiers": {"free": 0, "pro": 1_000_001, "none": 0}}
        assert later["month"]["month"] == "2027-01" and later["month"]["spent_micro"] == 1_000_001
        # The day before is still there to read.
        assert (await tally.read(now=LAST_SECOND))["day"]["spent_micro"] == 254_757
    finally:
        await store.close()


async def test_nothing_is_counted_when_it_is_off():
    store, tally = tally_on("memory://", on=False)
    assert tally.charges("free", 100, now=LAST_SECOND) == []
    await add(tally, "free", 100, now=LAST_SECOND)
    assert (await tally.read(now=LAST_SECOND))["day"]["spent_micro"] == 0
    await store.close()


async def test_a_store_that_is_down_costs_the_count_not_the_request(free_port_url):
    store, tally = tally_on(free_port_url)
    budgets = Budgets(store, StoragePolicy("open", Metrics()), ident=lambda c: c.id)
    budgets.configure(NO_BUDGETS)
    try:
        # Never raises: logged and counted as a storage error, the tally then short.
        assert await budgets.settle(Reservation(), tokens=0, micro_usd=100,
                                    also_charge=tally.charges("free", 100, now=time.time())) == {}
        with pytest.raises(StorageUnavailable):
            await tally.read()
    finally:
        await store.close()


@pytest.fixture
def free_port_url() -> str:
    from ..conftest import free_port
    return f"memcached://127.0.0.1:{free_port()}"


async def test_the_report_has_the_ceilings_and_the_tallies(url):
    store, tally = tally_on(url)
    budgets = Budgets(store, StoragePolicy("open", Metrics()), ident=lambda c: c.id)
    budgets.configure(Rules(SimpleNamespace(requests=(), tokens=(), spend=(), rules=()),
                            SimpleNamespace(daily_usd=5.0, monthly_usd=0)))
    try:
        await add(tally, "free", 12_345, now=time.time())
        report = await spend_report(budgets, tally)
        assert report["budget"] is True
        assert set(report["ceilings"]) == {"daily"}
        assert report["ceilings"]["daily"]["limit_micro"] == 5_000_000
        assert report["today"]["tiers"]["free"] == 12_345
        assert report["today"]["date"] == datetime.now(UTC).strftime("%Y-%m-%d")
        assert report["this_month"]["spent_micro"] == 12_345
        budgets.configure(Rules(SimpleNamespace(requests=(), tokens=(), spend=(), rules=()),
                                SimpleNamespace(daily_usd=0, monthly_usd=0)))
        assert await spend_report(budgets, tally) == {"budget": False}
    finally:
        await store.close()
