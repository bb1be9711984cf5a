"""The prompt cache through the app, on memory and on a real memcached."""
from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest

from openai_gateway.identity.keys import hash_key

CHAT = {"model": "gpt-4o-mini", "temperature": 0,
        "messages": [{"role": "user", "content": "hi"}]}
EMBED = {"model": "text-embedding-3-small", "input": "hello"}


async def post(gw, body, route="/v1/chat/completions", **kw):
    r = await gw.post(route, json=body, **kw)
    return r, await r.read()


async def test_repeat_is_a_hit_with_identical_body(gw, fake):
    r1, b1 = await post(gw, CHAT)
    r2, b2 = await post(gw, CHAT)
    assert (r1.headers["X-Cache"], r2.headers["X-Cache"]) == ("MISS", "HIT")
    assert b1 == b2 and r2.status == 200
    assert r2.headers["Content-Type"].startswith("application/json")
    assert len(fake.posts) == 1


@pytest.mark.parametrize("change", [
    {"max_tokens": 5}, {"seed": 1}, {"temperature": 0.0001}, {"model": "text-embedding-3-small"},
    {"tools": [{"type": "function", "function": {"name": "f"}}]}, {"user": "u2"},
    {"messages": [{"role": "user", "content": "hi "}]},
    {"messages": [{"role": "system", "content": "hi"}]},
    {"response_format": {"type": "json_object"}}, {"stream": False},
])
async def test_any_field_change_is_a_miss(make_gateway, fake, change):
    gw = await make_gateway({"cache": {"sampled": True}, "validation": {"allowed_models": []}})
    await post(gw, CHAT)
    r, _ = await post(gw, {**CHAT, **change})
    assert r.headers["X-Cache"] == "MISS"
    assert len(fake.posts) == 2


async def test_key_order_does_not_matter(gw, fake):
    await post(gw, CHAT)
    r, _ = await post(gw, dict(reversed(list(CHAT.items()))))
    assert r.headers["X-Cache"] == "HIT"


@pytest.mark.parametrize("first, second", [
    ({}, {"OpenAI-Beta": "assistants=v2"}),
    ({"OpenAI-Beta": "assistants=v1"}, {"OpenAI-Beta": "assistants=v2"}),
    ({"Accept": "application/json"}, {"Accept": "text/plain"}),
    ({"Idempotency-Key": "op-1"}, {"Idempotency-Key": "op-2"}),
    ({}, {"Idempotency-Key": "op-1"}),
])
async def test_forwarded_headers_vary_the_cache(gw, fake, first, second):
    # What the upstream was sent decides the answer: one client's answer under a beta is
    # never served to another without it.
    r1, _ = await post(gw, CHAT, headers=first)
    r2, _ = await post(gw, CHAT, headers=second)
    assert (r1.headers["X-Cache"], r2.headers["X-Cache"]) == ("MISS", "MISS")
    assert len(fake.posts) == 2
    sent = [{k: p.headers.get(k) for k in ("OpenAI-Beta", "Accept", "Idempotency-Key")}
            for p in fake.posts]
    assert [{k: v for k, v in h.items() if k in first or k in second} for h in sent] == [
        {k: first.get(k) for k in {*first, *second}},
        {k: second.get(k) for k in {*first, *second}}]
    r3, _ = await post(gw, CHAT, headers=second)  # the same headers again: a hit
    assert r3.headers["X-Cache"] == "HIT" and len(fake.posts) == 2


async def test_a_retry_with_the_same_idempotency_key_is_served_once(gw, fake):
    fake.script = [{"delay": 0.3}]
    headers = {"Idempotency-Key": "op-42", "OpenAI-Beta": "assistants=v2"}
    results = await asyncio.gather(*(post(gw, CHAT, headers=headers) for _ in range(3)))
    r, body = await post(gw, CHAT, headers={"idempotency-key": "op-42",
                                            "openai-beta": "assistants=v2"})
    assert r.headers["X-Cache"] == "HIT" and {b for _, b in results} == {body}
    assert len(fake.posts) == 1


async def test_errors_are_never_cached(gw, fake):
    fake.script = [{"status": 400}]
    r1, _ = await post(gw, CHAT)
    r2, _ = await post(gw, CHAT)
    assert r1.status == 400 and r2.status == 200
    assert r2.headers["X-Cache"] == "MISS"
    r3, _ = await post(gw, CHAT)
    assert r3.headers["X-Cache"] == "HIT"


@pytest.mark.parametrize("cc", ["no-cache", "no-store", "max-age=0, no-store"])
async def test_client_cache_control_bypasses(gw, fake, cc):
    await post(gw, CHAT)
    r, _ = await post(gw, CHAT, headers={"Cache-Control": cc})
    assert r.headers["X-Cache"] == "BYPASS"
    assert len(fake.posts) == 2


async def test_sampled_answers_are_not_cached_by_default(gw, fake):
    body = {k: v for k, v in CHAT.items() if k != "temperature"}
    r1, _ = await post(gw, body)
    r2, _ = await post(gw, dict(body, temperature=0.7))
    assert r1.headers["X-Cache"] == r2.headers["X-Cache"] == "BYPASS"
    r3, _ = await post(gw, EMBED, "/v1/embeddings")
    r4, _ = await post(gw, EMBED, "/v1/embeddings")
    assert (r3.headers["X-Cache"], r4.headers["X-Cache"]) == ("MISS", "HIT")


async def test_cache_routes_are_configurable(make_gateway, fake):
    gw = await make_gateway({"cache": {"routes": ["/v1/embeddings"]}})
    await post(gw, CHAT)
    r, _ = await post(gw, CHAT)
    assert r.headers["X-Cache"] == "BYPASS"


async def test_concurrent_identical_misses_reach_upstream_once(gw, fake):
    fake.script = [{"delay": 0.3}]
    results = await asyncio.gather(*(post(gw, CHAT) for _ in range(8)))
    assert len(fake.posts) == 1
    bodies = {b for _, b in results}
    assert len(bodies) == 1 and all(r.status == 200 for r, _ in results)


async def test_stream_is_replayed_frame_by_frame(gw, fake):
    body = dict(CHAT, stream=True)
    r1 = await gw.post("/v1/chat/completions", json=body)
    frames1 = await r1.read()
    r2 = await gw.post("/v1/chat/completions", json=body)
    chunks2 = [c async for c in r2.content.iter_any()]
    assert (r1.headers["X-Cache"], r2.headers["X-Cache"]) == ("MISS", "HIT")
    assert b"".join(chunks2) == frames1
    assert r2.headers["Content-Type"].startswith("text/event-stream")
    assert len(fake.posts) == 1


async def test_incomplete_streams_are_not_cached(gw, fake):
    body = dict(CHAT, stream=True)
    fake.script = [{"drop_after": 2}]
    await (await gw.post("/v1/chat/completions", json=body)).read()
    r = await gw.post("/v1/chat/completions", json=body)
    assert r.headers["X-Cache"] == "MISS"


async def test_cache_hits_charge_requests_not_tokens(make_gateway, fake):
    gw = await make_gateway({"rate_limit": {"requests": ["3/minute"], "tokens": ["1000/minute"]},
                             "validation": {"max_tokens": 100}})
    r1, _ = await post(gw, CHAT)
    r2, _ = await post(gw, CHAT)
    assert r2.headers["X-Cache"] == "HIT"
    assert r2.headers["x-ratelimit-remaining-requests"] == "1"
    r3, _ = await post(gw, dict(CHAT, seed=3))
    # Only the two upstream answers (6 tokens each) were charged, not the hit; a non-stream
    # answer's headers carry its own settled charge.
    assert r1.headers["x-ratelimit-remaining-tokens"] == str(1000 - 6)
    assert r3.headers["x-ratelimit-remaining-tokens"] == str(1000 - 12)
    r4, _ = await post(gw, CHAT)
    assert r4.status == 429


async def test_cache_scope_per_client_key(make_gateway, fake):
    ka, kb = "gw-a", "gw-b"
    gw = await make_gateway({"clients": [
        {"name": "a", "key_sha256": hash_key(ka)}, {"name": "b", "key_sha256": hash_key(kb)},
        {"name": "s1", "key_sha256": hash_key("gw-s1"), "cache_scope": "shared"}]})
    await post(gw, CHAT, headers={"Authorization": f"Bearer {ka}"})
    r, _ = await post(gw, CHAT, headers={"Authorization": f"Bearer {kb}"})
    assert r.headers["X-Cache"] == "MISS"
    r, _ = await post(gw, CHAT, headers={"Authorization": f"Bearer {ka}"})
    assert r.headers["X-Cache"] == "HIT"
    await post(gw, CHAT)  # anonymous fills the shared scope
    r, _ = await post(gw, CHAT, headers={"Authorization": "Bearer gw-s1"})
    assert r.headers["X-Cache"] == "HIT"


async def test_memory_cache_is_bounded(make_gateway, fake):
    gw = await make_gateway({"cache": {"max_bytes": 2000}})
    for i in range(20):
        await post(gw, dict(CHAT, seed=i))
    from openai_gateway.app import PROXY
    backend = gw.app[PROXY].cache.backend  # memory: the byte-bounded LRU
    assert 0 < backend.bytes <= 2000 and len(backend.items()) < 20
    r, _ = await post(gw, dict(CHAT, seed=0))
    assert r.headers["X-Cache"] == "MISS"  # the oldest was evicted
    r, _ = await post(gw, dict(CHAT, seed=19))
    assert r.headers["X-Cache"] == "HIT"


async def test_large_answers_are_not_cached(make_gateway, fake):
    gw = await make_gateway({"cache": {"max_item_bytes": 100}})
    await post(gw, CHAT)
    r, _ = await post(gw, CHAT)
    assert r.headers["X-Cache"] == "MISS"


# --- memcached ------------------------------------------------------------------------------

async def test_cross_process_hit_through_memcached(gateway_process, memcached_url, fake):
    cfg = {"storage": {"url": memcached_url}}
    a = await gateway_process(cfg)
    b = await gateway_process(cfg)
    body = dict(CHAT, seed=12345)
    async with aiohttp.ClientSession() as s:
        async with s.post(a.url + "/v1/chat/completions", json=body) as r:
            first = (r.headers["X-Cache"], await r.read())
        async with s.post(b.url + "/v1/chat/completions", json=body) as r:
            second = (r.headers["X-Cache"], await r.read())
    assert first[0] == "MISS" and second[0] == "HIT" and first[1] == second[1]
    assert len(fake.posts) == 1


async def test_concurrent_misses_reach_upstream_once_per_process(
        gateway_process, memcached_url, fake):
    """Single flight is per process: a cross-process lock cost two round trips on every
    cacheable miss (see PromptCache.single_flight)."""
    cfg = {"storage": {"url": memcached_url}}
    a = await gateway_process(cfg)
    b = await gateway_process(cfg)
    fake.script = [{"delay": 0.5}, {"delay": 0.5}]
    body = dict(CHAT, seed=777)
    async with aiohttp.ClientSession() as s:
        async def one(url):
            async with s.post(url + "/v1/chat/completions", json=body) as r:
                return r.status, await r.read()
        results = await asyncio.gather(*(one(u) for u in [a.url, b.url] * 4))
    assert all(st == 200 for st, _ in results)
    by_process = [{body for _, body in results[i::2]} for i in (0, 1)]
    assert [len(bodies) for bodies in by_process] == [1, 1]
    assert 1 <= len(fake.posts) <= 2


async def test_memcached_killed_mid_run_still_serves(make_gateway, memcached_factory, fake):
    url, proc = memcached_factory()
    gw = await make_gateway({"storage": {"url": url, "timeout": 0.2}})
    r, _ = await post(gw, CHAT)
    r, _ = await post(gw, CHAT)
    assert r.headers["X-Cache"] == "HIT"
    proc.terminate()
    proc.wait(5)
    r, body = await post(gw, CHAT)
    assert r.status == 200 and b"choices" in body
    assert r.headers["X-Cache"] == "MISS"


@pytest.mark.parametrize("poison", [b"garbage", b"Jnot json", b"J[1,2]", b"Sdata: x\n\n", b""])
async def test_poisoned_memcached_value_is_a_miss(make_gateway, memcached_url, fake, poison):
    from openai_gateway.cache.keys import cache_key
    body = dict(CHAT, seed=4242)
    headers = {"Accept": "application/json"}  # the client's default would be */*
    key = cache_key("/v1/chat/completions", "shared", body, headers)
    host, port = memcached_url.split("//")[1].split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(f"set {key} 0 60 {len(poison)}\r\n".encode() + poison + b"\r\n")
        assert s.recv(100).startswith(b"STORED")
    gw = await make_gateway({"storage": {"url": memcached_url}})
    r, data = await post(gw, body, headers=headers)
    assert r.status == 200 and r.headers["X-Cache"] == "MISS" and b"choices" in data
    with socket.create_connection((host, int(port))) as s:  # the poisoned key was the one read
        s.sendall(f"get {key}\r\n".encode())
        assert s.recv(len(data) + 200).split(b"\r\n")[1] == b"J" + data
    r, _ = await post(gw, body, headers=headers)
    assert r.headers["X-Cache"] == "HIT"


async def test_a_waiter_gets_the_answer_of_a_first_client_that_left(gw, fake):
    fake.script = [{"delay": 1.0}]
    body = dict(CHAT, seed=31)
    leader = asyncio.ensure_future(post(gw, body))
    await asyncio.sleep(0.2)
    follower = asyncio.ensure_future(post(gw, body))
    await asyncio.sleep(0.2)
    leader.cancel()  # the first client disconnects: the upstream answer is read anyway...
    r, data = await asyncio.wait_for(follower, 5)
    assert r.status == 200 and b"choices" in data  # ...and the waiter gets it
    assert r.headers["X-Cache"] == "HIT"
    assert len(fake.posts) == 1 and not fake.aborted


async def test_coalesced_requests_are_hits_and_charge_no_tokens(make_gateway, fake):
    gw = await make_gateway({"rate_limit": {"tokens": ["1000/minute"]},
                             "validation": {"max_tokens": 100}})
    fake.script = [{"delay": 0.3}]
    body = dict(CHAT, seed=41)
    results = await asyncio.gather(*(post(gw, body, headers={"X-Forwarded-For": f"192.0.2.{i}"})
                                     for i in range(3)))
    assert sorted(r.headers["X-Cache"] for r, _ in results) == ["HIT", "HIT", "MISS"]
    for i in range(3):  # only the client whose request reached the upstream was charged
        r, _ = await post(gw, dict(CHAT, seed=50 + i), headers={"X-Forwarded-For": f"192.0.2.{i}"})
        charged = 1000 - int(r.headers["x-ratelimit-remaining-tokens"])
        miss = results[i][0].headers["X-Cache"] == "MISS"
        # The probe's header shows its own settled charge (6) on top of what was charged before.
        assert charged - 6 == (6 if miss else 0), (i, charged)
