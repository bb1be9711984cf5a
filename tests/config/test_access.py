"""Who may call and what it costs: clients, issuers, tokens and sessions, tiers, prices."""
from __future__ import annotations

import types

import pytest
from limits import RateLimitItemPerDay, RateLimitItemPerMinute, RateLimitItemPerMonth

from openai_gateway.config.limits import SPEND_EXPECTED, SpendLimit
from openai_gateway.config.settings import (
    ConfigError,
    IssuerSettings,
    PriceSettings,
    TierSettings,
    parse,
)

from ..support.settings import ENV, GOOD_HASH, LIMIT_HINT, SECRET, issuer, problems

# --- client keys ------------------------------------------------------------------------------


@pytest.mark.parametrize("digest", ["abc", "g" * 64, GOOD_HASH + "0"])
def test_bad_client_key_hash(digest):
    [got] = problems({"clients": [{"name": "a", "key_sha256": digest}]})
    assert got.startswith(f"clients[0].key_sha256: got {digest!r}, expected 64 hex digits")


def test_duplicate_client_key_hash():
    assert problems({"clients": [{"name": "a", "key_sha256": GOOD_HASH},
                                 {"name": "b", "key_sha256": GOOD_HASH.upper()}]}) == [
        "clients[1].key_sha256: duplicate of an earlier client"]


# --- identity: issuers, tokens, sessions -------------------------------------------------------


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


def test_a_cached_price_above_the_input_price_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        parse({"prices": {"my-model": {"input": 1.0, "cached_input": 2.0, "output": 3.0}}},
              environ=ENV)
    assert info.value.problems == [
        "prices.my-model.cached_input: got 2.0, expected at most input (1.0): cached tokens "
        "are never dearer"]
