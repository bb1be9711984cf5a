"""The shared path through the app on real memcached: how many round trips a request costs,
and that limits, budgets and cache still decide as on memory."""
from __future__ import annotations

import asyncio

import pytest

from ..support.store_fixtures import memcached_servers, relays  # noqa: F401  (fixtures)

CHAT = {"model": "gpt-4o-mini", "temperature": 0,
        "messages": [{"role": "user", "content": "Say hi"}]}
#: Every storage user on the request path: request limits, a model rule, token and dollar
#: budgets per client, the gateway-wide ceiling, and the cache (temperature 0).
EVERYTHING = {"rate_limit": {"requests": ["100/minute", "1000/day"], "tokens": ["100000/day"],
                             "spend": ["5/day"],
                             "rules": [{"model": "gpt-4o-mini", "requests": ["50/minute"]}]},
              "budget": {"daily_usd": 100.0}}


async def _turns_before_upstream(gw, relay, fake, body) -> int:
    """Round trips to memcached from the request's arrival to the upstream call."""
    seen = len(fake.posts)
    fake.script = [{"delay": 0.3}]
    relay.reset()
    answer = asyncio.create_task(gw.post("/v1/chat/completions", json=body))
    while len(fake.posts) == seen:
        await asyncio.sleep(0.005)
    turns = relay.turns
    r = await answer
    assert r.status == 200 and r.headers["X-Cache"] == "MISS"
    return turns


async def test_a_miss_costs_two_round_trips_before_the_upstream(
        make_gateway, memcached_servers, relays, fake):  # noqa: F811
    [server] = memcached_servers(1)
    relay = await relays(server.address)
    gw = await make_gateway({**EVERYTHING, "storage": {"url": f"memcached://{relay.address}"}})
    await gw.post("/v1/chat/completions", json=dict(CHAT, seed=1))  # connections opened
    # The first request of a client creates its counters; later ones find them.
    for seed in (2, 3):
        assert await _turns_before_upstream(gw, relay, fake, dict(CHAT, seed=seed)) == 2
    # A hit: the same two round trips, plus one giving the reservation back.
    relay.reset()
    r = await gw.post("/v1/chat/completions", json=dict(CHAT, seed=3))
    assert r.headers["X-Cache"] == "HIT" and relay.turns <= 3


async def test_a_miss_on_a_ring_asks_each_server_at_most_twice(
        make_gateway, memcached_servers, relays, fake):  # noqa: F811
    servers = memcached_servers(3)
    rel = [await relays(s.address) for s in servers]
    url = "memcached://" + ",".join(r.address for r in rel)
    gw = await make_gateway({**EVERYTHING, "storage": {"url": url}})
    await gw.post("/v1/chat/completions", json=dict(CHAT, seed=1))
    seen = len(fake.posts)
    fake.script = [{"delay": 0.3}]
    for r in rel:
        r.reset()
    answer = asyncio.create_task(gw.post("/v1/chat/completions", json=dict(CHAT, seed=2)))
    while len(fake.posts) == seen:
        await asyncio.sleep(0.005)
    per_server = [r.turns for r in rel]
    assert (await answer).status == 200
    assert max(per_server) <= 2 and sum(per_server) >= 2, per_server


@pytest.mark.parametrize("storage", ["memory", "memcached"])
async def test_limits_and_budgets_decide_alike_on_memory_and_memcached(
        make_gateway, memcached_servers, fake, storage):  # noqa: F811
    url = "memory://"
    if storage == "memcached":
        url = "memcached://" + ",".join(s.address for s in memcached_servers(3))
    gw = await make_gateway({"storage": {"url": url},
                             "rate_limit": {"requests": ["4/minute"],
                                            "rules": [{"model": "gpt-4o-mini",
                                                       "requests": ["3/minute"]}]}})
    statuses = []
    for seed in range(5):
        r = await gw.post("/v1/chat/completions", json=dict(CHAT, seed=seed))
        statuses.append((r.status, r.headers.get("x-ratelimit-remaining-requests")))
    # The rule (3/minute) refuses the 4th; the 5th hits the client's own 4/minute, which
    # the refused 4th counted (every request counts before its body is read).
    assert [s for s, _ in statuses] == [200, 200, 200, 429, 429]
    assert [left for _, left in statuses[:3]] == ["2", "1", "0"]


async def test_a_hit_on_memcached_spends_nothing(make_gateway, memcached_servers, fake):  # noqa: F811
    url = "memcached://" + ",".join(s.address for s in memcached_servers(2))
    gw = await make_gateway({"storage": {"url": url},
                             "rate_limit": {"requests": ["100/minute"], "tokens": ["1000/day"]}})
    body = dict(CHAT, seed=99, max_tokens=50)
    miss = await gw.post("/v1/chat/completions", json=body)
    left = miss.headers["x-ratelimit-remaining-tokens"]
    hit = await gw.post("/v1/chat/completions", json=body)
    assert hit.headers["X-Cache"] == "HIT" and "x-ratelimit-remaining-tokens" not in hit.headers
    other = await gw.post("/v1/chat/completions", json=dict(CHAT, seed=100, max_tokens=1))
    # The next miss sees what the first one settled to, minus its own reservation: the hit's
    # reservation went back.
    assert int(other.headers["x-ratelimit-remaining-tokens"]) >= int(left) - 20
