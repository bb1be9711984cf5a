"""Identity through real gateway processes: users' JWTs from a login provider (RS256 and ES256
from a local JWKS) as the official SDK's api_key, every refusal a 401 that never reaches the
upstream, gateway-minted tokens accepted by another process, captcha sessions, and the leak
scan of tokens and the captcha secret."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import time

import aiohttp
import jwt
import openai
import orjson
import pytest
from selenium.webdriver.common.by import By

from openai_gateway.identity.keys import hash_key

from ..conftest import KEY, ORIGIN, SEEN_RESPONSES, access_lines
from ..support.browser import watch_reply
from ..support.jwks_server import (  # noqa: F401
    CAPTCHA_SECRET,
    Signer,
    assert_no_leak,
    jwks_url_fixture,
    provider_fixture,
    siteverify_fixture,
    siteverify_url_fixture,
)

TOKEN_SECRET = "gw-token-SECRET-e2e-7f3a9c1d5b8e2f4a6c0d-do-not-leak"
CLIENT_KEY = "gw-client-SECRET-e2e-backend-5d1c9b"
WIDGET_ANSWER = "XXXX.DUMMY.TOKEN.XXXX-widget-response-0123456789abcdef"
ENV = {"GW_TOKEN_SECRET": TOKEN_SECRET, "GW_CAPTCHA_SECRET": CAPTCHA_SECRET}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def issuer_config(provider, jwks_url: str, **auth) -> dict:
    return {
        "auth": {"issuers": [{"issuer": provider.issuer, "audience": provider.audience,
                              "jwks_url": jwks_url, "algorithms": ["RS256", "ES256"],
                              "tier_claim": "plan", "jwks_cooldown": 30}], **auth},
        "tiers": {"free": {"requests": ["2/minute"]}, "pro": {"requests": ["100/minute"]}},
        "rate_limit": {"requests": ["1000/minute"]},
    }


def sdk(gp, api_key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gp.url + "/v1", api_key=api_key, max_retries=0,
                              timeout=10, default_headers={"Origin": ORIGIN})


async def chat(gp, api_key: str):
    """One chat through the SDK; the raw response (headers) and its parsed answer."""
    async with sdk(gp, api_key) as client:
        raw = await client.chat.completions.with_raw_response.create(**CHAT)
    SEEN_RESPONSES.append(repr(dict(raw.headers)) + raw.http_response.text)
    return raw, raw.parse()


def forwarded_bearers(fake) -> set[str]:
    return {s.headers.get("Authorization") for s in fake.posts}


async def test_users_jwts_work_as_the_sdk_api_key_with_limits_per_user_and_tier(
        gateway_process, fake, provider, jwks_url):
    gp = await gateway_process(issuer_config(provider, jwks_url))
    ana_rsa = provider.sign(sub="ana@example.com", plan="free")
    ana_ec = provider.sign(provider.signers[1], sub="ana@example.com", plan="free")
    bo = provider.sign(provider.signers[1], sub="bo@example.com", plan="free")
    cy = provider.sign(sub="cy@example.com", plan="pro")

    raw, answer = await chat(gp, ana_rsa)  # RS256
    assert answer.choices[0].message.content.startswith("w0")
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    raw, _ = await chat(gp, ana_ec)  # ES256, same user: the same budget
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError):
        await chat(gp, ana_rsa)
    # Another user of the same tier has a budget of their own; a pro user has the pro limits.
    raw, _ = await chat(gp, bo)
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    raw, _ = await chat(gp, cy)
    assert raw.headers["x-ratelimit-limit-requests"] == "100"
    # The upstream sees the operator's key only, never a user's token.
    assert forwarded_bearers(fake) == {f"Bearer {KEY}"}
    gp.stop()
    assert_no_leak([ana_rsa, ana_ec, bo, cy], gp.log(), *SEEN_RESPONSES)


def _hs_with_public_key(provider) -> str:
    """HS256 signed with the RSA public key (algorithm confusion), built by hand."""
    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT","kid":"rsa-1"}')
    payload = jwt.utils.base64url_encode(orjson.dumps(provider.claims()))
    signing_input = header + b"." + payload
    sig = hmac.new(provider.signers[0].public_pem(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + jwt.utils.base64url_encode(sig)).decode()


def _alg_none(provider) -> str:
    header = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode()
    payload = jwt.utils.base64url_encode(orjson.dumps(provider.claims()))
    return f"{header}.{payload.decode()}."


REFUSED = {
    "expired": lambda p: p.sign(exp=int(time.time()) - 3600),
    "not yet valid": lambda p: p.sign(nbf=int(time.time()) + 3600),
    "wrong issuer": lambda p: p.sign(iss="https://other.example/"),
    "wrong audience": lambda p: p.sign(aud="someone-else"),
    "bad signature": lambda p: p.sign(Signer.rsa("rsa-1", n=7)),
    "alg none": _alg_none,
    "algorithm confusion": _hs_with_public_key,
    "unknown key": lambda p: p.sign(Signer.rsa("rsa-unknown", n=3)),
    "malformed": lambda p: p.sign().split(".")[0] + ".bm90IGpzb24.c2ln",
    "oversized": lambda p: p.sign(padding="x" * 9000),
    "minted elsewhere": lambda p: jwt.encode(
        {"iss": "openai-gateway", "aud": "openai-gateway", "sub": "u", "kind": "user",
         "iat": int(time.time()), "exp": int(time.time()) + 60},
        "another-secret-of-at-least-32-bytes-long!", algorithm="HS256"),
}


async def test_every_refused_token_is_a_401_through_the_sdk_and_never_forwarded(
        gateway_process, fake, provider, jwks_url):
    gp = await gateway_process(issuer_config(provider, jwks_url,
                                             tokens={"secret_env": "GW_TOKEN_SECRET"}), env=ENV)
    tokens = {case: make(provider) for case, make in REFUSED.items()}
    for case, token in tokens.items():
        with pytest.raises(openai.AuthenticationError) as err:
            await chat(gp, token)
        resp = err.value.response
        SEEN_RESPONSES.append(repr(dict(resp.headers)) + resp.text)
        assert resp.status_code == 401, case
        assert err.value.code == "invalid_token", (case, resp.text)
        assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"', case
    assert fake.posts == []
    gp.stop()
    assert_no_leak(list(tokens.values()), gp.log(), *SEEN_RESPONSES)


async def get_json(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.json()


async def test_key_rotation_refetches_at_most_once_per_cooldown(gateway_process, fake,
                                                                provider, jwks_url):
    provider.failing = 503  # the provider is down when the gateway starts
    gp = await gateway_process(issuer_config(provider, jwks_url))
    status, doc = await get_json(gp.url + "/readyz")
    assert doc["status"] == "degraded"
    assert doc["auth"] == {"issuers_without_keys": [provider.issuer]}
    provider.failing = None
    # A user's token (a key the gateway has not seen) loads the keys: one fetch.
    await chat(gp, provider.sign(plan="pro"))
    fetched = provider.fetches
    status, doc = await get_json(gp.url + "/readyz")
    assert doc["status"] == "ok" and "auth" not in doc
    # The provider rotates to a new key while the cooldown runs: tokens with it, and an
    # attacker's random kids, do not make the gateway hammer the provider.
    provider.signers.append(Signer.rsa("rsa-2", n=2))
    rotated = provider.sign(provider.signers[-1], plan="pro")
    for n in range(5):
        with pytest.raises(openai.AuthenticationError):
            await chat(gp, provider.sign(Signer.rsa(f"random-{n}", n=3)))
    with pytest.raises(openai.AuthenticationError):
        await chat(gp, rotated)
    assert provider.fetches <= fetched + 1
    # The provider goes down: the keys in hand keep serving.
    provider.failing = 503
    _, answer = await chat(gp, provider.sign(sub="other@example.com", plan="pro"))
    assert answer.choices


async def test_anonymous_false_needs_an_identity(gateway_process, fake, provider, jwks_url):
    gp = await gateway_process(issuer_config(provider, jwks_url, anonymous=False))
    with pytest.raises(openai.AuthenticationError) as err:
        await chat(gp, "sk-dummy-browser-key")
    assert err.value.status_code == 401 and err.value.code == "unauthenticated"
    assert fake.posts == []
    _, answer = await chat(gp, provider.sign(plan="pro"))
    assert answer.choices and len(fake.posts) == 1


async def post(url: str, body: dict, authorization: str | None = None):
    headers = {"Origin": ORIGIN}
    if authorization:
        headers["Authorization"] = authorization
    async with aiohttp.ClientSession() as s, s.post(url, json=body, headers=headers) as r:
        text = await r.text()
        SEEN_RESPONSES.append(repr(dict(r.headers)) + text)
        return r.status, (await r.json() if r.content_type == "application/json" else text)


async def test_minted_tokens_are_stateless_across_processes(gateway_process, fake):
    config = {"auth": {"tokens": {"secret_env": "GW_TOKEN_SECRET", "max_ttl": 600}},
              "clients": [{"name": "backend", "key_sha256": hash_key(CLIENT_KEY)}],
              "tiers": {"free": {"requests": ["1/minute"]}, "pro": {"requests": ["50/minute"]}}}
    one = await gateway_process(config, env=ENV)
    two = await gateway_process(config, env=ENV)
    status, doc = await post(one.url + "/gateway/tokens", {"user": "u-7", "tier": "pro",
                                                           "ttl": 300}, f"Bearer {CLIENT_KEY}")
    assert status == 200 and (doc["user"], doc["tier"]) == ("u-7", "pro")
    assert 0 < doc["expires_at"] - time.time() <= 300
    token = doc["token"]
    minted_at = len(SEEN_RESPONSES)
    raw, _ = await chat(two, token)  # the other process accepts it: nothing is stored
    assert raw.headers["x-ratelimit-limit-requests"] == "50"
    # Without a client key, or above max_ttl, nothing is minted.
    status, doc = await post(one.url + "/gateway/tokens", {"user": "u-8"}, "Bearer nope")
    assert status == 401
    status, doc = await post(one.url + "/gateway/tokens", {"user": "u-8", "ttl": 601},
                             f"Bearer {CLIENT_KEY}")
    assert status == 400 and doc["error"]["param"] == "ttl"
    # A process with another secret refuses it.
    three = await gateway_process(config, env={"GW_TOKEN_SECRET": "x" * 48})
    with pytest.raises(openai.AuthenticationError):
        await chat(three, token)
    for gp in (one, two, three):
        gp.stop()
        assert_no_leak([token, TOKEN_SECRET, CLIENT_KEY], gp.log())
    assert_no_leak([TOKEN_SECRET, CLIENT_KEY], *SEEN_RESPONSES)
    assert_no_leak([token], *SEEN_RESPONSES[minted_at:])


async def test_captcha_sessions(gateway_process, fake, siteverify, siteverify_url):
    gp = await gateway_process({
        "auth": {"tokens": {"secret_env": "GW_TOKEN_SECRET"},
                 "sessions": {"captcha_verify_url": siteverify_url,
                              "captcha_secret_env": "GW_CAPTCHA_SECRET", "tier": "free",
                              "ttl": 120, "requests": ["3/hour"]}},
        "tiers": {"free": {"requests": ["7/minute"]}}}, env=ENV)
    url = gp.url + "/gateway/session"
    status, doc = await post(url, {"captcha": WIDGET_ANSWER})
    assert status == 200 and set(doc) == {"token", "expires_at"}, doc
    assert siteverify.seen[-1]["secret"] == CAPTCHA_SECRET
    assert siteverify.seen[-1]["response"] == WIDGET_ANSWER
    session = doc["token"]
    minted_at = len(SEEN_RESPONSES)  # later answers must not carry the token
    raw, _ = await chat(gp, session)  # a session is a user in auth.sessions.tier
    assert raw.headers["x-ratelimit-limit-requests"] == "7"

    siteverify.mode = "fail"
    status, doc = await post(url, {"captcha": WIDGET_ANSWER})
    assert status == 403 and doc["error"]["code"] == "captcha_failed", doc
    siteverify.mode = "error"  # the provider is down: no session, a clear 503
    status, doc = await post(url, {"captcha": WIDGET_ANSWER})
    assert status == 503 and "captcha" in doc["error"]["message"].lower(), doc
    # Session creation is limited per address: the fourth is refused before the provider
    # is asked.
    siteverify.mode = "ok"
    asked = len(siteverify.seen)
    status, doc = await post(url, {"captcha": WIDGET_ANSWER})
    assert status == 429, doc
    assert len(siteverify.seen) == asked
    gp.stop()
    assert_no_leak([session, CAPTCHA_SECRET, TOKEN_SECRET], gp.log(),
                   *SEEN_RESPONSES[minted_at:])
    assert_no_leak([CAPTCHA_SECRET, TOKEN_SECRET], *SEEN_RESPONSES)


# --- the playground signing in (Chromium against `gateway.py --demo`) -----------------------


async def test_the_playground_signs_in_and_gets_the_tiers_budget(browser, demo_process):
    gp = await demo_process({"tiers": {"free": {"requests": ["30/minute"],
                                                  "spend": ["0.50/day"]}}})
    await browser.open_playground(gp.url)
    await browser.wait("return !document.getElementById('signin').hidden")
    await browser.send("before")
    await watch_reply(browser)
    assert await browser.js("return document.getElementById('spend').hidden")  # anonymous

    def sign_in():
        browser.driver.find_element(By.ID, "signin-user").send_keys("alice")
        browser.driver.find_element(By.ID, "signin-button").click()
    await asyncio.to_thread(sign_in)
    await browser.wait("return document.getElementById('signin').dataset.user === 'alice'")
    await browser.send("after")
    await watch_reply(browser)
    spend = await browser.wait("const s = document.getElementById('spend');"
                              "return !s.hidden && s.textContent")
    assert spend.endswith("of $0.50"), spend
    chats = [a for a in access_lines(gp) if a.get("route") == "/v1/chat/completions"]
    assert not chats[0]["client"].startswith("user:")  # before: anonymous
    assert chats[-1]["client"].startswith("user:"), chats[-1]
    assert "alice" not in gp.log()  # the subject is hashed where it leaves the process
