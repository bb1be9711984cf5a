"""settings.parse and load: the shipped file, every bad value one line naming its key, the
new keys' defaults, and what --check prints."""
from __future__ import annotations

import json

import pytest
from limits import RateLimitItemPerDay, RateLimitItemPerHour, RateLimitItemPerMinute

from openai_gateway.config.limits import SpendLimit
from openai_gateway.config.loader import Problems, build
from openai_gateway.config.settings import (
    CacheSettings,
    ClientSettings,
    ConfigError,
    Settings,
    load,
    parse,
)
from openai_gateway.config.storage import StorageURL

from ..conftest import KEY, ROOT
from ..support.settings import (
    ENV,
    GOOD_HASH,
    LIMIT_HINT,
    MISSING_KEY,
    SECRET,
    SECRET_ENV,
    get,
    problems,
)

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
     '"/v1/embeddings", "/v1/responses", "/v1/moderations", "/v1/models", "/v1/audio/speech", '
     '"/v1/audio/transcriptions", "/v1/audio/translations", "/v1/images/generations" or '
     '"/v1/images/edits"'),
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
