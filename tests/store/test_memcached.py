"""The memcached cluster client against real memcached processes: values, round trips counted
by a relay, and losing and regaining a server."""
from __future__ import annotations

import asyncio
import time

import pytest

from openai_gateway.store import Hit
from openai_gateway.store.errors import ServerDown
from openai_gateway.store.memcached import MAX_RELATIVE_TTL, MemcachedCluster, memcached_ttl
from openai_gateway.store.windows import Window

from ..support.store_fixtures import memcached_servers, relays  # noqa: F401  (fixtures)


@pytest.fixture
async def cluster_of(memcached_servers):  # noqa: F811
    made = []

    async def make(addresses, **kw):
        c = MemcachedCluster(addresses, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        await c.close()


def keys_on(cluster, server, n, prefix="k"):
    out, i = [], 0
    while len(out) < n:
        if cluster.ring.server_for(f"{prefix}{i}") == server:
            out.append(f"{prefix}{i}")
        i += 1
    return out


async def test_counters_start_at_zero_count_and_floor_at_zero(memcached_servers, cluster_of):  # noqa: F811
    c = await cluster_of([s.address for s in memcached_servers(1)])
    first = await c.incr_many([("a", 3, 60), ("b", 1, 60)])
    assert first.values == {"a": 3, "b": 1} and not first.failed
    assert (await c.incr_many([("a", 2, 60)])).values == {"a": 5}
    got = await c.get_many(["a", "b", "missing"])
    assert {k: int(v) for k, v in got.values.items()} == {"a": 5, "b": 1}
    down = await c.decr_many([("a", 9), ("missing", 1)])
    assert down.values == {"a": 0, "missing": 0}


async def test_bytes_with_ttl(memcached_servers, cluster_of):  # noqa: F811
    c = await cluster_of([s.address for s in memcached_servers(1)])
    assert await c.get("entry") is None
    assert await c.set("entry", b"\x00answer\r\n", 60)
    assert await c.get("entry") == b"\x00answer\r\n"
    assert not await c.add("entry", b"other", 60)
    assert await c.add("fresh", b"v", 60)
    assert await c.delete("entry") and await c.get("entry") is None


async def test_a_ttl_over_30_days_is_sent_as_an_absolute_time(memcached_servers, cluster_of):  # noqa: F811
    assert memcached_ttl(120) == 120
    assert memcached_ttl(MAX_RELATIVE_TTL + 1, now=1_000_000.0) == 1_000_000 + MAX_RELATIVE_TTL + 1
    c = await cluster_of([s.address for s in memcached_servers(1)])
    month_window = 2 * 31 * 24 * 3600   # a "1/month" counter lives two months
    await c.incr_many([("monthly", 1, month_window)])
    assert await c.get("monthly") == b"1"   # sent relative, memcached would expire it at once


@pytest.mark.parametrize("key", ["", "has space", "x" * 251, "new\nline", "caf\u00e9"])
async def test_bad_keys_are_refused_before_any_io(memcached_servers, cluster_of, key):  # noqa: F811
    c = await cluster_of([s.address for s in memcached_servers(1)])
    with pytest.raises(ValueError):
        await c.get_many(["fine", key])
    with pytest.raises(ValueError):
        await c.incr_many([("fine", 1, 60), (key, 1, 60)])
    with pytest.raises(ValueError):
        await c.decr_many([("fine", 1), (key, 1)])
    with pytest.raises(ValueError):
        await c.set(key, b"v", 60)
    assert await c.get("fine") is None      # nothing was sent for the good key either


# --- round trips ---------------------------------------------------------------------------


async def test_round_trips_on_one_server(memcached_servers, cluster_of, relays):  # noqa: F811
    server = memcached_servers(1)[0]
    relay = await relays(server.address)
    c = await cluster_of([relay.address])
    await c.get_many(["warm-up"])   # opens the connection
    counts = {}
    for name, call in [
        ("get_many of 7 keys", c.get_many([f"g{i}" for i in range(7)])),
        ("incr_many of 4 new counters", c.incr_many([(f"i{i}", 1, 60) for i in range(4)])),
        ("incr_many of 4 existing counters", c.incr_many([(f"i{i}", 1, 60) for i in range(4)])),
        ("decr_many of 2 counters", c.decr_many([("i0", 1), ("i1", 1)])),
    ]:
        relay.reset()
        await call
        counts[name] = relay.turns
    assert counts == dict.fromkeys(counts, 1)
    assert relay.connections == 0   # all pipelined on the connection already open


async def test_get_many_asks_every_server_once_in_parallel(memcached_servers, cluster_of,  # noqa: F811
                                                           relays):  # noqa: F811
    rs = [await relays(s.address) for s in memcached_servers(3)]
    c = await cluster_of([r.address for r in rs])
    keys = [f"spread-{i}" for i in range(30)]
    await c.get_many(keys)                 # opens one connection per server
    for r in rs:
        r.reset()
    await c.incr_many([(k, 1, 60) for k in keys])
    assert [r.turns for r in rs] == [1, 1, 1]
    for r in rs:
        r.reset()
    got = await c.get_many(keys)
    assert [r.turns for r in rs] == [1, 1, 1]
    assert got.values == dict.fromkeys(keys, b"1")


async def test_a_request_costs_one_round_trip_and_a_refusal_two(memcached_servers,  # noqa: F811
                                                                 cluster_of, relays):  # noqa: F811
    relay = await relays(memcached_servers(1)[0].address)
    c = await cluster_of([relay.address])
    now = time.time()
    # Two request limits and two budgets of one client, plus the cache entry, as the gateway
    # checks them for one request: counted first, decided after, in one burst.
    wins = [Window("req-min", 60, 60), Window("req-day", 1000, 86400),
            Window("tok-min", 20000, 60), Window("usd-day", 500_000, 86400)]
    await c.get_many(["warm-up"])
    relay.reset()
    got = await c.count([Hit(w) for w in wins], now=now, reads=["cache-entry"])
    assert got.allowed and relay.turns == 1
    # A refused hit gives its increments back: a second round trip.
    tight = Window("tight", 1, 60)
    await c.count([Hit(tight)], now=now)
    relay.reset()
    got = await c.count([Hit(tight)], now=now)
    assert not got.allowed and got.refused_by == tight
    assert relay.turns == 2   # the increment with the read, then the give-back
    assert got.stats(tight).remaining == 0


# --- losing a server -----------------------------------------------------------------------


async def test_a_killed_server_fails_its_keys_fast_and_returns(memcached_servers, cluster_of):  # noqa: F811
    servers = memcached_servers(3)
    c = await cluster_of([s.address for s in servers], timeout=0.5)
    victim = servers[0]
    dead_keys = keys_on(c, victim.address, 5)
    live_keys = [k for s in servers[1:] for k in keys_on(c, s.address, 5)]
    await c.incr_many([(k, 1, 60) for k in dead_keys + live_keys])
    victim.kill()

    first = await c.incr_many([(k, 1, 60) for k in dead_keys + live_keys])
    assert set(first.failed) == set(dead_keys)
    assert all(isinstance(e, ServerDown) and e.server == victim.address
               for e in first.failed.values())
    assert first.values == dict.fromkeys(live_keys, 2)       # the others stay exact
    assert c.down_servers() == [victim.address]
    assert dict(c.server_states())[victim.address] is False

    started = time.monotonic()
    with pytest.raises(ServerDown):
        await c.get(dead_keys[0])
    assert time.monotonic() - started < c.timeout              # no I/O while down

    victim.restart()
    deadline = time.monotonic() + 5
    while c.down_servers() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert c.down_servers() == []
    back = await c.incr_many([(k, 1, 60) for k in dead_keys])
    assert back.values == dict.fromkeys(dead_keys, 1)   # a restarted memcached starts empty


async def test_a_hung_server_costs_one_timeout_then_no_io(memcached_servers, cluster_of,  # noqa: F811
                                                          relays):  # noqa: F811
    servers = memcached_servers(2)
    rs = [await relays(s.address) for s in servers]
    c = await cluster_of([r.address for r in rs], timeout=0.3)
    hung_key = keys_on(c, rs[0].address, 1)[0]
    live_key = keys_on(c, rs[1].address, 1)[0]
    await c.get_many([hung_key, live_key])
    servers[0].pause()
    try:
        first = await c.get_many([hung_key, live_key])
        assert set(first.failed) == {hung_key} and first.values == {}
        rs[0].reset()
        for _ in range(20):
            again = await c.get_many([hung_key, live_key])
            assert set(again.failed) == {hung_key}
        # Only the background probe talks to the hung server, never the 20 requests.
        assert rs[0].bytes_up <= 8 * len(b"version\r\n")
    finally:
        servers[0].resume()
    deadline = time.monotonic() + 5
    while c.down_servers() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert c.down_servers() == [] and not (await c.get_many([hung_key])).failed


async def test_ping_names_the_servers_down(memcached_servers, cluster_of):  # noqa: F811
    servers = memcached_servers(2)
    c = await cluster_of([s.address for s in servers])
    assert await c.ping() == []
    servers[1].kill()
    assert await c.ping() == [servers[1].address]


@pytest.mark.parametrize("fail_open", [True, False])
async def test_count_decides_the_live_windows_and_leaves_the_dead_ones_to_policy(
        memcached_servers, cluster_of, fail_open):  # noqa: F811
    servers = memcached_servers(2)
    changes = []
    c = await cluster_of([s.address for s in servers],
                         on_change=lambda server, up: changes.append((server, up)))
    now = time.time()
    dead_key, live_key = (keys_on(c, s.address, 1, prefix="w")[0] for s in servers)
    dead, live = Window(dead_key, 5, 60), Window(live_key, 5, 60)
    servers[0].kill()
    got = await c.count([Hit(dead), Hit(live)], now=now, fail_open=fail_open)
    assert got.failed == [dead] and isinstance(got.error, ServerDown)
    assert got.allowed is fail_open and got.refused_by is None
    assert got.stats(live).remaining == (4 if fail_open else 5)   # counted only when allowed
    assert changes == [(servers[0].address, False)]
    # While it is down: nothing waits for it, the live window stays exact.
    for _ in range(6):
        got = await c.count([Hit(dead), Hit(live)], now=now, fail_open=True)
    assert not got.allowed and got.refused_by == live and got.stats(live).remaining == 0


async def test_each_window_can_carry_its_own_cost(memcached_servers, cluster_of):  # noqa: F811
    c = await cluster_of([s.address for s in memcached_servers(1)])
    now = time.time()
    requests, tokens, spend = (Window("req", 10, 60), Window("tok", 1000, 60),
                               Window("usd", 50, 86400))
    got = await c.count([Hit(requests, 1), Hit(tokens, 400), Hit(spend, 0)], now=now)
    assert got.allowed
    assert [got.stats(w).remaining for w in (requests, tokens, spend)] == [9, 600, 50]
    got = await c.count([Hit(requests, 1), Hit(tokens, 601)], now=now)  # over the token budget
    assert not got.allowed and got.refused_by == tokens
    assert got.stats(requests).remaining == 9          # nothing counted: all or nothing


def test_a_burst_answer_split_across_reads_waits_for_the_rest():
    """memcachio hands `parse` whatever has arrived; an incomplete answer must ask for more
    (and say how much it read, so the buffer rewinds) rather than return short."""
    from io import BytesIO

    from memcachio.errors import MemcachedError, NotEnoughData

    from openai_gateway.store.memcached import _Burst

    async def run() -> None:
        burst = _Burst([b"mg a v", b"ma b N60 J1 D1 v", b"mg c v"])
        whole = b"MN\r\nVA 3\r\nabc\r\nVA 1\r\n1\r\nEN\r\n"
        assert bytes(burst.build_request()).startswith(b"mn\r\nmg a v\r\nma b N60 J1 D1 v\r\n")
        for cut in (3, 10, 16, len(whole) - 2):
            with pytest.raises(NotEnoughData) as info:
                burst.parse(BytesIO(whole[:cut]), None)
            assert info.value.data_read <= cut
        assert burst.parse(BytesIO(whole), None) == [b"abc", b"1", None]
        # An error answer mid-burst: every answer is read (nothing left for the next
        # command on the connection), then the burst fails.
        data = BytesIO(b"MN\r\nCLIENT_ERROR bad\r\nVA 1\r\n1\r\nEN\r\nnext")
        with pytest.raises(MemcachedError):
            burst.parse(data, None)
        assert data.read() == b"next"

    asyncio.run(run())
