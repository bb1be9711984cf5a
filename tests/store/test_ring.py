"""The ring: stable placement, hash tags, and about 1/N of the keys moving per server change."""
from __future__ import annotations

import pytest

from openai_gateway.store.ring import Ring, routing_part

KEYS = [f"key-{i}" for i in range(100_000)]
FOUR = ["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211", "10.0.0.4:11211"]


def placement(servers):
    ring = Ring(servers)
    return [ring.server_for(k) for k in KEYS]


@pytest.fixture(scope="module")
def three_and_four():
    return placement(FOUR[:3]), placement(FOUR)


def test_adding_a_server_moves_a_quarter_of_the_keys_all_to_it(three_and_four):
    before, after = three_and_four
    moved = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert 0.24 < len(moved) / len(KEYS) < 0.26      # ideal 1/4
    assert {b for _, b in moved} == {FOUR[3]}         # nothing moves between old servers


def test_removing_a_server_moves_only_its_keys(three_and_four):
    three, four = three_and_four   # 4 -> 3: removing FOUR[3]
    moved = [(a, b) for a, b in zip(four, three, strict=True) if a != b]
    assert 0.24 < len(moved) / len(KEYS) < 0.26
    assert {a for a, _ in moved} == {FOUR[3]}


def test_keys_spread_evenly(three_and_four):
    _, four = three_and_four
    shares = [four.count(s) / len(KEYS) for s in FOUR]
    assert all(0.24 < s < 0.26 for s in shares), shares


def test_order_and_duplicates_of_the_server_list_do_not_matter():
    a, b = Ring(FOUR), Ring(list(reversed(FOUR)) + FOUR[:1])
    assert all(a.server_for(k) == b.server_for(k) for k in KEYS[:2000])


@pytest.mark.parametrize(("key", "part"), [
    ("{client-7}/2891", "client-7"),
    ("plain-key", "plain-key"),
    ("{}/1", "{}/1"),              # an empty tag is no tag (as in Redis Cluster)
    ("a{b}c{d}", "b"),             # the first tag wins
    ("open{only", "open{only"),
])
def test_routing_part(key, part):
    assert routing_part(key) == part


def test_the_windows_of_one_counter_share_a_server():
    ring = Ring(FOUR)
    for i in range(500):
        assert len({ring.server_for(f"{{c{i}}}/{w}") for w in range(28_000_000, 28_000_010)}) == 1


def test_group_keeps_each_servers_keys_in_order():
    ring = Ring(FOUR)
    groups = ring.group(KEYS[:100])
    assert sorted(k for ks in groups.values() for k in ks) == sorted(KEYS[:100])
    for server, ks in groups.items():
        assert ks == [k for k in KEYS[:100] if ring.server_for(k) == server]


def test_an_empty_ring_is_refused():
    with pytest.raises(ValueError):
        Ring([])
