"""The identity edges budgets depend on, through real gateway processes: a minted user is
namespaced by the key that minted it, minting counts against that key's own request limit, a
key mints only its `mint_tiers`, sessions are limited per IPv6 prefix and checked against the
captcha's host name, and a verified token dies with its signing key."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import jwt
import openai
import pytest

from openai_gateway.identity.keys import hash_key

from ..conftest import ORIGIN, SEEN_RESPONSES, gateway_cli
from ..support.jwks_server import (  # noqa: F401
    CAPTCHA_SECRET,
    Signer,
    assert_no_leak,
    jwks_url_fixture,
    provider_fixture,
    siteverify_fixture,
    siteverify_url_fixture,
)

TOKEN_SECRET = "gw-token-SECRET-edges-4c2a9e7b1d3f5a6c8e0b-do-not-leak"
ENV = {"GW_TOKEN_SECRET": TOKEN_SECRET, "GW_CAPTCHA_SECRET": CAPTCHA_SECRET}
WIDGET_ANSWER = "XXXX.DUMMY.TOKEN.XXXX-widget-response-0123456789abcdef"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5}
TIERS = {"free": {"requests": ["2/minute"]}, "pro": {"requests": ["100/minute"]}}
KEYS = {name: f"gw-client-SECRET-edges-{name}" for name in
        ("a", "b", "slow", "free-key", "open-key", "pair-key", "picky-key", "no-mint")}


def client(name: str, **over) -> dict:
    return {"name": name, "key_sha256": hash_key(KEYS[name]), **over}


def minting_config(*clients: dict, **extra) -> dict:
    return {"auth": {"tokens": {"secret_env": "GW_TOKEN_SECRET", "max_ttl": 600}},
            "clients": list(clients), "tiers": TIERS, **extra}


async def post(url: str, body: dict, authorization: str | None = None,
               forwarded_for: str | None = None):
    headers = {"Origin": ORIGIN}
    if authorization:
        headers["Authorization"] = authorization
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    async with aiohttp.ClientSession() as s, s.post(url, json=body, headers=headers) as r:
        text = await r.text()
        SEEN_RESPONSES.append(repr(dict(r.headers)) + text)
        doc = await r.json() if r.content_type == "application/json" else text
        return r.status, doc, r.headers


async def mint(gp, key: str, **body):
    return await post(gp.url + "/gateway/tokens", body, f"Bearer {KEYS[key]}")


async def chat(gp, api_key: str):
    async with openai.AsyncOpenAI(base_url=gp.url + "/v1", api_key=api_key, max_retries=0,
                                  timeout=10, default_headers={"Origin": ORIGIN}) as c:
        raw = await c.chat.completions.with_raw_response.create(**CHAT)
    SEEN_RESPONSES.append(repr(dict(raw.headers)) + raw.http_response.text)
    return raw


async def remaining(gp, token: str) -> str:
    return (await chat(gp, token)).headers["x-ratelimit-remaining-requests"]


# --- minted tokens ----------------------------------------------------------------------------


async def test_the_same_user_id_minted_by_two_keys_is_two_users(gateway_process, fake):
    gp = await gateway_process(minting_config(client("a"), client("b")), env=ENV)
    tokens = {}
    for key in ("a", "b"):
        status, doc, _ = await mint(gp, key, user="42", tier="free")
        assert status == 200, doc
        tokens[key] = doc["token"]
    rc, out, err = await gateway_cli("mint-token", "--user", "42", "--tier", "free",
                                     "--config", str(gp.config_path), env=ENV)
    assert rc == 0, err
    tokens["cli"] = out.strip()
    # A token from before namespaces (no minting-key claim), signed with the same secret.
    now = int(time.time())
    tokens["legacy"] = jwt.encode({"iss": "openai-gateway", "aud": "openai-gateway",
                                   "sub": "42", "kind": "user", "tier": "free", "iat": now,
                                   "exp": now + 300}, TOKEN_SECRET, algorithm="HS256")
    # The free tier allows 2 requests a minute: key a's user "42" uses both...
    assert [await remaining(gp, tokens["a"]) for _ in range(2)] == ["1", "0"]
    with pytest.raises(openai.RateLimitError):
        await chat(gp, tokens["a"])
    # ...and every other "42" still has its own.
    for source in ("b", "cli", "legacy"):
        assert await remaining(gp, tokens[source]) == "1", source
    gp.stop()
    assert_no_leak([TOKEN_SECRET, *KEYS.values(), *tokens.values()], gp.log())


async def test_minting_counts_against_the_keys_own_request_limit(gateway_process, fake):
    gp = await gateway_process(minting_config(
        client("a", requests=["2/minute"]),   # its own limit
        client("free-key", tier="free"),      # its tier's (2/minute)
        client("b")), env=ENV)                # [rate_limit] (1000/minute)
    statuses = [(await mint(gp, "a", user=f"u{i}"))[0] for i in range(4)]
    assert statuses == [200, 200, 429, 429]
    status, doc, headers = await mint(gp, "a", user="u9")
    assert status == 429 and doc["error"]["code"] == "rate_limit_exceeded", doc
    assert doc["error"]["type"] == "requests" and "2 per minute" in doc["error"]["message"]
    assert int(headers["Retry-After"]) > 0
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    # Minting and the key's own API requests share one counter.
    with pytest.raises(openai.RateLimitError):
        await chat(gp, KEYS["a"])
    assert [(await mint(gp, "free-key", user=f"u{i}"))[0] for i in range(3)] == [200, 200, 429]
    status, _, headers = await mint(gp, "b", user="u1")
    assert status == 200 and headers["x-ratelimit-limit-requests"] == "1000"


#: (key, the tier asked for, status, the token's tier)
MINT_TIERS = [
    # A key with a tier and no mint_tiers mints only its own tier.
    ("free-key", "free", 200, "free"),
    ("free-key", None, 200, "free"),
    ("free-key", "pro", 400, None),
    # A key with neither mints any configured tier, or none.
    ("open-key", "pro", 200, "pro"),
    ("open-key", None, 200, None),
    ("open-key", "gold", 400, None),
    # mint_tiers lists what a key may mint; a request without a tier gets the key's own.
    ("pair-key", "pro", 200, "pro"),
    ("pair-key", None, 200, "free"),
    ("picky-key", "pro", 200, "pro"),
    ("picky-key", "free", 400, None),
    ("picky-key", None, 400, None),   # its own tier is not one it may mint: ask for one
    ("no-mint", "free", 403, None),   # mint_tiers = []: this key mints nothing
    ("no-mint", None, 403, None),
]


async def test_a_key_mints_only_its_mint_tiers(gateway_process, fake):
    own = {"requests": ["100/minute"]}  # the keys' own limit, above the free tier's
    gp = await gateway_process(minting_config(
        client("free-key", tier="free", **own), client("open-key", **own),
        client("pair-key", tier="free", mint_tiers=["free", "pro"], **own),
        client("picky-key", tier="free", mint_tiers=["pro"], **own),
        client("no-mint", mint_tiers=[], **own)), env=ENV)
    for key, asked, status, tier in MINT_TIERS:
        case = (key, asked)
        body = {"user": f"u-{key}-{asked}"} | ({"tier": asked} if asked else {})
        got, doc, _ = await mint(gp, key, **body)
        assert got == status, (case, doc)
        if status == 200:
            assert doc["tier"] == tier, case
            raw = await chat(gp, doc["token"])
            expected = {"free": "2", "pro": "100", None: "1000"}[tier]
            assert raw.headers["x-ratelimit-limit-requests"] == expected, case
            continue
        error = doc["error"]
        assert error["type"] == "invalid_request_error", case
        if status == 400:
            assert error["param"] == "tier", (case, error)
        else:
            assert error["code"] == "minting_not_allowed", (case, error)
    status, doc, _ = await mint(gp, "picky-key", user="u")
    assert "pro" in doc["error"]["message"], doc  # says which tiers it may ask for


# --- sessions ---------------------------------------------------------------------------------


def sessions_config(siteverify_url: str, **sessions) -> dict:
    return {"auth": {"tokens": {"secret_env": "GW_TOKEN_SECRET"},
                     "sessions": {"captcha_verify_url": siteverify_url,
                                  "captcha_secret_env": "GW_CAPTCHA_SECRET", "tier": "free",
                                  "requests": ["3/hour"], **sessions}},
            "tiers": TIERS}


async def test_sessions_are_limited_per_ipv6_prefix(gateway_process, fake, siteverify,
                                                   siteverify_url):
    gp = await gateway_process(sessions_config(siteverify_url), env=ENV)
    url = gp.url + "/gateway/session"
    # Eight addresses of one /64 (the peer is loopback, a trusted proxy by default).
    statuses = [(await post(url, {"captcha": WIDGET_ANSWER},
                            forwarded_for=f"2001:db8:1:2::{n}"))[0] for n in range(1, 9)]
    assert statuses == [200] * 3 + [429] * 5
    assert len(siteverify.seen) == 3
    status, doc, headers = await post(url, {"captcha": WIDGET_ANSWER},
                                      forwarded_for="2001:db8:1:2:ffff::1")
    assert status == 429 and doc["error"]["code"] == "rate_limit_exceeded"
    assert int(headers["Retry-After"]) > 0
    # Another /64 is another address; IPv4 addresses are keyed whole.
    assert (await post(url, {"captcha": WIDGET_ANSWER}, forwarded_for="2001:db8:1:3::1"))[0] \
        == 200
    assert (await post(url, {"captcha": WIDGET_ANSWER}, forwarded_for="198.51.100.7"))[0] \
        == 200


async def test_the_captcha_must_be_solved_on_one_of_the_hostnames(gateway_process, fake,
                                                                  siteverify, siteverify_url):
    gp = await gateway_process(sessions_config(
        siteverify_url, hostnames=["app.example.com", "WWW.Example.com"]), env=ENV)
    url = gp.url + "/gateway/session"
    siteverify.hostname = "app.example.com"
    status, doc, _ = await post(url, {"captcha": WIDGET_ANSWER})
    assert status == 200 and set(doc) == {"token", "expires_at"}, doc
    siteverify.hostname = "www.example.com"  # host names compare without case
    assert (await post(url, {"captcha": WIDGET_ANSWER}))[0] == 200
    siteverify.hostname = "evil.example.net"  # a widget with our site key on another site
    status, doc, _ = await post(url, {"captcha": WIDGET_ANSWER})
    assert status == 403 and doc["error"]["code"] == "captcha_failed", doc
    assert doc["error"]["param"] == "captcha"


# --- verified tokens and their keys ---------------------------------------------------------


async def test_a_verified_token_dies_with_its_signing_key(gateway_process, fake, provider,
                                                         jwks_url):
    gp = await gateway_process({
        "auth": {"issuers": [{"issuer": provider.issuer, "audience": provider.audience,
                              "jwks_url": jwks_url, "algorithms": ["RS256", "ES256"],
                              "jwks_cooldown": 0.1}]}})
    old = provider.sign(provider.signers[0], exp=int(time.time()) + 3600)
    kept = provider.sign(provider.signers[1], sub="ec-user@example.com")
    assert (await chat(gp, old)).status_code == 200  # verified once, then remembered
    assert (await chat(gp, kept)).status_code == 200
    # The provider retires rsa-1 and publishes rsa-2; the first token with rsa-2 refetches.
    provider.signers = [Signer.rsa("rsa-2", n=2), provider.signers[1]]
    await asyncio.sleep(0.2)  # past the refetch cooldown
    assert (await chat(gp, provider.sign(provider.signers[0]))).status_code == 200
    with pytest.raises(openai.AuthenticationError) as err:
        await chat(gp, old)
    assert err.value.code == "invalid_token" and "signing key" in err.value.message
    # A key still in the set keeps its tokens.
    assert (await chat(gp, kept)).status_code == 200
