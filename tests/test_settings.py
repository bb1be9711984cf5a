"""settings.parse/load and the command line: every bad value is one line naming its key."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tomllib

import pytest

from openai_gateway.settings import (
    ClientSettings,
    ConfigError,
    FallbackSettings,
    Settings,
    load,
    parse,
    read_api_key,
)

from .conftest import KEY, ROOT, toml_dumps

ENV = {"OPENAI_API_KEY": KEY}
GOOD_HASH = "ab" * 32
ORIGIN_HINT = ('expected "*" or an origin like "https://app.example.com" '
               "(scheme and host, no path)")
MISSING_KEY = ("upstream.api_key_env: environment variable OPENAI_API_KEY is not set (nor a "
               "systemd credential of that name); expected the upstream key")


def problems(doc: dict, environ=ENV) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(doc, environ=environ)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


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
    assert s.storage.url == "memory://" and s.rate_limit.requests == ("60/minute", "1000/day")
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
    ({"server": {"workers": 2.5}}, "server.workers: got 2.5, expected an integer or a string"),
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


LIMIT_HINT = 'expected a limit like "60/minute" or "1000/day"'


@pytest.mark.parametrize("text", ["abc", "", "60/fortnight", "-1/minute", "60 minute",
                                  "1/minute trailing"])
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


@pytest.mark.parametrize("text", ["60/minute", "60/minutes", "60 per minute", "10/2 seconds",
                                  "60/minute;1000/day"])
def test_limits_syntax_is_the_limits_librarys(text):
    # "60/minutes" is the limits library's own plural form (60 per minute), not an error.
    assert parse({"rate_limit": {"requests": [text]}}, environ=ENV).rate_limit.requests == (text,)


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


ANY_STORAGE = '"memory://" or "memcached://host:port[,host:port]"'
MEMCACHED = '"memcached://host:port[,host:port]" with numeric ports'


@pytest.mark.parametrize("key", ["storage.url", "rate_limit.storage_url", "cache.storage_url"])
@pytest.mark.parametrize("url, expected", [
    ("redis://x", ANY_STORAGE), ("memcached://", ANY_STORAGE), ("memory://x", ANY_STORAGE),
    ("memcached://host", MEMCACHED), ("memcached://host:abc", MEMCACHED),
    ("memcached://:11211", MEMCACHED), ("memcached://a:11211,", MEMCACHED),
    ("memcached://a:70000", MEMCACHED), ("memcached://a:0", MEMCACHED),
])
def test_bad_storage_urls(key, url, expected):
    section, name = key.split(".")
    assert problems({section: {name: url}}) == [f"{key}: got {url!r}, expected {expected}"]


@pytest.mark.parametrize("url", ["memory://", "memcached://127.0.0.1:11211",
                                 "memcached://a:1,b:2", "memcached://[::1]:11211"])
def test_good_storage_urls(url):
    assert parse({"storage": {"url": url}}, environ=ENV).storage.url == url


@pytest.mark.parametrize("doc", [
    {"storage": {"url": "memcached://127.0.0.1:11211"},
     "rate_limit": {"strategy": "moving-window"}},
    {"rate_limit": {"strategy": "moving-window", "storage_url": "memcached://127.0.0.1:11211"}},
])
def test_moving_window_on_memcached_names_the_reason(doc):
    [got] = problems(doc)
    assert got.startswith('rate_limit.strategy: got "moving-window", expected "auto" or '
                          '"sliding-window-counter" with memcached storage')
    assert "limits implements moving window only on memory" in got


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
    ({"storage": {"on_error": "maybe"}},
     "storage.on_error: got 'maybe', expected \"open\" or \"closed\""),
    ({"cache": {"ttl": 0}}, "cache.ttl: got 0, expected a positive integer (seconds)"),
    ({"validation": {"max_n": 0}}, "validation.max_n: got 0, expected > 0"),
    ({"rate_limit": {"rules": [{"requests": ["1/minute"]}]}},
     "rate_limit.rules[0]: expected a route, a model or both"),
    ({"clients": [{"name": "", "key_sha256": GOOD_HASH}]},
     "clients[0].name: expected a non-empty name"),
    ({"clients": [{"name": "a", "key_sha256": GOOD_HASH, "cache_scope": "all"}]},
     "clients[0].cache_scope: got 'all', expected \"client\" or \"shared\""),
    ({"log": {"format": "xml"}}, "log.format: got 'xml', expected \"auto\", \"json\" or \"text\""),
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
def test_read_api_key_prefers_the_systemd_credential(tmp_path, files, env, expected):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path), **env}
    assert read_api_key("OPENAI_API_KEY", environ) == expected


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
        "upstream.fallbacks[1].api_key_env: environment variable C_KEY is not set; expected a key"]


def test_redacted_and_repr_never_contain_a_key():
    doc = {"upstream": {"fallbacks": [{"base_url": "https://c.example/v1",
                                       "api_key_env": "C_KEY"}]}}
    s = parse(doc, environ={**ENV, "C_KEY": "sk-c-SECRET"})
    red = s.redacted()
    assert "api_key" not in red and "fallback_keys" not in red
    assert red["upstream"]["api_key_env"] == "OPENAI_API_KEY"
    for text in (repr(s), str(s), json.dumps(red)):
        assert KEY not in text and "sk-c-SECRET" not in text


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
    assert r.stderr.splitlines() == [f"config error: {tmp_path / 'nope.toml'}: file not found"]


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
    assert r.stderr.strip().startswith("usage: gateway.py new-client-key NAME")
