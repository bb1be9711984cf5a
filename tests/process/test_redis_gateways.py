"""A real redis-server and two real gateway processes: limits' moving window exact across
processes, the cache shared through aiocache's RedisCache, budgets on atomic increments, and
an outage that behaves like a memcached server's."""
from __future__ import annotations

import asyncio
import time

import aiohttp

from ..support.store_fixtures import redis_factory  # noqa: F401  (fixture)

PASSWORD = "s3cret-for-tests"
SAMPLED = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi"}]}
CACHED = dict(SAMPLED, temperature=0)


async def gateways(gateway_process, server, extra=None):
    cfg = {"storage": {"url": f"redis://{server.address}/2", "password_env": "GW_REDIS_PASSWORD",
                       "timeout": 0.3, "on_error": "open"},
           "rate_limit": {"requests": ["6/minute"], "tokens": ["100000/day"]}, **(extra or {})}
    env = {"GW_REDIS_PASSWORD": PASSWORD}
    return [await gateway_process(cfg, env=env), await gateway_process(cfg, env=env)]


async def post(s, url, body, ip):
    async with s.post(url + "/v1/chat/completions", json=body,
                      headers={"X-Forwarded-For": ip}) as r:
        await r.read()
        return r.status, r.headers.get("X-Cache")


async def test_six_of_ten_pass_whichever_process_and_the_cache_is_shared(
        gateway_process, redis_factory, fake):  # noqa: F811
    server = redis_factory(password=PASSWORD)
    a, b = await gateways(gateway_process, server)
    async with aiohttp.ClientSession() as s:
        statuses = [(await post(s, (a, b)[n % 2].url, SAMPLED, "10.0.0.1"))[0]
                    for n in range(10)]
        assert statuses == [200] * 6 + [429] * 4
        assert [await post(s, g.url, CACHED, "10.0.0.2") for g in (a, b)] == [
            (200, "MISS"), (200, "HIT")]
    assert "moving window on redis" in a.log()
    assert PASSWORD not in a.log() + b.log()


async def test_redis_stopped_and_restarted(gateway_process, redis_factory, fake):  # noqa: F811
    server = redis_factory(password=PASSWORD)
    gws = await gateways(gateway_process, server)
    async with aiohttp.ClientSession() as s:
        server.kill()
        statuses = [(await post(s, gws[n % 2].url, SAMPLED, "10.0.1.1"))[0] for n in range(10)]
        assert statuses == [200] * 10, "on_error=open: served, unlimited"
        async with s.get(gws[0].url + "/readyz") as r:
            doc = await r.json()
        assert doc["down_servers"] == [server.address]
        server.restart()
        t0 = time.monotonic()
        while True:  # each gateway probes on its own: both must have seen it back
            states = []
            for g in gws:
                async with s.get(g.url + "/readyz") as r:
                    states.append((await r.json())["status"])
            if states == ["ok", "ok"]:
                break
            assert time.monotonic() - t0 < 5
            await asyncio.sleep(0.1)
        statuses = [(await post(s, gws[n % 2].url, SAMPLED, "10.0.1.2"))[0] for n in range(10)]
        assert statuses == [200] * 6 + [429] * 4
