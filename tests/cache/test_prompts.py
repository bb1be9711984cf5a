"""The cache's pure parts: canonical keys, stored entries, policy, and the byte-bounded LRU."""
from __future__ import annotations

import asyncio
import copy
import random
from contextlib import contextmanager

import orjson
import pytest
from aiocache.lock import OptimisticLock, OptimisticLockError, RedLock
from aiocache.serializers import JsonSerializer
from multidict import CIMultiDict

from openai_gateway.cache.keys import VARY_HEADERS, Entry, cache_key
from openai_gateway.cache.prompts import PromptCache
from openai_gateway.config.settings import CacheSettings
from openai_gateway.observability.metrics import Metrics
from openai_gateway.pipeline.validation import ParsedRequest
from openai_gateway.store.memory import MemoryStore
from openai_gateway.store.memory_cache import BoundedMemoryCache
from openai_gateway.upstream.client import FORWARDED_HEADERS

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
BODY = {
    "model": "gpt-4o-mini", "temperature": 0, "max_tokens": 50, "seed": 7,
    "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "string"}}}}}],
}


def changed(path: tuple, value) -> dict:
    body = copy.deepcopy(BODY)
    target = body
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return body


# --- cache_key ------------------------------------------------------------------------------


def key(route: str, scope: str, body: dict, headers: dict | None = None) -> str:
    """cache_key with headers as aiohttp hands them over (case-insensitive)."""
    return cache_key(route, scope, body, CIMultiDict(headers or {}))


def test_key_ignores_key_order_at_every_depth():
    reordered = {
        "tools": [{"function": {"parameters": {"properties": {"a": {"type": "string"}},
                                               "type": "object"}, "name": "f"},
                   "type": "function"}],
        "messages": [{"content": "be brief", "role": "system"}, {"content": "hi", "role": "user"}],
        "seed": 7, "max_tokens": 50, "temperature": 0, "model": "gpt-4o-mini",
    }
    assert key(CHAT, "shared", reordered) == key(CHAT, "shared", BODY)


@pytest.mark.parametrize("path, value", [
    (("model",), "gpt-4o"),
    (("temperature",), 0.1),
    (("max_tokens",), 51),
    (("seed",), 8),
    (("user",), "u1"),  # an added field
    (("messages", 1, "content"), "hi!"),
    (("messages", 0, "role"), "developer"),
    (("tools", 0, "function", "name"), "g"),
    (("tools", 0, "function", "parameters", "properties", "a", "type"), "number"),
])
def test_any_field_change_changes_the_key(path, value):
    assert key(CHAT, "shared", changed(path, value)) != key(CHAT, "shared", BODY)


def test_removed_field_changes_the_key():
    body = {k: v for k, v in BODY.items() if k != "seed"}
    assert key(CHAT, "shared", body) != key(CHAT, "shared", BODY)


def test_message_order_counts():
    body = changed(("messages",), list(reversed(BODY["messages"])))
    assert key(CHAT, "shared", body) != key(CHAT, "shared", BODY)


@pytest.mark.parametrize("a, b", [
    ((CHAT, "shared"), (CHAT, "key:backend")),
    ((CHAT, "key:a"), (CHAT, "key:b")),
    ((CHAT, "shared"), ("/v1/completions", "shared")),
    ((CHAT, "shared"), (EMBEDDINGS, "shared")),
])
def test_scope_and_route_change_the_key(a, b):
    assert key(*a, BODY) != key(*b, BODY)


@pytest.mark.parametrize("scope, body", [
    ("shared", {}),
    ("key:a name with spaces", BODY),
    ("key:" + "x" * 1000, {"input": "word " * 100_000}),
    ("shared", {"messages": [{"role": "user", "content": "ü\n\t\r\0 😀"}]}),
])
def test_key_is_memcached_safe(scope, body):
    k = key(CHAT, scope, body, {"OpenAI-Beta": "x y\udcff", "Idempotency-Key": "k" * 5000})
    assert len(k) == 66 and k.startswith("c:")
    assert all(c in "0123456789abcdef" for c in k[2:])  # no space, control or non-ASCII


def test_key_is_stable():
    assert key(CHAT, "shared", {"model": "m"}) == key(CHAT, "shared", {"model": "m"})


def test_every_forwarded_header_is_part_of_the_key():
    # The key may not leave out anything the upstream is sent.
    assert set(VARY_HEADERS) == set(FORWARDED_HEADERS)


@pytest.mark.parametrize("a, b", [
    ({}, {"OpenAI-Beta": "assistants=v2"}),
    ({"OpenAI-Beta": "assistants=v1"}, {"OpenAI-Beta": "assistants=v2"}),
    ({}, {"Accept": "application/json"}),
    ({"Accept": "*/*"}, {"Accept": "application/json"}),
    ({}, {"Idempotency-Key": "op-1"}),
    ({"Idempotency-Key": "op-1"}, {"Idempotency-Key": "op-2"}),
    ({}, {"OpenAI-Beta": ""}),  # absent is not empty
    ({"OpenAI-Beta": "a", "Accept": "b"}, {"OpenAI-Beta": "b", "Accept": "a"}),  # no swapping
    ({"OpenAI-Beta": "1:x"}, {"OpenAI-Beta": "1", "Accept": "x"}),  # framing holds
    ({"OpenAI-Beta": '"], ["'}, {}),
    ({"OpenAI-Beta": "null"}, {}),
    # Bytes that are not UTF-8 arrive as surrogates (aiohttp decodes with surrogateescape).
    ({"OpenAI-Beta": "\udcff"}, {"OpenAI-Beta": "\\udcff"}),
    ({"OpenAI-Beta": "\udcff"}, {"OpenAI-Beta": "\udcfe"}),
    ({"OpenAI-Beta": "\udcff"}, {}),
])
def test_forwarded_headers_change_the_key(a, b):
    assert key(CHAT, "shared", BODY, a) != key(CHAT, "shared", BODY, b)


def test_a_body_at_the_depth_limit_gets_a_key():
    body: dict = {"model": "m"}
    while True:  # as deep as orjson still writes: what the validator lets through
        deeper = {"model": "m", "x": body}
        try:
            orjson.dumps(deeper)
        except orjson.JSONEncodeError:
            break
        body = deeper
    assert key(CHAT, "shared", body, {"Accept": "\udcff"}).startswith("c:")


@pytest.mark.parametrize("headers", [
    {"openai-beta": "assistants=v2", "IDEMPOTENCY-KEY": "op-1"},  # names are case-insensitive
    {"OpenAI-Beta": "assistants=v2", "Idempotency-Key": "op-1", "User-Agent": "x",
     "Authorization": "Bearer y", "Cache-Control": "max-age=60", "X-Forwarded-For": "192.0.2.1"},
])
def test_only_forwarded_headers_count(headers):
    same = {"OpenAI-Beta": "assistants=v2", "Idempotency-Key": "op-1"}
    assert key(CHAT, "shared", BODY, headers) == key(CHAT, "shared", BODY, same)


# --- Entry ----------------------------------------------------------------------------------

SSE = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n'
RESPONSES_SSE = (b'event: response.output_text.delta\ndata: {"delta":"hi"}\n\n'
                 b'event: response.completed\ndata: {"type":"response.completed"}\n\n')


@pytest.mark.parametrize("entry, encoded", [
    (Entry(False, b'{"id":"x"}'), b'J{"id":"x"}'),
    (Entry(True, SSE), b"S" + SSE),
    (Entry(True, RESPONSES_SSE), b"S" + RESPONSES_SSE),  # the responses API has no [DONE]
])
def test_entry_round_trip(entry, encoded):
    assert entry.encode() == encoded
    assert Entry.decode(encoded) == entry


@pytest.mark.parametrize("value", [
    None, "J{}", 123, b"", b"J", b"S", b"X{}", b"J{not json", b"J[1,2]", b'J"text"', b"Jnull",
    b"S" + SSE[:-len(b"data: [DONE]\n\n")],  # a stream without its end
    b"\x80\x81\x82",
])
def test_entry_decode_garbage_is_none(value):
    assert Entry.decode(value) is None


# --- policy -------------------------------------------------------------------------------


def cache(**settings) -> PromptCache:
    return PromptCache(CacheSettings(**settings), MemoryStore(), Metrics())


def parsed(**body) -> ParsedRequest:
    return ParsedRequest(body, body.get("model"), bool(body.get("stream")), 0, None)


@pytest.mark.parametrize("settings, route, body, cache_control, expected", [
    # Route not cached (or the cache off): bypass.
    ({"routes": (EMBEDDINGS,)}, CHAT, {"temperature": 0}, None, "BYPASS"),
    ({"enabled": False}, EMBEDDINGS, {}, None, "BYPASS"),
    ({}, "/v1/models", {}, None, "BYPASS"),
    # The client says no.
    ({}, EMBEDDINGS, {}, "no-cache", "BYPASS"),
    ({}, EMBEDDINGS, {}, "no-store", "BYPASS"),
    ({}, EMBEDDINGS, {}, "max-age=0, no-store", "BYPASS"),
    ({}, EMBEDDINGS, {}, "No-Cache", "BYPASS"),
    ({}, CHAT, {"temperature": 0}, "no-cache", "BYPASS"),
    ({}, EMBEDDINGS, {}, "max-age=60", None),
    ({}, EMBEDDINGS, {}, "", None),
    # Sampled answers vary: not cached unless configured.
    ({}, CHAT, {}, None, "BYPASS"),  # unset means 1
    ({}, CHAT, {"temperature": 0.7}, None, "BYPASS"),
    ({}, CHAT, {"temperature": None}, None, "BYPASS"),
    ({}, "/v1/completions", {}, None, "BYPASS"),
    ({}, "/v1/responses", {"temperature": 1}, None, "BYPASS"),
    ({}, CHAT, {"temperature": 0}, None, None),
    ({}, CHAT, {"temperature": 0.0}, None, None),
    ({}, "/v1/responses", {"temperature": 0}, None, None),
    ({"sampled": True}, CHAT, {}, None, None),
    ({"sampled": True}, CHAT, {"temperature": 1.3}, None, None),
    # Deterministic routes: whatever the temperature.
    ({}, EMBEDDINGS, {}, None, None),
    ({}, EMBEDDINGS, {"temperature": 1}, None, None),
    ({}, "/v1/moderations", {}, None, None),
])
def test_policy(settings, route, body, cache_control, expected):
    assert cache(**settings).policy(route, parsed(**body), cache_control) == expected


def test_configure_replaces_the_policy():
    c = cache()
    assert c.policy(EMBEDDINGS, parsed(), None) is None
    c.configure(CacheSettings(enabled=False))
    assert c.policy(EMBEDDINGS, parsed(), None) == "BYPASS"


# --- BoundedMemoryCache -------------------------------------------------------------------


def memory(max_bytes: int, overhead: int = 0, **kw) -> BoundedMemoryCache:
    return BoundedMemoryCache(max_bytes, overhead, timeout=None, **kw)


def state(c: BoundedMemoryCache) -> tuple[list[str], int]:
    items = c.items()
    assert c.bytes == sum(len(v) + c.entry_overhead for _, v in items)
    return [k for k, _ in items], c.bytes


async def test_inserting_past_the_bound_evicts_the_least_recently_used():
    c = memory(10)
    for key in "abc":
        await c.set(key, b"1234")
    assert state(c) == (["b", "c"], 8)
    await c.set("d", b"12")
    assert state(c) == (["b", "c", "d"], 10)  # exactly the bound is allowed
    await c.set("e", b"123456789")
    assert state(c) == (["e"], 9)


async def test_a_get_refreshes_recency():
    c = memory(12)
    for key in "abc":
        await c.set(key, b"1234")
    assert await c.get("a") == b"1234"
    await c.set("d", b"1234")
    assert state(c) == (["c", "a", "d"], 12)  # "b" was the least recently used
    assert await c.get("b") is None


async def test_a_value_larger_than_the_bound_is_not_kept():
    c = memory(10)
    await c.set("a", b"1234")
    await c.set("big", b"x" * 11)
    assert state(c) == ([], 0)


async def test_overwrite_counts_only_the_new_value():
    c = memory(100)
    await c.set("a", b"x" * 40)
    await c.set("a", b"x" * 10)
    assert state(c) == (["a"], 10)
    await c.set("a", b"x" * 60)
    await c.set("b", b"x" * 30)
    assert state(c) == (["a", "b"], 90)


async def test_delete_counts_once():
    c = memory(100)
    await c.set("a", b"x" * 40)
    await c.set("b", b"x" * 30)
    assert await c.delete("a") == 1
    assert await c.delete("a") == 0
    assert state(c) == (["b"], 30)


async def test_ttl_expiry_keeps_the_byte_count():
    c = memory(100)
    await c.set("short", b"x" * 40, ttl=0.05)
    await c.set("long", b"x" * 30, ttl=60)
    await asyncio.sleep(0.15)
    assert await c.get("short") is None  # past its deadline: a miss, and gone
    assert state(c) == (["long"], 30)
    assert await c.get("long") == b"x" * 30
    await c.close()


@contextmanager
def no_loop_timer():
    """Fails if the block arms an event-loop timer (aiocache's memory cache arms one per set)."""
    loop = asyncio.get_running_loop()
    armed: list = []
    with pytest.MonkeyPatch.context() as mp:
        for name in ("call_later", "call_at"):
            real = getattr(loop, name)
            mp.setattr(loop, name, lambda *a, _real=real, **k: armed.append(a) or _real(*a, **k))
        yield
    assert armed == []


async def test_expiry_arms_no_loop_timer_and_every_read_path_honours_it():
    c = memory(1000)
    with no_loop_timer():
        await c.set("a", b"1", ttl=0.05)
        await c.set("b", b"2", ttl=0.05)
        await c.set("c", b"3", ttl=0.05)
        assert await c.exists("a") and await c.get("b") == b"2"
    await asyncio.sleep(0.1)
    with no_loop_timer():
        assert not await c.exists("a")
        assert await c.get("b") is None
        assert await c.add("c", b"new", ttl=60)  # an expired key may be added again
        assert await c.expire("b", 60) is False
        assert state(c) == (["c"], 3)
        assert await c.expire("c", 0.05) and await c.get("c") == b"new"
        assert await c.multi_get(["a", "c"]) == [None, b"new"]
    await asyncio.sleep(0.1)
    assert await c.multi_get(["c"]) == [None] and state(c) == ([], 0)


async def test_overwrite_without_ttl_cancels_the_old_expiry():
    c = memory(100)
    await c.set("a", b"x" * 40, ttl=0.05)
    await c.set("a", b"x" * 20)
    await asyncio.sleep(0.15)
    assert state(c) == (["a"], 20)


async def test_byte_count_matches_the_contents_under_random_use():
    rng = random.Random(1234)
    c = memory(500)
    for _ in range(2000):
        key = f"k{rng.randrange(30)}"
        op = rng.random()
        if op < 0.6:
            await c.set(key, b"x" * rng.randrange(1, 120))
        elif op < 0.85:
            await c.get(key)
        else:
            await c.delete(key)
        assert state(c)[1] <= 500


async def test_entry_overhead_counts_against_the_bound():
    c = memory(100, overhead=30)
    for k in "abc":
        await c.set(k, b"x" * 10)
    assert state(c) == (["b", "c"], 80)
    await c.delete("b")
    assert state(c) == (["c"], 40)


def test_lookup_and_store_are_the_in_place_path():
    c = memory(10)
    assert c.lookup("a") is None
    assert c.store("a", b"1234", 60) and c.store("b", b"1234")
    assert c.lookup("a") == b"1234"  # refreshed: "b" is now the least recently used
    c.store("c", b"1234")
    assert state(c) == (["a", "c"], 8)


async def test_add_refuses_a_live_key():
    c = memory(100)
    assert await c.add("a", b"1")
    with pytest.raises(ValueError):
        await c.add("a", b"2")
    assert await c.get("a") == b"1"


async def test_multi_set_and_clear_by_namespace():
    c = memory(100)
    await c.multi_set([("x:1", b"a"), ("x:2", b"bb"), ("y:1", b"ccc")], ttl=60)
    assert await c.multi_get(["x:1", "x:2", "y:1", "z"]) == [b"a", b"bb", b"ccc", None]
    assert await c.clear(namespace="x:")
    assert state(c) == (["y:1"], 3)
    assert await c.clear()
    assert state(c) == ([], 0)


async def test_a_namespace_prefixes_the_stored_key():
    c = memory(100, namespace="ns:")
    await c.set("a", b"1")
    assert await c.get("a") == b"1" and state(c) == (["ns:a"], 1)


async def test_increment_keeps_decimal_text_and_the_deadline():
    c = memory(100)
    assert await c.increment("n") == 1
    assert await c.increment("n", 5) == 6
    assert await c.get("n") == b"6" and state(c) == (["n"], 1)
    await c.set("t", b"7", ttl=0.05)
    assert await c.increment("t") == 8
    await asyncio.sleep(0.1)
    assert await c.get("t") is None  # the increment did not make it permanent
    await c.set("s", b"text")
    with pytest.raises(TypeError):
        await c.increment("s")


@pytest.mark.parametrize("value", [123, {"a": 1}, None])
async def test_values_must_have_a_byte_length(value):
    c = memory(100)
    with pytest.raises(TypeError):
        await c.set("a", value)
    assert state(c) == ([], 0)


async def test_a_serializer_turns_objects_into_countable_values():
    c = memory(100, serializer=JsonSerializer())
    await c.set("a", {"b": [1, 2]})
    assert await c.get("a") == {"b": [1, 2]} and state(c) == (["a"], len('{"b": [1, 2]}'))


async def test_raw_commands_are_refused():
    with pytest.raises(NotImplementedError):
        await memory(100).raw("clear")


async def test_aiocache_locks_work_on_it():
    c = memory(100)
    async with RedLock(c, "job", lease=5):
        assert await c.exists("job-lock")
    assert not await c.exists("job-lock") and state(c) == ([], 0)
    await c.set("v", b"1")
    async with OptimisticLock(c, "v") as lock:
        await c.set("v", b"2")  # someone else wrote meanwhile
        with pytest.raises(OptimisticLockError):
            await lock.cas(b"3")
    async with OptimisticLock(c, "v") as lock:
        assert await lock.cas(b"3")
    assert await c.get("v") == b"3"


async def test_configure_changes_the_running_bound():
    c = cache(max_bytes=10_000)
    async with c.running():
        assert c.backend.max_bytes == 10_000  # memory: the store's byte-bounded LRU
        c.configure(CacheSettings(max_bytes=500))
        assert c.backend.max_bytes == 500
