"""The upstream key and every secret named by a *_env key: read at load (from the environment
or a systemd credential), refused when unset or too short, never printed."""
from __future__ import annotations

import json

import pytest

from openai_gateway.config.secrets import read_secret
from openai_gateway.config.settings import FallbackSettings, parse

from ..conftest import KEY
from ..support.settings import ENV, MISSING_KEY, SECRET, SECRET_ENV, issuer, problems

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


# --- every secret named by a *_env key --------------------------------------------------------


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


def merge_docs(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge_docs(out[k], v) if isinstance(v, dict) and k in out else v
    return out


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
