"""Request limits and token budgets through the app, on memory and on a real memcached."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from openai_gateway.identity.keys import hash_key

from ..conftest import ORIGIN, free_port

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
STREAM = dict(CHAT, stream=True)


async def test_exactly_the_limit_passes_under_concurrency(make_gateway, fake):
    gw = await make_gateway({"rate_limit": {"requests": ["50/minute"]}})
    results = await asyncio.gather(*(gw.post("/v1/embeddings", json={
        "model": "text-embedding-3-small", "input": f"x{i}"}) for i in range(200)))
    statuses = [r.status for r in results]
    assert statuses.count(200) == 50 and statuses.count(429) == 150
    assert len(fake.posts) == 50


async def test_429_shape_and_headers(make_gateway, fake):
    gw = await make_gateway({"rate_limit": {"requests": ["2/minute", "100/day"]}})
    ok = [await gw.post("/v1/chat/completions", json=CHAT) for _ in range(2)]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in ok] == ["1", "0"]
    assert ok[0].headers["x-ratelimit-limit-requests"] == "2"
    assert ok[0].headers["x-ratelimit-reset-requests"].endswith("s")
    r = await gw.post("/v1/chat/completions", json=CHAT, headers={"Origin": ORIGIN})
    assert r.status == 429
    err = (await r.json())["error"]
    assert err["code"] == "rate_limit_exceeded" and err["type"] == "requests"
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN  # the browser can read it
    assert len(fake.posts) == 2


async def test_preflights_are_never_counted(make_gateway):
    gw = await make_gateway({"rate_limit": {"requests": ["1/minute"]}})
    for _ in range(5):
        r = await gw.options("/v1/chat/completions", headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
        assert r.status == 200
    assert (await gw.post("/v1/chat/completions", json=CHAT)).status == 200


async def test_each_forwarded_client_has_its_own_budget(make_gateway):
    gw = await make_gateway({"rate_limit": {"requests": ["1/minute"]}})
    a = {"X-Forwarded-For": "198.51.100.1"}
    b = {"X-Forwarded-For": "198.51.100.2"}
    assert (await gw.post("/v1/chat/completions", json=CHAT, headers=a)).status == 200
    assert (await gw.post("/v1/chat/completions", json=CHAT, headers=b)).status == 200
    assert (await gw.post("/v1/chat/completions", json=CHAT, headers=a)).status == 429


async def test_spoofed_forwarded_for_from_untrusted_peer_is_ignored(make_gateway):
    gw = await make_gateway({"server": {"trusted_proxies": []},
                             "rate_limit": {"requests": ["1/minute"]}})
    assert (await gw.post("/v1/chat/completions", json=CHAT,
                          headers={"X-Forwarded-For": "1.1.1.1"})).status == 200
    r = await gw.post("/v1/chat/completions", json=CHAT, headers={"X-Forwarded-For": "2.2.2.2"})
    assert r.status == 429


async def test_client_keys_get_their_own_limits_and_models(make_gateway, fake):
    key = "gw-test-client-key"
    gw = await make_gateway({
        "rate_limit": {"requests": ["1/minute"]},
        "clients": [{"name": "backend", "key_sha256": hash_key(key), "requests": ["3/minute"],
                     "models": ["gpt-4o"]}]})
    auth = {"Authorization": f"Bearer {key}"}
    gpt4o = dict(CHAT, model="gpt-4o")
    # Its models replace the default allowlist (a refused request still counts).
    r = await gw.post("/v1/chat/completions", json=CHAT, headers=auth)
    assert r.status == 400 and (await r.json())["error"]["param"] == "model"
    assert [(await gw.post("/v1/chat/completions", json=gpt4o, headers=auth)).status
            for _ in range(3)] == [200, 200, 429]
    # An unknown key is anonymous (default limits) and never forwarded.
    other = {"Authorization": "Bearer made-up"}
    assert (await gw.post("/v1/chat/completions", json=CHAT, headers=other)).status == 200
    assert (await gw.post("/v1/chat/completions", json=CHAT, headers=other)).status == 429
    assert all("made-up" not in str(s.headers) and key not in str(s.headers) for s in fake.seen)


async def test_require_client_key(make_gateway, fake):
    key = "gw-required"
    gw = await make_gateway({"auth": {"require_client_key": True},
                             "clients": [{"name": "app", "key_sha256": hash_key(key)}]})
    r = await gw.post("/v1/chat/completions", json=CHAT)
    assert r.status == 401 and (await r.json())["error"]["code"] == "invalid_api_key"
    r = await gw.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer no"})
    assert r.status == 401
    assert fake.seen == []
    r = await gw.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"})
    assert r.status == 200


async def test_rules_by_model(make_gateway):
    gw = await make_gateway({
        "validation": {"allowed_models": []},
        "rate_limit": {"requests": ["100/minute"],
                       "rules": [{"model": "gpt-4o", "requests": ["1/minute"]}]}})
    assert (await gw.post("/v1/chat/completions", json=dict(CHAT, model="gpt-4o"))).status == 200
    assert (await gw.post("/v1/chat/completions", json=dict(CHAT, model="gpt-4o"))).status == 429
    assert (await gw.post("/v1/chat/completions", json=CHAT)).status == 200


async def test_token_budget_charged_from_stream_usage(make_gateway, fake):
    gw = await make_gateway({"rate_limit": {"requests": ["100/minute"], "tokens": ["40/minute"]},
                             "validation": {"max_tokens": 30}})  # the cap every request reserves
    fake.chunks = 20
    r = await gw.post("/v1/chat/completions", json=STREAM)
    text = await r.text()
    # The gateway asked for usage, and removed the chunk the client did not ask for.
    assert fake.posts[-1].json()["stream_options"] == {"include_usage": True}
    assert '"usage":{' not in text and text.endswith("data: [DONE]\n\n")
    assert text.count("chat.completion.chunk") == 20
    assert r.headers["x-ratelimit-limit-tokens"] == "40"
    # 1 prompt + 20 completion tokens charged: 19 left, and this one needs ~1 + 30.
    r = await gw.post("/v1/chat/completions", json=dict(CHAT, max_tokens=30))
    assert r.status == 429
    err = (await r.json())["error"]
    assert err["code"] == "rate_limit_exceeded" and "tokens" in err["message"]
    assert r.headers["x-ratelimit-remaining-tokens"] == "19"
    assert len(fake.posts) == 1


async def test_token_usage_kept_when_client_asked(make_gateway, fake):
    gw = await make_gateway({"rate_limit": {"tokens": ["1000/minute"]},
                             "validation": {"max_tokens": 100}})
    body = dict(STREAM, stream_options={"include_usage": True})
    text = await (await gw.post("/v1/chat/completions", json=body)).text()
    assert '"usage":{"prompt_tokens"' in text


async def test_token_budget_from_json_usage(make_gateway, fake):
    # Every request reserves 1 prompt + 3 output tokens (the cap) and uses as much.
    gw = await make_gateway({"rate_limit": {"tokens": ["8/minute"]},
                             "validation": {"max_tokens": 3}})
    r1 = await gw.post("/v1/chat/completions", json=CHAT)
    assert r1.status == 200 and r1.headers["x-ratelimit-remaining-tokens"] == "4"
    r2 = await gw.post("/v1/chat/completions", json=CHAT)  # exactly fits what is left
    assert r2.status == 200
    r3 = await gw.post("/v1/chat/completions", json=CHAT)
    assert r3.status == 429 and r3.headers["x-ratelimit-remaining-tokens"] == "0"


# --- memcached: one budget across processes -------------------------------------------------

async def test_two_processes_share_one_budget(gateway_process, memcached_url, fake):
    cfg = {"storage": {"url": memcached_url}, "rate_limit": {"requests": ["6/minute"]}}
    a = await gateway_process(cfg)
    b = await gateway_process(cfg)
    statuses = []
    async with aiohttp.ClientSession() as s:
        for i in range(10):
            url = (a if i % 2 else b).url
            async with s.post(url + "/v1/chat/completions", json=CHAT) as r:
                statuses.append(r.status)
    assert statuses.count(200) == 6 and statuses.count(429) == 4, statuses
    assert "sliding-window-counter" in a.log()


@pytest.mark.parametrize("mode,expected", [("open", 200), ("closed", 503)])
async def test_storage_down_at_start_and_mid_run(make_gateway, memcached_factory, mode, expected):
    port = free_port()
    dead = f"memcached://127.0.0.1:{port}"
    gw = await make_gateway({"storage": {"url": dead, "on_error": mode, "timeout": 0.2}})
    r = await gw.post("/v1/chat/completions", json=CHAT)
    assert r.status == expected
    if expected == 503:
        assert (await r.json())["error"]["code"] == "storage_unavailable"
    ready = await gw.get("/readyz")
    assert ready.status == (503 if mode == "closed" else 200)
    assert (await ready.json())["storage"]["rate_limit"] == "down"
    # The storage comes up: requests are limited again, readiness recovers.
    _, proc = memcached_factory(port)
    await asyncio.sleep(0.2)
    for _ in range(20):
        r = await gw.post("/v1/chat/completions", json=CHAT)
        if r.status == 200:
            break
        await asyncio.sleep(0.2)
    assert r.status == 200 and "x-ratelimit-remaining-requests" in r.headers
    assert (await gw.get("/readyz")).status == 200
    # And goes down mid-run.
    proc.terminate()
    proc.wait(5)
    r = await gw.post("/v1/chat/completions", json=CHAT)
    assert r.status == expected


def test_moving_window_on_memcached_is_a_config_error():
    from openai_gateway.config.settings import ConfigError, parse
    with pytest.raises(ConfigError) as exc:
        parse({"storage": {"url": "memcached://127.0.0.1:11211"},
               "rate_limit": {"strategy": "moving-window"}}, environ={"OPENAI_API_KEY": "x"})
    assert "rate_limit.strategy" in exc.value.problems[0]
    assert "memcached" in exc.value.problems[0]


async def test_memory_storage_stays_bounded_and_forgets_idle_clients():
    import threading

    from openai_gateway.config.settings import RateLimitSettings
    from openai_gateway.identity.callers import Caller

    from ..support.meter import Meter

    limiter = Meter(RateLimitSettings(requests=("5/second",)), on_error="open")
    busy = Caller(id="ip:192.0.2.1", ip="192.0.2.1")
    idle = Caller(id="ip:192.0.2.2", ip="192.0.2.2")
    threads = threading.active_count()
    async with limiter.running():
        storage = limiter.store
        await limiter.check_requests(idle, "/v1/chat/completions", None)
        for _ in range(4):  # several windows' worth of hits, each window full
            for _ in range(5):
                await limiter.check_requests(busy, "/v1/chat/completions", None)
            await asyncio.sleep(1.05)
        # A client's list never holds more than its limit, however long it keeps going.
        assert max(len(e) for e in storage.events.values()) <= 5
        storage._next_sweep = 0  # due now
        await limiter.check_requests(busy, "/v1/chat/completions", None)
        await asyncio.sleep(0.01)
        # The idle client's newest entry expired: the sweep forgot it; the busy one stays.
        assert len(storage.events) == 1
        assert threading.active_count() == threads  # no thread pool behind the sweep


async def test_parallel_requests_cannot_overshoot_the_token_budget(make_gateway, fake):
    gw = await make_gateway({"rate_limit": {"tokens": ["100/minute"]}})
    fake.script = [{"delay": 0.3}] * 10
    body = dict(CHAT, max_tokens=30)  # each reserves ~31 tokens before it is forwarded
    results = await asyncio.gather(*(gw.post("/v1/chat/completions", json=dict(body, seed=i))
                                     for i in range(10)))
    assert [r.status for r in results].count(200) == 3 and len(fake.posts) == 3


async def test_token_reservation_is_refunded_on_memcached(make_gateway, memcached_url, fake):
    gw = await make_gateway({"storage": {"url": memcached_url},
                             "rate_limit": {"tokens": ["1000/minute"], "requests": ["100/minute"]},
                             "upstream": {"retries": 0}})
    ident = {"X-Forwarded-For": "198.51.100.77"}
    fake.script = [{"status": 500}]
    big = dict(CHAT, max_tokens=900)  # reserves ~901 of the 1000: two never fit together
    r = await gw.post("/v1/chat/completions", json=big, headers=ident)
    assert r.status == 500
    r = await gw.post("/v1/chat/completions", json=dict(big, seed=1), headers=ident)
    assert r.status == 200 and r.headers["x-ratelimit-limit-tokens"] == "1000"
