"""Storage URLs: parsed once, printed back canonical and without secrets; in the settings, one
problem line naming the key for a bad URL."""
from __future__ import annotations

import pytest

from openai_gateway.config.settings import parse
from openai_gateway.config.storage import StorageError, StorageURL, parse_storage_url

from ..support.settings import ENV, MEMCACHED, problems


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


# --- in the settings: storage.url and the components' own URLs -------------------------

ANY_STORAGE = ('"memory://", "memcached://host:port[,host:port...]" or '
               '"redis://host:port[/db]" (rediss:// for TLS)')
REDIS = '"redis://host:port[/db]" (one server, numeric port and db, no query)'
NO_PASSWORD = ("a URL without a password: put the password in the environment variable named "
               "by storage.password_env")


@pytest.mark.parametrize("key", ["storage.url", "rate_limit.storage_url", "cache.storage_url"])
@pytest.mark.parametrize("url, expected", [
    ("memcached://", ANY_STORAGE), ("memory://x", ANY_STORAGE), ("mongodb://x:1", ANY_STORAGE),
    ("memcached://host", MEMCACHED), ("memcached://host:abc", MEMCACHED),
    ("memcached://:11211", MEMCACHED), ("memcached://a:11211,", MEMCACHED),
    ("memcached://a:70000", MEMCACHED), ("memcached://a:0", MEMCACHED),
    ("redis://x", REDIS), ("redis://x:abc", REDIS), ("redis://x:6379/zero", REDIS),
    ("redis://a:1,b:2", REDIS), ("redis://x:6379/0?ssl=true", REDIS), ("rediss://:6379", REDIS),
    ("redis://:hunter2@x:6379", NO_PASSWORD), ("rediss://user:hunter2@x:6379/1", NO_PASSWORD),
])
def test_bad_storage_urls(key, url, expected):
    section, name = key.split(".")
    assert problems({section: {name: url}}) == [f"{key}: got {url!r}, expected {expected}"]


@pytest.mark.parametrize("url, parsed", [
    ("memory://", StorageURL("memory")),
    ("memcached://127.0.0.1:11211", StorageURL("memcached", (("127.0.0.1", 11211),))),
    ("memcached://a:1,b:2", StorageURL("memcached", (("a", 1), ("b", 2)))),
    ("memcached://[::1]:11211", StorageURL("memcached", (("::1", 11211),))),
    ("redis://127.0.0.1:6379", StorageURL("redis", (("127.0.0.1", 6379),))),
    ("redis://cache.internal:6380/2", StorageURL("redis", (("cache.internal", 6380),), db=2)),
    ("rediss://gw@[::1]:6379/0", StorageURL("redis", (("::1", 6379),), tls=True,
                                             username="gw")),
])
def test_storage_urls_are_parsed_once(url, parsed):
    s = parse({"storage": {"url": url}}, environ=ENV)
    assert s.storage.url == parsed
    # Both components use it as it is, and --check prints it back as a URL.
    assert s.rate_limit_storage is s.cache_storage is s.storage.url
    assert parse({"storage": {"url": str(parsed)}}, environ=ENV).storage.url == parsed


def test_component_storage_urls_override_the_shared_one():
    s = parse({"storage": {"url": "memcached://m:11211"},
               "rate_limit": {"storage_url": "redis://r:6379/1"},
               "cache": {"storage_url": ""}}, environ=ENV)
    assert s.rate_limit.storage_url == StorageURL("redis", (("r", 6379),), db=1)
    assert s.cache.storage_url is None
    assert s.rate_limit_storage == s.rate_limit.storage_url
    assert s.cache_storage == s.storage.url == StorageURL("memcached", (("m", 11211),))
    assert s.redacted()["rate_limit"]["storage_url"] == "redis://r:6379/1"


@pytest.mark.parametrize("doc", [
    {"storage": {"url": "memcached://127.0.0.1:11211"},
     "rate_limit": {"strategy": "moving-window"}},
    {"rate_limit": {"strategy": "moving-window", "storage_url": "memcached://127.0.0.1:11211"}},
])
def test_moving_window_on_memcached_names_the_reason(doc):
    [got] = problems(doc)
    assert got.startswith('rate_limit.strategy: got "moving-window", expected "auto" or '
                          '"sliding-window-counter" with memcached storage')
    # The reason names the storages this gateway offers, and only those.
    assert got.endswith("(memcached keeps no moving window; memory:// and redis:// do)")
    assert "mongodb" not in got


def test_moving_window_on_memory_is_fine():
    s = parse({"rate_limit": {"strategy": "moving-window"}}, environ=ENV)
    assert s.rate_limit.strategy == "moving-window"
