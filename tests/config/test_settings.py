"""settings.parse/load and the command line: every bad value is one line naming its key."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tomllib
import types

import pytest
from limits import (
    RateLimitItemPerDay,
    RateLimitItemPerHour,
    RateLimitItemPerMinute,
    RateLimitItemPerMonth,
    RateLimitItemPerSecond,
)

from openai_gateway.config.limits import LIMIT_EXPECTED, SPEND_EXPECTED, SpendLimit
from openai_gateway.config.loader import Problems, build
from openai_gateway.config.secrets import read_secret
from openai_gateway.config.settings import (
    CacheSettings,
    ClientSettings,
    ConfigError,
    FallbackSettings,
    IssuerSettings,
    PriceSettings,
    RateLimitSettings,
    Settings,
    TierSettings,
    as_limits,
    load,
    parse,
)
from openai_gateway.config.storage import StorageURL

from ..conftest import KEY, ROOT, toml_dumps

ENV = {"OPENAI_API_KEY": KEY}
GOOD_HASH = "ab" * 32
ORIGIN_HINT = ('expected "*" or an origin like "https://app.example.com" '
               "(scheme and host, no path)")
MISSING_KEY = ("upstream.api_key_env: environment variable OPENAI_API_KEY is not set (nor a "
               "systemd credential of that name); expected the upstream key")
#: A token signing secret long enough for HS256 (RFC 7518 section 3.2: 32 bytes).
SECRET = "t" * 32


def problems(doc: dict, environ=ENV) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(doc, environ=environ)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def get(obj, dotted: str):
    for part in dotted.split("."):
        obj = obj[part] if isinstance(obj, types.MappingProxyType) else getattr(obj, part)
    return obj


# --- the shipped file ---------------------------------------------------------------------


def test_shipped_config_loads_and_documents_the_defaults():
    settings = load(ROOT / "config.toml", environ=ENV)
    assert settings.api_key == KEY
    # config.toml promises "every key shows its default".
    assert settings == parse({}, environ=ENV)
    assert settings == Settings(api_key=KEY, fallback_keys=())


def test_empty_document_is_all_defaults():
    s = parse({}, environ=ENV)
    assert (s.server.host, s.server.port, s.server.trusted_proxies) == (
        "127.0.0.1", 8080, ("127.0.0.1", "::1"))
    assert s.storage.url == StorageURL("memory")
    assert s.rate_limit.requests == (RateLimitItemPerMinute(60), RateLimitItemPerDay(1000))
    assert s.validation.allowed_models == ("gpt-4o-mini",) and s.clients == ()


@pytest.mark.parametrize("path_text, expected", [
    (None, "{path}: file not found"),
    ("[server\nport = 1\n", "{path}: not valid TOML"),
])
def test_load_unreadable_file(tmp_path, path_text, expected):
    path = tmp_path / "c.toml"
    if path_text is not None:
        path.write_text(path_text)
    with pytest.raises(ConfigError) as info:
        load(path, environ=ENV)
    [line] = info.value.problems
    assert line.startswith(expected.format(path=path))


def test_values_are_converted_to_their_declared_types():
    s = parse({"upstream": {"connect_timeout": 5, "routes": ["/v1/embeddings"]},
               "server": {"workers": "auto", "allow_unshared_workers": True},
               "storage": {"url": "memcached://127.0.0.1:11211"},
               "clients": [{"name": "a", "key_sha256": GOOD_HASH, "models": ["gpt-4o"]}]},
              environ=ENV)
    assert s.upstream.connect_timeout == 5.0 and type(s.upstream.connect_timeout) is float
    assert s.upstream.routes == ("/v1/embeddings",)
    assert s.server.workers == "auto"
    assert s.clients == (ClientSettings(name="a", key_sha256=GOOD_HASH, models=("gpt-4o",)),)
    assert s.clients[0].requests is None  # absent = the defaults apply, not "no limit"


# --- one line per problem, naming the key -------------------------------------------------


@pytest.mark.parametrize("doc, line", [
    ({"bogus": 1}, "bogus: unknown key (known: "),
    ({"server": {"prot": 1}}, "server.prot: unknown key (known: "),
    ({"upstream": {"api_key": "sk-in-the-file"}}, "upstream.api_key: unknown key (known: "),
    ({"api_key": "sk-in-the-file"}, "api_key: unknown key (known: "),
    ({"rate_limit": {"rules": [{"model": "gpt-4o", "modle": "x"}]}},
     "rate_limit.rules[0].modle: unknown key (known: "),
    ({"clients": [{"name": "a", "key_sha256": GOOD_HASH, "limit": 1}]},
     "clients[0].limit: unknown key (known: "),
])
def test_unknown_keys(doc, line):
    [got] = problems(doc)
    assert got.startswith(line)
    assert "sk-in-the-file" not in got  # a key pasted into the file is not echoed


def test_unknown_key_lists_the_known_ones():
    [got] = problems({"cache": {"tll": 60}})
    assert got == ("cache.tll: unknown key (known: enabled, max_bytes, max_item_bytes, routes, "
                   "sampled, storage_url, ttl)")


@pytest.mark.parametrize("doc, line", [
    ({"server": {"port": "80"}}, "server.port: got '80', expected an integer"),
    ({"server": {"port": True}}, "server.port: got True, expected an integer"),
    ({"server": {"port": 80.0}}, "server.port: got 80.0, expected an integer"),
    ({"cache": {"enabled": 1}}, "cache.enabled: got 1, expected true or false"),
    ({"cache": {"ttl": "1h"}}, "cache.ttl: got '1h', expected an integer"),
    ({"upstream": {"connect_timeout": "5"}},
     "upstream.connect_timeout: got '5', expected a number"),
    ({"upstream": {"idle_timeout": False}}, "upstream.idle_timeout: got False, expected a number"),
    ({"server": {"trusted_proxies": [1]}}, "server.trusted_proxies[0]: got 1, expected a string"),
    ({"server": {"workers": 2.5}}, 'server.workers: got 2.5, expected an integer or "auto"'),
    ({"server": {"workers": "all"}}, 'server.workers: got \'all\', expected an integer or "auto"'),
    ({"server": 5}, "server: got 5, expected a table"),
    ({"rate_limit": {"rules": [5]}}, "rate_limit.rules[0]: got 5, expected a table"),
])
def test_wrong_types(doc, line):
    assert problems(doc) == [line]


@pytest.mark.parametrize("doc, key, value", [
    ({"rate_limit": {"requests": "60/minute"}}, "rate_limit.requests", "'60/minute'"),
    ({"validation": {"allowed_models": "gpt-4o"}}, "validation.allowed_models", "'gpt-4o'"),
    ({"cors": {"allow_origins": "https://app.example.com"}}, "cors.allow_origins",
     "'https://app.example.com'"),
    ({"clients": {"name": "a"}}, "clients", "{'name': 'a'}"),
])
def test_a_string_or_table_where_a_list_belongs(doc, key, value):
    [got] = problems(doc)
    assert got.startswith(f"{key}: got {value}, expected a list of ")


LIMIT_HINT = ('expected a limit like "60/minute", "10 per hour" or "100/5 minutes" (an amount '
              "of at least 1 per second, minute, hour, day, month or year)")
assert LIMIT_HINT == f"expected {LIMIT_EXPECTED}"


@pytest.mark.parametrize("text", [
    "abc", "", "60/fortnight", "-1/minute", "60 minute", "1/minute trailing",
    # Accepted by the limits library's own parser, but not what anyone means:
    "0/minute",             # a limit nobody passes
    "60/minutes",           # limits reads it as 60 a minute: a forgotten multiple?
    "100/5 minute", "100/1 minutes",  # a plural exactly with a multiple of 2 or more
    "60/minute;1000/day",   # one limit per list entry
    "60/Minute", " 60/minute", "060/minute", "1.5/minute", "60 / minute", "60per minute",
])
@pytest.mark.parametrize("place, key", [
    (lambda limits: {"rate_limit": {"requests": limits}}, "rate_limit.requests[0]"),
    (lambda limits: {"rate_limit": {"tokens": limits}}, "rate_limit.tokens[0]"),
    (lambda limits: {"rate_limit": {"rules": [{"route": "/v1/embeddings", "requests": limits}]}},
     "rate_limit.rules[0].requests[0]"),
    (lambda limits: {"clients": [{"name": "a", "key_sha256": GOOD_HASH, "tokens": limits}]},
     "clients[0].tokens[0]"),
])
def test_bad_limit_strings(text, place, key):
    assert problems(place([text])) == [f"{key}: got {text!r}, {LIMIT_HINT}"]


@pytest.mark.parametrize("text, item", [
    ("60/minute", RateLimitItemPerMinute(60)),
    ("60 per minute", RateLimitItemPerMinute(60)),
    ("10 per hour", RateLimitItemPerHour(10)),
    ("100/5 minutes", RateLimitItemPerMinute(100, 5)),
    ("10/2 seconds", RateLimitItemPerSecond(10, 2)),
    ("1000/day", RateLimitItemPerDay(1000)),
    ("5 per 3 months", RateLimitItemPerMonth(5, 3)),
])
def test_limits_are_parsed_once_into_items(text, item):
    s = parse({"rate_limit": {"requests": [text], "tokens": [text]}}, environ=ENV)
    assert s.rate_limit.requests == s.rate_limit.tokens == (item,)
    assert s.rate_limit.requests[0].multiples == item.multiples


def test_limits_are_kept_shortest_window_first():
    doc = {"rate_limit": {"requests": ["1000/day", "10/2 seconds", "60/minute"],
                          "rules": [{"model": "gpt-4o", "tokens": ["9/hour", "1/second"]}]},
           "clients": [{"name": "a", "key_sha256": GOOD_HASH, "requests": ["2/day", "1/hour"]}]}
    s = parse(doc, environ=ENV)
    assert s.rate_limit.requests == (RateLimitItemPerSecond(10, 2), RateLimitItemPerMinute(60),
                                     RateLimitItemPerDay(1000))
    assert s.rate_limit.rules[0].tokens == (RateLimitItemPerSecond(1), RateLimitItemPerHour(9))
    assert s.clients[0].requests == (RateLimitItemPerHour(1), RateLimitItemPerDay(2))


def test_text_limits_given_in_code_are_parsed_the_same_way():
    # Tests and the demo's defaults build settings directly, with text.
    direct = RateLimitSettings(requests=("1000/day", "60/minute"))
    assert direct.requests == parse({}, environ=ENV).rate_limit.requests
    assert ClientSettings(tokens=("5/second",)).tokens == (RateLimitItemPerSecond(5),)
    assert as_limits(["1/hour"]) == (RateLimitItemPerHour(1),)
    with pytest.raises(ValueError):
        RateLimitSettings(requests=("60/minutes",))


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


ANY_STORAGE = ('"memory://", "memcached://host:port[,host:port...]" or '
               '"redis://host:port[/db]" (rediss:// for TLS)')
MEMCACHED = '"memcached://host:port[,host:port...]" with numeric ports'
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


@pytest.mark.parametrize("doc, line", [
    ({"server": {"port": 0}}, "server.port: got 0, expected 1-65535"),
    ({"server": {"port": 65536}}, "server.port: got 65536, expected 1-65535"),
    ({"server": {"max_body_bytes": 0}}, "server.max_body_bytes: got 0, expected > 0"),
    ({"upstream": {"base_url": "api.openai.com/v1"}},
     "upstream.base_url: got 'api.openai.com/v1', expected an http(s) URL"),
    ({"upstream": {"idle_timeout": 0}}, "upstream.idle_timeout: got 0.0, expected > 0"),
    ({"upstream": {"retries": -1}}, "upstream.retries: got -1, expected >= 0"),
    ({"cache": {"ttl": 0}}, "cache.ttl: got 0, expected a positive integer (seconds)"),
    ({"validation": {"max_n": 0}}, "validation.max_n: got 0, expected > 0"),
    ({"rate_limit": {"rules": [{"requests": ["1/minute"]}]}},
     "rate_limit.rules[0]: expected a route, a model or both"),
    ({"clients": [{"name": "", "key_sha256": GOOD_HASH}]},
     "clients[0].name: expected a non-empty name"),
])
def test_bad_values(doc, line):
    assert problems(doc) == [line]


@pytest.mark.parametrize("digest", ["abc", "g" * 64, GOOD_HASH + "0"])
def test_bad_client_key_hash(digest):
    [got] = problems({"clients": [{"name": "a", "key_sha256": digest}]})
    assert got.startswith(f"clients[0].key_sha256: got {digest!r}, expected 64 hex digits")


def test_duplicate_client_key_hash():
    assert problems({"clients": [{"name": "a", "key_sha256": GOOD_HASH},
                                 {"name": "b", "key_sha256": GOOD_HASH.upper()}]}) == [
        "clients[1].key_sha256: duplicate of an earlier client"]


def test_several_value_problems_give_several_lines():
    got = problems({"server": {"port": 0, "trusted_proxies": ["localhost"]},
                    "cors": {"allow_origins": ["http://x/"]},
                    "storage": {"url": "redis://x"},
                    "rate_limit": {"requests": ["abc", "60/minute"]}}, environ={})
    assert [line.split(":")[0] for line in got] == [
        "server.port", "server.trusted_proxies[0]", "cors.allow_origins[0]", "storage.url",
        "rate_limit.requests[0]", "upstream.api_key_env"]


def test_several_type_problems_give_several_lines():
    got = problems({"server": {"port": "80", "prot": 1}, "cache": {"enabled": "yes"},
                    "validation": {"allowed_models": "gpt-4o"}})
    assert [line.split(":")[0] for line in got] == [
        "server.port", "server.prot", "cache.enabled", "validation.allowed_models"]


# --- the key --------------------------------------------------------------------------------


@pytest.mark.parametrize("environ", [{}, {"OPENAI_API_KEY": ""}, {"OPENAI_API_KEY": "  \n"},
                                     {"OTHER": KEY}])
def test_missing_key_variable(environ):
    assert problems({}, environ=environ) == [MISSING_KEY]


def test_key_variable_name_is_configurable():
    s = parse({"upstream": {"api_key_env": "GROQ_KEY"}}, environ={"GROQ_KEY": f" {KEY}\n"})
    assert s.api_key == KEY
    [got] = problems({"upstream": {"api_key_env": "GROQ_KEY"}})
    assert got.startswith("upstream.api_key_env: environment variable GROQ_KEY is not set")


@pytest.mark.parametrize("files, env, expected", [
    ({"OPENAI_API_KEY": "from-credential\n"}, {"OPENAI_API_KEY": "from-env"}, "from-credential"),
    ({"OTHER": "unrelated"}, {"OPENAI_API_KEY": "from-env"}, "from-env"),
    ({}, {}, None),
    ({"OPENAI_API_KEY": " \n"}, {}, None),
])
def test_read_secret_prefers_the_systemd_credential(tmp_path, files, env, expected):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path), **env}
    assert read_secret("OPENAI_API_KEY", environ) == expected


def test_credential_directory_is_used_by_parse(tmp_path):
    (tmp_path / "OPENAI_API_KEY").write_text(KEY + "\n")
    s = parse({}, environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert s.api_key == KEY


def test_fallback_keys():
    doc = {"upstream": {"fallbacks": [{"base_url": "https://b.example/v1"},
                                      {"base_url": "https://c.example/v1",
                                       "api_key_env": "C_KEY"}]}}
    s = parse(doc, environ={**ENV, "C_KEY": "sk-c-SECRET"})
    assert s.upstream.fallbacks == (FallbackSettings("https://b.example/v1", ""),
                                    FallbackSettings("https://c.example/v1", "C_KEY"))
    assert s.fallback_keys == (KEY, "sk-c-SECRET")
    assert s.secrets == (KEY, KEY, "sk-c-SECRET")
    assert problems(doc) == [
        "upstream.fallbacks[1].api_key_env: environment variable C_KEY is not set (nor a systemd "
        "credential of that name); expected a key"]


def test_redacted_and_repr_never_contain_a_key():
    doc = {"upstream": {"fallbacks": [{"base_url": "https://c.example/v1",
                                       "api_key_env": "C_KEY"}]}}
    s = parse(doc, environ={**ENV, "C_KEY": "sk-c-SECRET"})
    red = s.redacted()
    assert "api_key" not in red and "fallback_keys" not in red
    assert red["upstream"]["api_key_env"] == "OPENAI_API_KEY"
    for text in (repr(s), str(s), json.dumps(red)):
        assert KEY not in text and "sk-c-SECRET" not in text


# --- every problem of the file in one run ---------------------------------------------------


def test_type_problems_do_not_hide_value_problems():
    got = problems({"server": {"port": "80", "ipv6_prefix": 200},
                    "cache": {"enabled": 1, "ttl": -5},
                    "validation": {"max_tokens": 0, "allowed_models": "gpt-4o"},
                    "rate_limit": {"requests": ["0/minute"], "strategy": "fast"}}, environ={})
    assert got == [
        "server.port: got '80', expected an integer",
        "server.ipv6_prefix: got 200, expected 1-128",
        "cache.enabled: got 1, expected true or false",
        "cache.ttl: got -5, expected a positive integer (seconds)",
        "validation.allowed_models: got 'gpt-4o', expected a list of strings",
        "validation.max_tokens: got 0, expected > 0",
        f"rate_limit.requests[0]: got '0/minute', {LIMIT_HINT}",
        'rate_limit.strategy: got \'fast\', expected "auto", "moving-window" or '
        '"sliding-window-counter"',
        MISSING_KEY,
    ]


@pytest.mark.parametrize("doc, line", [
    # The refused value keeps its default; nothing else is said about that key or its table.
    ({"server": {"workers": 2.5}}, 'server.workers: got 2.5, expected an integer or "auto"'),
    ({"rate_limit": {"rules": [{"route": 5}]}},
     "rate_limit.rules[0].route: got 5, expected a string"),
    ({"clients": [{"name": "a", "key_sha256": 5}]},
     "clients[0].key_sha256: got 5, expected a string"),
    ({"auth": {"issuers": [{"issuer": "https://x/", "jwks_url": 5, "algorithms": ["RS256"]}]}},
     "auth.issuers[0].jwks_url: got 5, expected a string"),
    ({"auth": {"issuers": [{"issuer": "https://x/", "jwks_url": "https://x/j",
                            "algorithms": ["RS256", "none"]}]}},
     'auth.issuers[0].algorithms[1]: got \'none\', expected "HS256", "HS384", "HS512", "RS256", '
     '"RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512" or "EdDSA"'),
])
def test_a_refused_value_is_reported_once(doc, line):
    assert problems(doc) == [line]


def test_each_section_checks_itself_wherever_it_is_built():
    p = Problems()
    cache = build(CacheSettings, {"ttl": 0, "max_bytes": "big"}, "cache", p)
    assert cache == CacheSettings(ttl=0)  # the refused max_bytes keeps its default
    assert p.lines == ["cache.max_bytes: got 'big', expected an integer",
                       "cache.ttl: got 0, expected a positive integer (seconds)"]


# --- choices ---------------------------------------------------------------------------------


@pytest.mark.parametrize("doc, line", [
    ({"storage": {"on_error": "maybe"}},
     'storage.on_error: got \'maybe\', expected "open" or "closed"'),
    ({"clients": [{"name": "a", "key_sha256": GOOD_HASH, "cache_scope": "all"}]},
     'clients[0].cache_scope: got \'all\', expected "client" or "shared"'),
    ({"log": {"format": "xml"}}, 'log.format: got \'xml\', expected "auto", "json" or "text"'),
    ({"log": {"level": "INFO"}},
     'log.level: got \'INFO\', expected "debug", "info", "warning" or "error"'),
    ({"server": {"compressed_bodies": "gzip"}},
     'server.compressed_bodies: got \'gzip\', expected "refuse" or "inflate"'),
    ({"rate_limit": {"strategy": 1}},
     'rate_limit.strategy: got 1, expected "auto", "moving-window" or "sliding-window-counter"'),
    ({"upstream": {"routes": ["/v1/files"]}},
     'upstream.routes[0]: got \'/v1/files\', expected "/v1/chat/completions", "/v1/completions", '
     '"/v1/embeddings", "/v1/responses", "/v1/moderations" or "/v1/models"'),
])
def test_choices_list_the_allowed_values(doc, line):
    assert problems(doc) == [line]


# --- request policy keys ---------------------------------------------------------------------


@pytest.mark.parametrize("key, default, value, parsed", [
    ("validation.max_tokens", 4096, 100, 100),
    ("validation.max_n", 4, 1, 1),
    ("validation.allowed_tools", ("function",), ["function", "web_search"],
     ("function", "web_search")),
    ("validation.allowed_service_tiers", ("auto", "default"), ["flex"], ("flex",)),
    ("validation.stored_state", False, True, True),
    ("server.header_timeout", 10.0, 2.5, 2.5),
    ("server.write_timeout", 30.0, 5, 5.0),
    ("server.ipv6_prefix", 64, 128, 128),
    ("server.compressed_bodies", "refuse", "inflate", "inflate"),
    ("log.hash_client", False, True, True),
    ("log.hash_secret_env", "", "HASH", "HASH"),
    ("auth.anonymous", True, False, False),
    ("auth.require_client_key", False, True, True),
    ("auth.issuers", (), [], ()),
    ("auth.tokens.secret_env", "", "TOK", "TOK"),
    ("auth.tokens.max_ttl", 3600, 60, 60),
    ("auth.sessions.captcha_verify_url", "", "http://127.0.0.1:9/siteverify",
     "http://127.0.0.1:9/siteverify"),
    ("auth.sessions.tier", "free", "trial", "trial"),
    ("auth.sessions.ttl", 900, 60, 60),
    ("auth.sessions.requests", (RateLimitItemPerHour(10),), ["1/minute"],
     (RateLimitItemPerMinute(1),)),
    ("rate_limit.spend", (), ["1/day"], (SpendLimit(RateLimitItemPerDay(1_000_000), "1/day"),)),
    ("budget.daily_usd", 0.0, 5, 5.0),
    ("budget.monthly_usd", 0.0, 100.5, 100.5),
    ("budget.warn_at", 0.8, 1, 1.0),
    ("storage.password_env", "", "REDIS_PW", "REDIS_PW"),
])
def test_new_keys_default_and_take_a_good_value(key, default, value, parsed):
    assert get(parse({}, environ=ENV), key) == default
    *sections, name = key.split(".")
    doc: dict = {}
    table = doc
    for section in sections:
        table = table.setdefault(section, {})
    table[name] = value
    if name == "captcha_verify_url":  # sessions need their secret and the tokens' secret
        table["captcha_secret_env"] = "CAPTCHA"
        doc["auth"]["tokens"] = {"secret_env": "TOK"}
    if name in ("anonymous", "require_client_key"):  # and a way to identify callers
        doc["clients"] = [{"name": "app", "key_sha256": GOOD_HASH}]
    assert get(parse(doc, environ={**ENV, **SECRET_ENV}), key) == parsed


@pytest.mark.parametrize("doc, line", [
    ({"validation": {"max_n": 0}}, "validation.max_n: got 0, expected > 0"),
    ({"validation": {"allowed_tools": [""]}},
     "validation.allowed_tools[0]: got '', expected a non-empty string"),
    ({"validation": {"allowed_service_tiers": "auto"}},
     "validation.allowed_service_tiers: got 'auto', expected a list of strings"),
    ({"validation": {"stored_state": "no"}},
     "validation.stored_state: got 'no', expected true or false"),
    ({"server": {"write_timeout": 0}}, "server.write_timeout: got 0.0, expected > 0"),
    ({"server": {"header_timeout": -1}}, "server.header_timeout: got -1.0, expected > 0"),
    ({"server": {"ipv6_prefix": 0}}, "server.ipv6_prefix: got 0, expected 1-128"),
    ({"server": {"ipv6_prefix": 129}}, "server.ipv6_prefix: got 129, expected 1-128"),
    ({"auth": {"anonymous": "no"}}, "auth.anonymous: got 'no', expected true or false"),
    ({"auth": {"tokens": {"max_ttl": 0}}}, "auth.tokens.max_ttl: got 0, expected > 0"),
    ({"auth": {"tokens": {"previous_secret_env": "OLD"}}},
     "auth.tokens.previous_secret_env: set without secret_env, expected both or secret_env "
     "alone"),
    ({"auth": {"sessions": {"ttl": 0}}}, "auth.sessions.ttl: got 0, expected > 0"),
    ({"auth": {"sessions": {"requests": ["10/hours"]}}},
     f"auth.sessions.requests[0]: got '10/hours', {LIMIT_HINT}"),
    ({"auth": {"sessions": {"captcha_verify_url": "http://captcha.example/siteverify",
                            "captcha_secret_env": "CAPTCHA"}, "tokens": {"secret_env": "OLD"}}},
     "auth.sessions.captcha_verify_url: got 'http://captcha.example/siteverify', expected an "
     "https:// URL (http:// only to 127.0.0.0/8, ::1 or localhost)"),
    ({"auth": {"sessions": {"captcha_verify_url": "https://captcha.example/siteverify"},
               "tokens": {"secret_env": "OLD"}}},
     "auth.sessions.captcha_secret_env: got '', expected the variable holding the captcha "
     "secret"),
    ({"budget": {"daily_usd": -1}}, "budget.daily_usd: got -1.0, expected >= 0 (0 = no ceiling)"),
    ({"budget": {"monthly_usd": "10"}}, "budget.monthly_usd: got '10', expected a number"),
    ({"budget": {"warn_at": 0}}, "budget.warn_at: got 0.0, expected 0 < x <= 1"),
    ({"budget": {"warn_at": 1.5}}, "budget.warn_at: got 1.5, expected 0 < x <= 1"),
    ({"log": {"hash_secret_env": 1}}, "log.hash_secret_env: got 1, expected a string"),
])
def test_new_keys_bad_values(doc, line):
    assert problems(doc, environ={**ENV, "CAPTCHA": "c", "OLD": SECRET}) == [line]


def test_unknown_tool_types_and_service_tiers_are_warnings():
    s = parse({"validation": {"allowed_tools": ["function", "web_serch"],
                              "allowed_service_tiers": ["auto", "priority", "turbo"]}},
              environ=ENV)
    assert s.validation.allowed_tools == ("function", "web_serch")
    assert [w.split(":")[0] for w in s.warnings] == ["validation.allowed_tools[1]",
                                                     "validation.allowed_service_tiers[2]"]


# --- identity: issuers, tokens, sessions -------------------------------------------------------


def issuer(**fields) -> dict:
    return {"auth": {"issuers": [{"issuer": "https://login.example.com/", **fields}]}}


@pytest.mark.parametrize("fields", [
    {"jwks_url": "https://login.example.com/.well-known/jwks.json", "algorithms": ["RS256"]},
    {"jwks_url": "http://127.0.0.1:8000/jwks.json", "algorithms": ["ES256", "EdDSA"]},
    {"jwks_url": "http://127.8.9.10/jwks.json", "algorithms": ["PS256"]},
    {"jwks_url": "http://localhost:8000/jwks.json", "algorithms": ["RS512"]},
    {"jwks_url": "http://[::1]:8000/jwks.json", "algorithms": ["RS256"]},
    {"secret_env": "SUPABASE_JWT_SECRET", "algorithms": ["HS256", "HS512"]},
])
def test_good_issuers(fields):
    s = parse(issuer(**fields, audience="gw", tier_claim="plan"),
              environ={**ENV, "SUPABASE_JWT_SECRET": SECRET})
    [got] = s.auth.issuers
    assert got == IssuerSettings(issuer="https://login.example.com/", audience="gw",
                                 tier_claim="plan", leeway=30, jwks_cooldown=30.0,
                                 **{**fields, "algorithms": tuple(fields["algorithms"])})
    assert s.issuer_secrets == ((SECRET,) if "secret_env" in fields else ("",))


def test_issuer_with_a_jwks_file(tmp_path):
    path = tmp_path / "jwks.json"
    path.write_text('{"keys": []}')
    s = parse(issuer(jwks_file=str(path), algorithms=["RS256"]), environ=ENV)
    assert s.auth.issuers[0].jwks_file == str(path)
    assert problems(issuer(jwks_file=str(tmp_path / "nope.json"), algorithms=["RS256"])) == [
        f"auth.issuers[0].jwks_file: got {str(tmp_path / 'nope.json')!r}, expected a readable "
        "JWKS file"]


JWKS = "https://login.example.com/jwks.json"
AT = "auth.issuers[0]"


@pytest.mark.parametrize("fields, line", [
    ({"algorithms": ["RS256"]}, f"{AT}: got no key source, expected exactly one of jwks_url, "
                                "jwks_file or secret_env"),
    ({"jwks_url": JWKS, "secret_env": "S", "algorithms": ["RS256"]},
     f"{AT}: got jwks_url, secret_env, expected exactly one of jwks_url, jwks_file or secret_env"),
    ({"jwks_url": "http://login.example.com/jwks.json", "algorithms": ["RS256"]},
     f"{AT}.jwks_url: got 'http://login.example.com/jwks.json', expected an https:// URL "
     "(http:// only to 127.0.0.0/8, ::1 or localhost)"),
    ({"jwks_url": "http://10.0.0.1/jwks.json", "algorithms": ["RS256"]},
     f"{AT}.jwks_url: got 'http://10.0.0.1/jwks.json', expected an https:// URL "
     "(http:// only to 127.0.0.0/8, ::1 or localhost)"),
    ({"jwks_url": JWKS}, f"{AT}.algorithms: got [], expected a non-empty list of algorithms"),
    ({"jwks_url": JWKS, "algorithms": ["HS256"]},
     f"{AT}.algorithms[0]: got 'HS256', expected an algorithm for a JWKS (RS*, PS*, ES*, "
     "EdDSA): HS* needs secret_env"),
    ({"secret_env": "S", "algorithms": ["HS256", "RS256"]},
     f"{AT}.algorithms[1]: got 'RS256', expected HS256, HS384 or HS512 with secret_env "
     "(public-key algorithms need jwks_url or jwks_file)"),
    ({"jwks_url": JWKS, "algorithms": "RS256"},
     f"{AT}.algorithms: got 'RS256', expected a list of strings"),
    ({"jwks_url": JWKS, "algorithms": ["RS256"], "leeway": -1},
     f"{AT}.leeway: got -1, expected >= 0 (seconds)"),
    ({"jwks_url": JWKS, "algorithms": ["RS256"], "jwks_cooldown": 0},
     f"{AT}.jwks_cooldown: got 0.0, expected > 0"),
    ({"jwks_url": JWKS, "algorithms": ["RS256"], "audiences": ["x"]},
     f"{AT}.audiences: unknown key (known: algorithms, audience, issuer, jwks_cooldown, "
     "jwks_file, jwks_url, leeway, secret_env, tier_claim)"),
])
def test_bad_issuers(fields, line):
    assert problems(issuer(**fields), environ={**ENV, "S": SECRET}) == [line]


def test_issuer_needs_its_iss_and_is_unique():
    doc = {"auth": {"issuers": [{"jwks_url": JWKS, "algorithms": ["RS256"]},
                                {"issuer": "a", "jwks_url": JWKS, "algorithms": ["RS256"]},
                                {"issuer": "a", "jwks_url": JWKS, "algorithms": ["RS256"]}]}}
    assert problems(doc) == [
        "auth.issuers[0].issuer: got '', expected the issuer (the tokens' iss)",
        "auth.issuers[2].issuer: duplicate of an earlier issuer"]


SESSIONS = {"captcha_verify_url": "https://challenges.example/siteverify",
            "captcha_secret_env": "CAPTCHA"}
TOKENS = {"secret_env": "TOK"}
PAIR_ENV = {**ENV, "CAPTCHA": "0x-captcha", "TOK": SECRET}


def test_captcha_hostnames():
    s = parse({"auth": {"tokens": TOKENS, "sessions": {
        **SESSIONS, "hostnames": ["app.example.com", "www.example.com"]}}}, environ=PAIR_ENV)
    assert s.auth.sessions.hostnames == ("app.example.com", "www.example.com")
    assert parse({}, environ=ENV).auth.sessions.hostnames == ()  # not checked
    assert problems({"auth": {"tokens": TOKENS, "sessions": {
        **SESSIONS, "hostnames": ["https://app.example.com/", ""]}}}, environ=PAIR_ENV) == [
        "auth.sessions.hostnames[0]: got 'https://app.example.com/', expected a host name "
        "such as app.example.com (no scheme, port or path)",
        "auth.sessions.hostnames[1]: got '', expected a host name such as app.example.com "
        "(no scheme, port or path)"]


@pytest.mark.parametrize("doc, line", [
    # Sessions are tokens the gateway signs: without the secret /gateway/session does not exist.
    ({"auth": {"sessions": SESSIONS}},
     'auth.sessions.captcha_verify_url: set while auth.tokens.secret_env is "", expected '
     "auth.tokens.secret_env too (sessions are tokens the gateway signs; without its secret "
     "there is no /gateway/session)"),
    # Nothing can identify a caller, yet an identity is required: every request is a 401.
    ({"auth": {"anonymous": False}},
     "auth.anonymous: false while no caller can be identified, expected [[clients]], "
     "[[auth.issuers]] or auth.tokens.secret_env (every request would be refused with 401)"),
    ({"auth": {"require_client_key": True}},
     "auth.require_client_key: true while no caller can be identified, expected [[clients]], "
     "[[auth.issuers]] or auth.tokens.secret_env (every request would be refused with 401)"),
    # Two keys of one name would share one identity, its limits and its minted users.
    ({"clients": [{"name": "app", "key_sha256": GOOD_HASH},
                  {"name": "app", "key_sha256": "cd" * 32}]},
     "clients[1].name: got 'app', expected a name no earlier client has (limits, budgets and "
     "minted users are keyed by it)"),
    ({"clients": [{"name": "app", "key_sha256": GOOD_HASH, "mint_tiers": ["pro plan"]}]},
     "clients[0].mint_tiers[0]: got 'pro plan', expected a name of letters, digits, _ . - "
     "(at most 64)"),
    ({"clients": [{"name": "app", "key_sha256": GOOD_HASH, "mint_tiers": "pro"}]},
     "clients[0].mint_tiers: got 'pro', expected a list of strings"),
])
def test_settings_that_cannot_work_together_name_both_keys(doc, line):
    assert problems(doc, environ=PAIR_ENV) == [line]


def test_settings_that_work_together_pass():
    parse({"auth": {"tokens": TOKENS, "sessions": SESSIONS}}, environ=PAIR_ENV)
    for auth in ({"anonymous": False}, {"require_client_key": True}):
        for source in ({"clients": [{"name": "app", "key_sha256": GOOD_HASH}]},
                       issuer(jwks_url=JWKS, algorithms=["RS256"]),
                       {"auth": {"tokens": TOKENS}}):
            doc = {**source, "auth": {**source.get("auth", {}), **auth}}
            assert parse(doc, environ=PAIR_ENV).warnings == ()


def test_mint_tiers_and_session_lifetimes_that_do_less_than_asked_are_warnings():
    s = parse({"tiers": {"free": {}, "pro": {}},
               "clients": [{"name": "a", "key_sha256": GOOD_HASH, "tier": "free",
                            "mint_tiers": ["free", "gold"]}],
               "auth": {"tokens": {**TOKENS, "max_ttl": 600},
                        "sessions": {**SESSIONS, "tier": "pro", "ttl": 900}}},
              environ=PAIR_ENV)
    assert s.clients[0].mint_tiers == ("free", "gold")
    assert s.warnings == (
        "auth.sessions.ttl: 900 is above auth.tokens.max_ttl (600); sessions live 600 seconds",
        "clients[0].mint_tiers[1]: tier 'gold' is not defined in [tiers] (known: free, pro); "
        "the key cannot mint it")


# --- secrets from the environment ----------------------------------------------------------------


SECRET_ENV = {"ISS": "i" * 32, "TOK": SECRET, "OLD": "o" * 40, "CAPTCHA": "0x-captcha",
              "REDIS_PW": "redis-pw", "HASH": "hash-key"}
#: key -> (a document naming a secret there, the variable, what the error says it holds)
SECRET_KEYS = {
    "auth.issuers[0].secret_env": (issuer(secret_env="ISS", algorithms=["HS256"]), "ISS",
                                   "the issuer's secret"),
    "auth.tokens.secret_env": ({"auth": {"tokens": {"secret_env": "TOK"}}}, "TOK",
                               "the token signing secret"),
    "auth.tokens.previous_secret_env": (
        {"auth": {"tokens": {"secret_env": "TOK", "previous_secret_env": "OLD"}}}, "OLD",
        "the previous token signing secret"),
    "auth.sessions.captcha_secret_env": (
        {"auth": {"sessions": {"captcha_verify_url": "https://challenges.example/siteverify",
                               "captcha_secret_env": "CAPTCHA"},
                  "tokens": {"secret_env": "TOK"}}}, "CAPTCHA", "the captcha secret"),
    "storage.password_env": (
        {"storage": {"url": "redis://127.0.0.1:6379", "password_env": "REDIS_PW"}}, "REDIS_PW",
        "the storage password"),
    "log.hash_secret_env": ({"log": {"hash_client": True, "hash_secret_env": "HASH"}}, "HASH",
                            "the log hash key"),
}


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_a_named_secret_that_is_unset_is_an_error(key):
    doc, name, what = SECRET_KEYS[key]
    assert SECRET_ENV[name] in parse(doc, environ={**ENV, **SECRET_ENV}).secrets
    environ = {k: v for k, v in {**ENV, **SECRET_ENV}.items() if k != name}
    assert problems(doc, environ=environ) == [
        f"{key}: environment variable {name} is not set (nor a systemd credential of that "
        f"name); expected {what}"]


def test_secrets_are_read_at_load_and_never_printed(tmp_path):
    doc: dict = {}
    for part, _, _ in SECRET_KEYS.values():
        doc = merge_docs(doc, part)
    (tmp_path / "TOK").write_text(SECRET + "\n")  # systemd credentials work for every secret
    environ = {**ENV, **SECRET_ENV, "TOK": "ignored", "CREDENTIALS_DIRECTORY": str(tmp_path)}
    s = parse(doc, environ=environ)
    assert (s.issuer_secrets, s.token_secret, s.token_previous_secret, s.captcha_secret,
            s.storage_password, s.log_hash_secret) == (
        ("i" * 32,), SECRET, "o" * 40, "0x-captcha", "redis-pw", "hash-key")
    assert set(s.secrets) == {KEY, "i" * 32, SECRET, "o" * 40, "0x-captcha", "redis-pw",
                              "hash-key"}
    red = json.dumps(s.redacted())
    for secret in s.secrets:
        assert secret not in repr(s) and secret not in str(s) and secret not in red
    assert s.redacted()["storage"]["password_env"] == "REDIS_PW"
    for field in ("api_key", "issuer_secrets", "token_secret", "captcha_secret", "warnings"):
        assert field not in s.redacted()
        assert problems({field: "x"})[0].startswith(f"{field}: unknown key (known: ")


@pytest.mark.parametrize("key, doc, name", [
    ("auth.tokens.secret_env", {"auth": {"tokens": {"secret_env": "TOK"}}}, "TOK"),
    ("auth.issuers[0].secret_env", issuer(secret_env="TOK", algorithms=["HS256"]), "TOK"),
])
def test_hmac_secrets_must_be_long_enough(key, doc, name):
    assert problems(doc, environ={**ENV, name: "short"}) == [
        f"{key}: the secret in {name} has 5 bytes, expected at least 32 (RFC 7518 section 3.2)"]


def merge_docs(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge_docs(out[k], v) if isinstance(v, dict) and k in out else v
    return out


# --- tiers, clients, prices, budgets ----------------------------------------------------


def test_tiers():
    s = parse({"tiers": {"free": {"requests": ["1000/day", "20/minute"], "tokens": ["20000/day"],
                                  "spend": ["0.50/day"], "models": ["gpt-4o-mini"]},
                         "pro": {"requests": ["200/minute"]}}}, environ=ENV)
    assert isinstance(s.tiers, types.MappingProxyType) and list(s.tiers) == ["free", "pro"]
    assert s.tiers["free"] == TierSettings(
        requests=(RateLimitItemPerMinute(20), RateLimitItemPerDay(1000)),
        tokens=(RateLimitItemPerDay(20000),),
        spend=(SpendLimit(RateLimitItemPerDay(500_000), "0.50/day"),), models=("gpt-4o-mini",))
    # Each key is optional: None means "not set" (the general value applies), () means none.
    assert s.tiers["pro"].tokens is s.tiers["pro"].spend is s.tiers["pro"].models is None
    assert parse({}, environ=ENV).tiers == {}


@pytest.mark.parametrize("doc, line", [
    ({"tiers": {"free": {"requests": ["20/minutes"]}}},
     f"tiers.free.requests[0]: got '20/minutes', {LIMIT_HINT}"),
    ({"tiers": {"free": {"spend": ["0/day"]}}},
     f"tiers.free.spend[0]: got '0/day', expected {SPEND_EXPECTED}"),
    ({"tiers": {"free": {"model": ["x"]}}},
     "tiers.free.model: unknown key (known: models, requests, spend, tokens)"),
    ({"tiers": {"free": 5}}, "tiers.free: got 5, expected a table"),
    ({"tiers": {"my tier": {}}},
     "tiers.\"my tier\": got 'my tier', expected a name of letters, digits, _ . - (at most 64)"),
    ({"tiers": ["free"]}, "tiers: got ['free'], expected a table"),
])
def test_bad_tiers(doc, line):
    assert problems(doc) == [line]


def test_clients_gain_a_tier_and_a_spend_budget():
    s = parse({"tiers": {"pro": {}},
               "clients": [{"name": "a", "key_sha256": GOOD_HASH, "tier": "pro",
                            "spend": ["10/month", "1/day"]},
                           {"name": "b", "key_sha256": "cd" * 32}]}, environ=ENV)
    a, b = s.clients
    assert a.tier == "pro" and a.spend == (
        SpendLimit(RateLimitItemPerMonth(10_000_000), "10/month"),
        SpendLimit(RateLimitItemPerDay(1_000_000), "1/day"))
    assert b.tier is None and b.spend is None
    assert s.warnings == ()


def test_unknown_tier_references_are_warnings_not_errors():
    s = parse({"tiers": {"pro": {}},
               "clients": [{"name": "a", "key_sha256": GOOD_HASH, "tier": "gold"}],
               "auth": {"sessions": {"captcha_verify_url": "https://c.example/siteverify",
                                     "captcha_secret_env": "CAPTCHA"},
                        "tokens": {"secret_env": "TOK"}}},
              environ={**ENV, "CAPTCHA": "x", "TOK": SECRET})
    assert s.warnings == (
        "auth.sessions.tier: tier 'free' is not defined in [tiers] (known: pro); its users get "
        "the general limits",
        "clients[0].tier: tier 'gold' is not defined in [tiers] (known: pro); its users get the "
        "general limits")
    # Sessions off: their tier is not used, so not worth a warning.
    assert parse({}, environ=ENV).warnings == ()


@pytest.mark.parametrize("text, micro, item", [
    ("0.50/day", 500_000, RateLimitItemPerDay), ("10/month", 10_000_000, RateLimitItemPerMonth),
    ("0.000001 per hour", 1, RateLimitItemPerHour), ("2.5/7 days", 2_500_000, RateLimitItemPerDay),
])
def test_spend_limits_are_micro_dollars(text, micro, item):
    [got] = parse({"rate_limit": {"spend": [text]}}, environ=ENV).rate_limit.spend
    assert got.item == item(micro, got.item.multiples) and got.item.amount == micro
    assert got.text == text and got.usd == micro / 1_000_000


@pytest.mark.parametrize("text", ["0/day", "0.00/day", "0.0000001/day", "-1/day", "$1/day",
                                  "1/fortnight", "1/days", "1,50/day", "1e3/day", ".5/day"])
def test_bad_spend_limits(text):
    assert problems({"rate_limit": {"spend": [text]}}) == [
        f"rate_limit.spend[0]: got {text!r}, expected {SPEND_EXPECTED}"]


def test_prices_are_overrides_by_model():
    s = parse({"prices": {"gpt-4o-mini": {"input": 0.15, "cached_input": 0.075, "output": 0.6},
                          "gpt-4.1": {"input": 2, "output": 8}}}, environ=ENV)
    assert s.prices == {"gpt-4o-mini": PriceSettings(0.15, 0.075, 0.6, 0.15, 0.15, 0.6),
                        "gpt-4.1": PriceSettings(2.0, 2.0, 8.0, 2.0, 2.0, 8.0)}
    assert isinstance(s.prices, types.MappingProxyType)
    assert parse({}, environ=ENV).prices == {}


def test_prices_take_audio_and_image_rates():
    """The rows of the brief: audio and image tokens have their own rates; absent, the text
    rate; a model that only speaks needs no text output rate."""
    s = parse({"prices": {
        "gpt-realtime": {"input": 4.0, "cached_input": 0.40, "output": 16.0,
                         "audio_input": 32.0, "audio_output": 64.0},
        "gpt-4o-mini-tts": {"input": 0.60, "audio_output": 12.0},
        "gpt-4o-transcribe": {"input": 2.50, "audio_input": 6.00, "output": 10.0},
        "gpt-image-1": {"input": 5.0, "cached_input": 1.25, "image_input": 10.0,
                        "output": 40.0}}}, environ=ENV)
    assert s.prices["gpt-realtime"] == PriceSettings(4.0, 0.4, 16.0, 32.0, 4.0, 64.0)
    assert s.prices["gpt-4o-mini-tts"] == PriceSettings(0.6, 0.6, 12.0, 0.6, 0.6, 12.0)
    assert s.prices["gpt-4o-transcribe"] == PriceSettings(2.5, 2.5, 10.0, 6.0, 2.5, 10.0)
    assert s.prices["gpt-image-1"] == PriceSettings(5.0, 1.25, 40.0, 5.0, 10.0, 40.0)


def test_prices_take_unit_rates():
    """Models billed by the minute, the character or the image need no token rate."""
    s = parse({"prices": {
        "whisper-1": {"per_minute": 0.006},
        "tts-1": {"per_million_chars": 15},
        "dall-e-3": {"per_image": {"standard/1024x1024": 0.04, "hd/1792x1024": 0.12}},
        "gpt-image-9": {"input": 5, "output": 30, "image_tokens": {"high/1024x1024": 7000}}}},
        environ=ENV)
    assert s.prices["whisper-1"] == PriceSettings(0, 0, 0, 0, 0, 0, per_minute=0.006)
    assert s.prices["tts-1"].per_million_chars == 15.0 and s.prices["tts-1"].output == 0
    assert dict(s.prices["dall-e-3"].per_image) == {"standard/1024x1024": 0.04,
                                                     "hd/1792x1024": 0.12}
    assert dict(s.prices["gpt-image-9"].image_tokens) == {"high/1024x1024": 7000}


@pytest.mark.parametrize("prices, line", [
    ({"gpt-4o": {"input": 1}}, "prices.gpt-4o.output: missing, expected a number"),
    ({"gpt-4.1": {"input": -1, "output": 1}},
     'prices."gpt-4.1".input: got -1.0, expected >= 0 (US dollars per 1M tokens)'),
    ({"gpt-4.1": {"input": -1, "output": 1}},
     'prices."gpt-4.1".cached_input: got -1.0, expected >= 0 (US dollars per 1M tokens)'),
    ({"gpt-4o": {"input": "0.15", "output": 1}},
     "prices.gpt-4o.input: got '0.15', expected a number"),
    ({"gpt-4o": {"input": 1, "output": 1, "cache": 1}},
     "prices.gpt-4o.cache: unknown key (known: audio_input, audio_output, cached_audio_input, "
     "cached_input, image_input, image_tokens, input, output, per_image, per_million_chars, "
     "per_minute, reasoning)"),
    ({"whisper-1": {"per_minute": -0.006}},
     "prices.whisper-1.per_minute: got -0.006, expected >= 0 (US dollars a minute)"),
    ({"dall-e-3": {"per_image": {"1024x1024": 0.04}}},
     "prices.dall-e-3.per_image.1024x1024: got '1024x1024', expected a key "
     '"quality/WIDTHxHEIGHT", like "hd/1024x1024"'),
    ({"m": {"image_tokens": {"high/1024x1024": 100}}},
     "prices.m.input: missing, expected a number"),
    ({"gpt-4o": {"input": 1, "output": 1, "audio_input": -2}},
     "prices.gpt-4o.audio_input: got -2.0, expected >= 0 (US dollars per 1M tokens)"),
    ({"gpt-4o": {"input": 1, "output": 1, "image_input": "x"}},
     "prices.gpt-4o.image_input: got 'x', expected a number"),
    ({"gpt-4o": 0.15}, "prices.gpt-4o: got 0.15, expected a table"),
])
def test_bad_prices(prices, line):
    assert line in problems({"prices": prices})


# --- what --check prints ------------------------------------------------------------------------


def test_redacted_prints_values_in_the_files_notation():
    doc = {"storage": {"url": "memcached://a:1,[::1]:2"},
           "rate_limit": {"requests": ["10 per hour", "100/5 minutes"], "spend": ["0.50/day"],
                          "storage_url": "rediss://gw@r:6380/2"},
           "tiers": {"free": {"requests": ["20/minute"]}},
           "clients": [{"name": "a", "key_sha256": GOOD_HASH, "tokens": ["1/second"]}],
           "prices": {"m": {"input": 1, "output": 2}}}
    red = parse(doc, environ=ENV).redacted()
    assert red["storage"]["url"] == "memcached://a:1,[::1]:2"
    assert red["rate_limit"]["requests"] == ["100/5 minutes", "10/hour"]
    assert red["rate_limit"]["spend"] == ["0.50/day"]
    assert red["rate_limit"]["storage_url"] == "rediss://gw@r:6380/2"
    assert red["cache"]["storage_url"] is None
    assert red["tiers"] == {"free": {"requests": ["20/minute"], "tokens": None, "spend": None,
                                     "models": None}}
    assert red["clients"][0]["tokens"] == ["1/second"] and red["clients"][0]["requests"] is None
    assert red["prices"] == {"m": {"input": 1.0, "cached_input": 1.0, "output": 2.0,
                                   "audio_input": 1.0, "image_input": 1.0, "audio_output": 2.0,
                                   "reasoning": None, "cached_audio_input": None,
                                   "per_minute": None, "per_million_chars": None,
                                   "per_image": {}, "image_tokens": {}}}
    # Printed back, it loads to the same settings.
    again = json.loads(json.dumps(red))
    again["cache"].pop("storage_url")
    for c in again["clients"]:
        c.pop("requests"), c.pop("models"), c.pop("tier"), c.pop("spend"), c.pop("mint_tiers")
    again["tiers"]["free"] = {"requests": ["20/minute"]}
    # Unset (null): reasoning as the shipped table says, cached audio at the cached text rate,
    # no unit prices.
    for unset in ("reasoning", "cached_audio_input", "per_minute", "per_million_chars"):
        again["prices"]["m"].pop(unset)
    assert parse(again, environ=ENV) == parse(doc, environ=ENV)


# --- the command line (real processes) ----------------------------------------------------


def gateway(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in ("OPENAI_API_KEY", "CREDENTIALS_DIRECTORY")}
    return subprocess.run([sys.executable, "gateway.py", *args], cwd=ROOT, check=False,
                          env={**base, **(env or {})}, capture_output=True, text=True, timeout=60)


def test_check_shipped_config():
    r = gateway("--check", env=ENV)
    assert r.returncode == 0, r.stderr
    assert KEY not in r.stdout + r.stderr
    expected = load(ROOT / "config.toml", environ=ENV).redacted()
    assert json.loads(r.stdout) == json.loads(json.dumps(expected))
    assert r.stderr.strip() == "config.toml: OK"


def test_check_broken_file_names_every_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nport = "80"\nprot = 1\n[cors]\nallow_origins = "x"\n'
                    '[cache]\nenabled = 1\n')
    r = gateway("--config", str(path), "--check", env=ENV)
    assert r.returncode == 2 and r.stdout == ""
    assert [line.split(": ")[:2] for line in r.stderr.splitlines()] == [
        ["config error", "server.port"], ["config error", "server.prot"],
        ["config error", "cors.allow_origins"], ["config error", "cache.enabled"]]


def test_check_bad_values_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(toml_dumps({"cors": {"allow_origins": ["localhost:5173"]},
                                "storage": {"url": "memcached://host"}}))
    r = gateway("--config", str(path), "--check", env=ENV)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"config error: cors.allow_origins[0]: got 'localhost:5173', {ORIGIN_HINT}",
        f"config error: storage.url: got 'memcached://host', expected {MEMCACHED}"]


def test_check_without_the_key_variable():
    r = gateway("--check")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [f"config error: {MISSING_KEY}"]


def test_check_missing_file(tmp_path):
    r = gateway("--config", str(tmp_path / "nope.toml"), "--check", env=ENV)
    assert r.returncode == 2
    path = tmp_path / "nope.toml"
    assert r.stderr.splitlines() == [f"config error: {path}: file not found (`gateway.py init "
                                     f"{path}` writes one with every key at its default)"]


def test_new_client_key_block_parses_and_validates():
    r = gateway("new-client-key", "backend")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    key = lines[1]
    assert key.startswith("gw-") and len(key) > 40
    block = "\n".join(lines[lines.index("[[clients]]"):])
    doc = tomllib.loads(block)
    assert doc == {"clients": [{"name": "backend",
                                "key_sha256": hashlib.sha256(key.encode()).hexdigest()}]}
    s = parse(doc, environ=ENV)
    assert s.clients[0].name == "backend"
    # Each run makes a new key.
    assert gateway("new-client-key", "backend").stdout.splitlines()[1] != key


@pytest.mark.parametrize("args", [["new-client-key"], ["new-client-key", " "],
                                  ["new-client-key", "a", "b"]])
def test_new_client_key_usage(args):
    r = gateway(*args)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().startswith("usage: gateway.py new-client-key ")
    assert r.stderr.strip().splitlines()[-1].startswith("gateway.py new-client-key: error: ")


def test_a_cached_price_above_the_input_price_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        parse({"prices": {"my-model": {"input": 1.0, "cached_input": 2.0, "output": 3.0}}},
              environ=ENV)
    assert info.value.problems == [
        "prices.my-model.cached_input: got 2.0, expected at most input (1.0): cached tokens "
        "are never dearer"]
