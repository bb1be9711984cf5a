"""Storage URLs: parsed once, printed back canonical and without secrets."""
from __future__ import annotations

import pytest

from openai_gateway.config.storage import StorageError, StorageURL, parse_storage_url


@pytest.mark.parametrize("url, text", [
    ("memory://", "memory://"),
    ("memcached://a:1,[::1]:2", "memcached://a:1,[::1]:2"),
    ("redis://r:6379", "redis://r:6379/0"),
    ("rediss://gw@[::1]:6380/3", "rediss://gw@[::1]:6380/3"),
])
def test_text(url, text):
    parsed = parse_storage_url(url)
    assert str(parsed) == text and parse_storage_url(text) == parsed
    assert parsed.is_shared == (parsed.kind != "memory")


@pytest.mark.parametrize("url", ["redis://:pw@r:6379", "redis://u:pw@r:6379/0",
                                 "rediss://:@r:6379"])
def test_a_password_in_the_url_is_refused(url):
    with pytest.raises(StorageError, match="without a password"):
        parse_storage_url(url)


def test_storage_url_is_a_value():
    assert StorageURL("redis", (("r", 1),)) == parse_storage_url("redis://r:1/0")
    assert len({parse_storage_url("memory://"), StorageURL("memory")}) == 1
