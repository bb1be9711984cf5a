"""The serving keys' own checks: allowed origins and trusted proxies."""
from __future__ import annotations

import pytest

from openai_gateway.config.settings import parse

from ..support.settings import ENV, ORIGIN_HINT, problems


@pytest.mark.parametrize("origin", ["localhost:5173", "http://x/", "https://app.example.com/path",
                                    "http://x?y", "ftp://x", "http://", "http://user@x",
                                    "http://x:port", "app.example.com"])
def test_bad_origins(origin):
    assert problems({"cors": {"allow_origins": ["*", origin]}}) == [
        f"cors.allow_origins[1]: got {origin!r}, {ORIGIN_HINT}"]


@pytest.mark.parametrize("origin", ["*", "http://localhost:5173", "https://app.example.com",
                                    "http://[::1]:8000", "https://a.b.example.com:8443"])
def test_good_origins(origin):
    assert parse({"cors": {"allow_origins": [origin]}}, environ=ENV).cors.allow_origins == (origin,)


@pytest.mark.parametrize("proxy", ["localhost", "10.0.0.0/33", "300.1.1.1", "::1::2", ""])
def test_bad_trusted_proxies(proxy):
    assert problems({"server": {"trusted_proxies": ["127.0.0.1", proxy]}}) == [
        f"server.trusted_proxies[1]: got {proxy!r}, expected an IP or CIDR"]


def test_trusted_proxies_accept_ips_and_cidrs():
    entries = ["10.0.0.0/8", "10.1.2.3/8", "fd00::/8", "::1", "192.0.2.7"]
    s = parse({"server": {"trusted_proxies": entries}}, environ=ENV)
    assert s.server.trusted_proxies == tuple(entries)
