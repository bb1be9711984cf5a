"""Who is calling: X-Forwarded-For from trusted proxies only, and gateway-issued client keys."""
from __future__ import annotations

import asyncio
from unittest import mock

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st

from openai_gateway.config.settings import ClientSettings
from openai_gateway.errors import InvalidClientKey
from openai_gateway.identity.addresses import (
    Addresses,
    TrustedProxies,
    address_key,
    client_address,
    forwarded_for,
)
from openai_gateway.identity.callers import Caller, Callers
from openai_gateway.identity.keys import hash_key

TRUSTED = TrustedProxies(("127.0.0.1", "::1", "10.0.0.0/8", "fd00::/8"))


@pytest.mark.parametrize("peer, xff, expected", [
    # No header, or an empty one: the peer.
    ("127.0.0.1", None, "127.0.0.1"),
    ("127.0.0.1", "", "127.0.0.1"),
    ("198.51.100.9", None, "198.51.100.9"),
    # An untrusted peer cannot speak for anyone.
    ("198.51.100.9", "203.0.113.7", "198.51.100.9"),
    ("198.51.100.9", "127.0.0.1", "198.51.100.9"),
    # A trusted peer: the right-most untrusted hop.
    ("127.0.0.1", "203.0.113.7", "203.0.113.7"),
    ("10.1.2.3", "203.0.113.7", "203.0.113.7"),  # inside 10.0.0.0/8
    ("127.0.0.1", "1.1.1.1, 203.0.113.7", "203.0.113.7"),  # spoofed left-most hop
    ("127.0.0.1", "1.1.1.1,2.2.2.2,203.0.113.7", "203.0.113.7"),
    ("127.0.0.1", "203.0.113.7, 10.0.0.5", "203.0.113.7"),  # a trusted hop is skipped
    ("127.0.0.1", " 203.0.113.7 ,  10.0.0.5 ", "203.0.113.7"),
    # Every hop trusted: the left-most one is the best we know.
    ("127.0.0.1", "10.0.0.9, 10.0.0.5", "10.0.0.9"),
    # A malformed hop is where belief stops: the last trusted address.
    ("127.0.0.1", "203.0.113.7, garbage", "127.0.0.1"),
    ("127.0.0.1", "203.0.113.7:4444", "127.0.0.1"),  # a port is not an address
    ("127.0.0.1", "garbage, 203.0.113.7", "203.0.113.7"),  # never reached
    ("127.0.0.1", "203.0.113.7, nope, 10.0.0.5", "10.0.0.5"),
    ("127.0.0.1", " , ", "127.0.0.1"),
    ("127.0.0.1", "unknown", "127.0.0.1"),
    # IPv6.
    ("::1", "2001:db8::1", "2001:db8::1"),
    ("fd00::5", "2001:db8::1, fd00::7", "2001:db8::1"),
    ("2001:db8::9", "203.0.113.7", "2001:db8::9"),
    ("::1", "[2001:db8::1]", "::1"),  # brackets belong to URLs, not to this header
    # IPv4-mapped IPv6, as a dual-stack socket reports IPv4 peers.
    ("::ffff:127.0.0.1", "203.0.113.7", "203.0.113.7"),
    ("::ffff:10.9.9.9", "203.0.113.7", "203.0.113.7"),
    ("::ffff:198.51.100.9", "203.0.113.7", "::ffff:198.51.100.9"),
    ("127.0.0.1", "203.0.113.7, ::ffff:10.0.0.5", "203.0.113.7"),
    # No usable peer address.
    ("unknown", "203.0.113.7", "unknown"),
])
def test_client_address(peer, xff, expected):
    assert client_address(peer, xff, TRUSTED) == expected


@pytest.mark.parametrize("peer", ["127.0.0.1", "::1", "10.0.0.1"])
def test_no_trusted_proxies_trusts_nobody(peer):
    assert client_address(peer, "203.0.113.7", TrustedProxies(())) == peer


@pytest.mark.parametrize("address, trusted", [
    ("127.0.0.1", True), ("127.0.0.2", False), ("10.255.255.255", True), ("11.0.0.0", False),
    ("::1", True), ("fdff::1", True), ("fe80::1", False), ("::ffff:10.0.0.1", True),
    ("not-an-ip", False), ("", False),
])
def test_trusted_proxies_membership(address, trusted):
    assert TRUSTED.contains(address) is trusted


# --- Callers: addresses and client keys ---------------------------------------------------

KEY_A, KEY_B = "gw-key-for-backend", "gw-key-for-batch"
BACKEND = ClientSettings(name="backend", key_sha256=hash_key(KEY_A), requests=("600/minute",))
BATCH = ClientSettings(name="batch", key_sha256=hash_key(KEY_B).upper())


def request(peer: str | None = "198.51.100.9", **headers: str):
    transport = mock.Mock()
    extra = {"peername": (peer, 50000) if peer else None}
    transport.get_extra_info.side_effect = lambda name, default=None: extra.get(name, default)
    return make_mocked_request("POST", "/v1/chat/completions", headers=headers,
                               transport=transport)


class resolver:
    """Who `Callers.identify` says is calling: its id, address and client key (not what its
    plan allows)."""

    def __init__(self, clients=(BACKEND, BATCH), require=False, ipv6_prefix=64):
        addresses = Addresses(trusted_proxies=("127.0.0.1",), ipv6_prefix=ipv6_prefix)
        self.callers = Callers(addresses=addresses, bearer=None, tiers={}, clients=clients,
                               anonymous=True, require_client_key=require)

    def resolve(self, req) -> Caller:
        who = asyncio.run(self.callers.identify(req))
        return Caller(who.id, who.ip, who.settings)


def test_hash_key_is_hex_sha256():
    assert hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.parametrize("authorization", [None, "Bearer sk-browser-placeholder", f"Bearer {KEY_A}",
                                           "Basic dXNlcjpwYXNz"])
def test_without_client_keys_authorization_is_ignored(authorization):
    headers = {"Authorization": authorization} if authorization else {}
    client = resolver(clients=()).resolve(request(**headers))
    assert client == Caller(id="ip:198.51.100.9", ip="198.51.100.9", settings=None)


@pytest.mark.parametrize("authorization, expected", [
    (f"Bearer {KEY_A}", BACKEND),
    (f"bearer {KEY_A}", BACKEND),  # the scheme is case-insensitive
    (f"BEARER   {KEY_A}  ", BACKEND),
    (f"Bearer {KEY_B}", BATCH),  # an upper-case hash in the config matches too
])
def test_known_client_key(authorization, expected):
    client = resolver().resolve(request(Authorization=authorization))
    assert client == Caller(id=f"key:{expected.name}", ip="198.51.100.9", settings=expected)
    assert client.settings.name == expected.name


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer gw-unknown"}, {"Authorization": f"Basic {KEY_A}"},
    {"Authorization": KEY_A}, {"Authorization": "Bearer "}, {"Authorization": f"Bearer {KEY_A}x"},
])
def test_unknown_client_key_is_anonymous(headers):
    assert resolver().resolve(request(**headers)) == Caller(id="ip:198.51.100.9",
                                                            ip="198.51.100.9")


@pytest.mark.parametrize("clients", [(BACKEND,), ()])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer gw-unknown"}])
def test_required_client_key_refuses_401(clients, headers):
    with pytest.raises(InvalidClientKey) as info:
        resolver(clients, require=True).resolve(request(**headers))
    resp = info.value.response()
    assert resp.status == 401
    assert orjson.loads(resp.body) == {"error": {
        "message": "Missing or unknown client key. Send a gateway-issued key as "
                   "'Authorization: Bearer <key>'.",
        "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}


def test_required_client_key_accepts_a_known_key():
    client = resolver(require=True).resolve(request(Authorization=f"Bearer {KEY_A}"))
    assert client.id == "key:backend" and client.settings is BACKEND


@pytest.mark.parametrize("peer, xff, ip", [
    ("127.0.0.1", "203.0.113.7", "203.0.113.7"),
    ("198.51.100.9", "203.0.113.7", "198.51.100.9"),
    (None, "203.0.113.7", "unknown"),
])
def test_resolver_uses_the_forwarded_address(peer, xff, ip):
    client = resolver().resolve(request(peer, **{"X-Forwarded-For": xff}))
    assert client == Caller(id=f"ip:{ip}", ip=ip)
    keyed = resolver().resolve(request(peer, **{"X-Forwarded-For": xff,
                                                "Authorization": f"Bearer {KEY_A}"}))
    assert (keyed.id, keyed.ip) == ("key:backend", ip)


# --- the fast address parser agrees with the ipaddress module -----------------------------

_TRUSTED = ("127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8", "192.0.2.128/25")


def _reference(address: str) -> bool | None:
    """ipaddress's answer: None if not an address, else whether it is trusted."""
    import ipaddress
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(n) for n in _TRUSTED)


@given(st.one_of(st.ip_addresses().map(str), st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
                 st.text(alphabet="0123456789abcdef.:x% ", max_size=24)))
@settings(max_examples=400, deadline=None)
def test_trusted_proxies_match_ipaddress_semantics(address):
    from openai_gateway.identity.addresses import TrustedProxies, _ip
    if "%" in address:
        return  # scoped IPv6 literals: ipaddress accepts them, a hop never carries one
    expected = _reference(address)
    assert (_ip(address) is not None) == (expected is not None)
    assert TrustedProxies(_TRUSTED).contains(address) == bool(expected)


# --- several X-Forwarded-For lines, IPv6 networks -----------------------------------------


def request_with_lines(peer: str, *lines: str):
    from multidict import CIMultiDict

    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (peer, 50000) if name == "peername" else default)
    headers = CIMultiDict(("X-Forwarded-For", line) for line in lines)
    return make_mocked_request("POST", "/v1/chat/completions", headers=headers,
                               transport=transport)


@pytest.mark.parametrize("lines, joined", [
    ((), None),
    (("203.0.113.7",), "203.0.113.7"),
    (("1.1.1.1", "203.0.113.7"), "1.1.1.1, 203.0.113.7"),
    (("1.1.1.1, 2.2.2.2", "203.0.113.7", "10.0.0.5"), "1.1.1.1, 2.2.2.2, 203.0.113.7, 10.0.0.5"),
])
def test_forwarded_for_reads_every_line(lines, joined):
    assert forwarded_for(request_with_lines("127.0.0.1", *lines).headers) == joined


def test_a_proxy_that_appends_its_own_line_is_believed():
    """HAProxy's `option forwardfor` adds a line; the client's own line comes first."""
    req = request_with_lines("127.0.0.1", "1.1.1.1", "203.0.113.7")
    assert resolver().resolve(req) == Caller(id="ip:203.0.113.7", ip="203.0.113.7")


@pytest.mark.parametrize("address, prefix, key", [
    ("203.0.113.7", 64, "203.0.113.7"),
    ("::ffff:203.0.113.7", 64, "203.0.113.7"),
    ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 64, "2001:db8:1:2::/64"),
    ("2001:db8:1:2::1", 64, "2001:db8:1:2::/64"),
    ("2001:DB8:1:2:0:0:0:FFFF", 64, "2001:db8:1:2::/64"),
    ("2001:db8:1:2ff::1", 56, "2001:db8:1:200::/56"),
    ("2001:db8::1", 128, "2001:db8::1"),
    ("2001:db8:ffff::1", 0, "::/0"),
    ("::1", 64, "::/64"),
    ("unknown", 64, "unknown"),
    ("fe80::1%eth0", 64, "fe80::1%eth0"),
])
def test_address_key(address, prefix, key):
    assert address_key(address, prefix) == key


@pytest.mark.parametrize("peer, prefix, cid", [
    ("2001:db8:1:2::9", 64, "ip:2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff::9", 64, "ip:2001:db8:1:2::/64"),  # the same client, another address
    ("2001:db8:1:2::9", 48, "ip:2001:db8:1::/48"),
    ("198.51.100.9", 64, "ip:198.51.100.9"),
])
def test_ipv6_clients_are_keyed_by_their_network(peer, prefix, cid):
    client = resolver(clients=(), ipv6_prefix=prefix).resolve(request(peer))
    assert (client.id, client.ip) == (cid, peer)  # the log still shows the full address


def test_a_realtime_secrets_caller_gets_its_key_or_tiers_limits_as_configured_now():
    from openai_gateway.config.settings import TierSettings
    from openai_gateway.errors import InvalidToken
    key = ClientSettings(name="backend", key_sha256=hash_key("k" * 32), tier="pro",
                         models=("gpt-realtime",))
    callers = Callers(addresses=Addresses(trusted_proxies=()), bearer=None, clients=(key,),
                      tiers={"pro": TierSettings(tokens=("500/day",))}, anonymous=True,
                      require_client_key=False)
    caller = callers.granted("key:backend", None, "10.0.0.1")
    assert (caller.id, caller.tier, caller.models) == ("key:backend", "pro",
                                                       frozenset({"gpt-realtime"}))
    user = callers.granted("user:abc", "pro", "10.0.0.2")
    assert user.limits is not None and user.limits.tokens[0].amount == 500
    with pytest.raises(InvalidToken, match="no longer configured"):
        callers.granted("key:gone", None, "10.0.0.1")
