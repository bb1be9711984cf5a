"""Storage URLs: parsed once, printed back without secrets, handed to limits as its URIs."""
from __future__ import annotations

import pytest
from limits.aio.storage import MemcachedStorage, MemoryStorage
from limits.storage import storage_from_string

from openai_gateway.config.storage import StorageError, StorageURL, parse_storage_url


@pytest.mark.parametrize("url, text, uri", [
    ("memory://", "memory://", "async+memory://"),
    ("memcached://a:1,[::1]:2", "memcached://a:1,[::1]:2", "async+memcached://a:1,::1:2"),
    ("redis://r:6379", "redis://r:6379/0", "async+redis://r:6379/0"),
    ("rediss://gw@[::1]:6380/3", "rediss://gw@[::1]:6380/3", "async+rediss://gw@[::1]:6380/3"),
])
def test_text_and_limits_uri(url, text, uri):
    parsed = parse_storage_url(url)
    assert str(parsed) == text and parse_storage_url(text) == parsed
    assert parsed.limits_uri() == uri
    assert parsed.is_shared == (parsed.kind != "memory")


def test_the_redis_password_goes_only_into_the_limits_uri():
    url = parse_storage_url("redis://gw@r:6379/1")
    assert url.limits_uri("p@ss:w/rd") == "async+redis://gw:p%40ss%3Aw%2Frd@r:6379/1"
    assert parse_storage_url("redis://r:1").limits_uri("pw") == "async+redis://:pw@r:1/0"
    assert "pw" not in str(url) + repr(url)


@pytest.mark.parametrize("url", ["redis://:pw@r:6379", "redis://u:pw@r:6379/0",
                                 "rediss://:@r:6379"])
def test_a_password_in_the_url_is_refused(url):
    with pytest.raises(StorageError, match="without a password"):
        parse_storage_url(url)


def test_storage_url_is_a_value():
    assert StorageURL("redis", (("r", 1),)) == parse_storage_url("redis://r:1/0")
    assert len({parse_storage_url("memory://"), StorageURL("memory")}) == 1


@pytest.mark.parametrize("url, cls", [("memory://", MemoryStorage),
                                      ("memcached://127.0.0.1:11211,127.0.0.1:11212",
                                       MemcachedStorage)])
def test_limits_builds_its_storage_from_our_uri(url, cls):
    assert type(storage_from_string(parse_storage_url(url).limits_uri())) is cls
