"""The token routes through aiohttp's test client, in the smallest app that shows them working:
the routes, the gateway's error rendering, and a /whoami that resolves the bearer."""
from __future__ import annotations

import pytest
from aiohttp import web

from openai_gateway.config.settings import ClientSettings
from openai_gateway.errors import RateLimited
from openai_gateway.http.middlewares import render_errors
from openai_gateway.http.tokens import demo_token_handler, session_handler, tokens_handler
from openai_gateway.identity.bearer import BearerResolver
from openai_gateway.identity.captcha import CaptchaVerifier
from openai_gateway.identity.keys import hash_key
from openai_gateway.identity.minted import TokenMinter

from ..support.jwks_server import (  # noqa: F401
    CAPTCHA_SECRET,
    assert_no_leak,
    http_fixture,
    logs_fixture,
    siteverify_fixture,
    siteverify_url_fixture,
)

SECRET = "gw-token-SECRET-a1b2c3d4e5f6a7b8c9d0-do-not-leak"
CLIENT_KEY = "gw-client-SECRET-c0ffee-backend"
WIDGET_ANSWER = "XXXX.DUMMY.TOKEN.XXXX-widget-response-0123456789abcdef"
SESSIONS_PER_ADDRESS = 3


BACKEND = ClientSettings(name="backend", key_sha256=hash_key(CLIENT_KEY))


def client_key(authorization: str | None) -> ClientSettings | None:
    """Stands in for the gateway's client-key lookup."""
    return BACKEND if authorization == f"Bearer {CLIENT_KEY}" else None


async def count(request: web.Request, key: ClientSettings) -> dict[str, str]:
    """Stands in for the gateway's request limiter: every mint is allowed."""
    return {"x-ratelimit-limit-requests": "600"}


@pytest.fixture
async def api(aiohttp_client, siteverify_url, http):
    minter = TokenMinter(secret=SECRET, max_ttl=3600)
    resolver = BearerResolver(minter=TokenMinter(secret=SECRET))  # "another process"
    made: dict[str, int] = {}

    async def check_rate(address: str) -> None:
        made[address] = made.get(address, 0) + 1
        if made[address] > SESSIONS_PER_ADDRESS:
            raise RateLimited("Too many sessions from your address.",
                              headers={"Retry-After": "60"})

    async def whoami(request: web.Request) -> web.Response:
        caller = await resolver.resolve(request.headers.get("Authorization"))
        return web.json_response(None if caller is None else
                                 {"id": caller.id, "kind": caller.kind, "tier": caller.tier})

    app = web.Application(middlewares=[render_errors])
    verifier = CaptchaVerifier(url=siteverify_url, secret=CAPTCHA_SECRET, session=lambda: http,
                               timeout=0.5)
    app.router.add_post("/gateway/tokens", tokens_handler(
        minter=minter, client_key=client_key, count=count, tiers=("free", "pro")))
    app.router.add_post("/gateway/session", session_handler(
        verifier=verifier, minter=minter, tier="free", ttl=900,
        address_of=lambda r: r.remote or "", check_rate=check_rate))
    app.router.add_post("/gateway/demo-token", demo_token_handler(minter=minter))
    app.router.add_get("/whoami", whoami)
    return await aiohttp_client(app)


async def mint(api, body, key=CLIENT_KEY):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return await api.post("/gateway/tokens", json=body, headers=headers)


async def whoami(api, token):
    r = await api.get("/whoami", headers={"Authorization": f"Bearer {token}"})
    return r.status, await r.json()


async def test_a_client_key_mints_a_token_the_gateway_accepts(api):
    r = await mint(api, {"user": "user-7", "tier": "pro", "ttl": 600})
    assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
    assert r.headers["x-ratelimit-limit-requests"] == "600"  # what counting the mint said
    doc = await r.json()
    assert set(doc) == {"token", "expires_at", "user", "tier"}
    assert (doc["user"], doc["tier"]) == ("user-7", "pro")
    status, me = await whoami(api, doc["token"])
    assert status == 200 and me["kind"] == "user" and me["tier"] == "pro"
    assert me["id"].startswith("user:") and "user-7" not in me["id"]


@pytest.mark.parametrize("key", [None, "wrong-key"])
async def test_minting_needs_a_client_key(api, key):
    r = await mint(api, {"user": "u"}, key=key)
    assert r.status == 401
    assert (await r.json())["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("body, param", [
    ({}, "user"),
    ({"user": "has space"}, "user"),
    ({"user": "u", "ttl": 3601}, "ttl"),
    ({"user": "u", "ttl": "600"}, "ttl"),
    ({"user": "u", "tier": "enterprise"}, "tier"),
    ({"user": "u", "expires_in": 60}, "expires_in"),
    ('{"user": "a", "user": "b"}', "user"),
    ("[1]", None),
    ("{not json", None),
    # Wrong types anywhere, and nesting past what the API's parser accepts: 400s, not 500s.
    ({"user": ["u"]}, "user"),
    ({"user": "u", "tier": {}}, "tier"),
    ({"user": "u", "ttl": True}, "ttl"),
    ({"user": "u", "ttl": 60.0}, "ttl"),
    ({"user": "u", "ttl": 2**64}, "ttl"),
    ('{"user": ' + "[" * 5000 + "]" * 5000 + "}", "user"),
    ('{"user": "u", "tier": ' + '{"a":' * 300 + "1" + "}" * 300 + "}", "tier"),
    ("[" * 5000 + "]" * 5000, None),
])
async def test_bad_bodies_are_openai_shaped_400s(api, body, param):
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    kw = {"data": body} if isinstance(body, str) else {"json": body}
    r = await api.post("/gateway/tokens", headers=headers, **kw)
    assert r.status == 400
    err = (await r.json())["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]


async def test_a_huge_body_is_413(api):
    r = await mint(api, {"user": "u", "pad": "x" * 20000})
    assert r.status == 413


async def test_a_captcha_buys_a_session_token(api, siteverify):
    r = await api.post("/gateway/session", json={"captcha": WIDGET_ANSWER})
    assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
    doc = await r.json()
    assert set(doc) == {"token", "expires_at"}
    status, me = await whoami(api, doc["token"])
    assert status == 200 and me["kind"] == "session" and me["tier"] == "free"
    assert siteverify.seen[0]["remoteip"] == "127.0.0.1"
    # Each session is its own caller.
    again = await (await api.post("/gateway/session", json={"captcha": WIDGET_ANSWER})).json()
    assert (await whoami(api, again["token"]))[1]["id"] != me["id"]


@pytest.mark.parametrize("mode, status, code", [
    ("fail", 403, "captcha_failed"),
    ("error", 503, "captcha_unavailable"),
    ("slow", 503, "captcha_unavailable"),
])
async def test_no_session_when_the_provider_says_no_or_is_unwell(api, siteverify, mode, status,
                                                                 code):
    siteverify.mode = mode
    r = await api.post("/gateway/session", json={"captcha": WIDGET_ANSWER})
    assert r.status == status
    assert (await r.json())["error"]["code"] == code


@pytest.mark.parametrize("body", [{}, {"captcha": ""}, {"captcha": 5},
                                  {"captcha": "x" * 5000}, {"captcha": "x", "user": "u"},
                                  {"captcha": ["x"]}, {"captcha": {"x": None}},
                                  '{"captcha": ' + "[" * 5000 + "]" * 5000 + "}"])
async def test_session_body_is_checked(api, siteverify, body):
    kw = {"data": body} if isinstance(body, str) else {"json": body}
    r = await api.post("/gateway/session", **kw)
    assert r.status == 400
    assert (await r.json())["error"]["param"] in ("captcha", "user")
    assert siteverify.seen == []


async def test_sessions_are_limited_per_address_before_the_provider_is_asked(api, siteverify):
    statuses = [(await api.post("/gateway/session", json={"captcha": WIDGET_ANSWER})).status
                for _ in range(SESSIONS_PER_ADDRESS + 2)]
    assert statuses == [200] * SESSIONS_PER_ADDRESS + [429, 429]
    assert len(siteverify.seen) == SESSIONS_PER_ADDRESS


async def test_demo_token_signs_in_as_anyone_in_the_free_tier(api):
    r = await api.post("/gateway/demo-token", json={"user": "ana"})
    doc = await r.json()
    assert r.status == 200 and (doc["user"], doc["tier"]) == ("ana", "free")
    assert (await whoami(api, doc["token"]))[1]["tier"] == "free"
    r = await api.post("/gateway/demo-token", json={"user": "ana", "tier": "pro"})
    assert (await r.json())["tier"] == "pro"


async def test_a_bad_jwt_is_401_invalid_token_and_a_dummy_key_is_anonymous(api):
    forged = TokenMinter(secret="x" * 40).mint("u", minted_by="key:backend")[0]
    r = await api.get("/whoami", headers={"Authorization": f"Bearer {forged}"})
    assert r.status == 401 and r.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert (await r.json())["error"] == {
        "message": "The token's signature does not verify.", "type": "invalid_request_error",
        "param": None, "code": "invalid_token"}
    assert await whoami(api, "sk-dummy") == (200, None)


def test_session_ttl_above_max_ttl_is_refused_when_built(http):
    with pytest.raises(ValueError, match="max_ttl"):
        session_handler(verifier=CaptchaVerifier(url="https://x/siteverify", secret="s",
                                                 session=lambda: http),
                        minter=TokenMinter(secret=SECRET, max_ttl=600), tier="free",
                        ttl=900, address_of=lambda r: "")


async def test_leak_scan_no_secret_or_token_in_logs_or_error_answers(api, siteverify, logs):
    """Every route's errors and the log, at debug, hold no key, secret, answer or token."""
    seen: list[str] = []
    issued = [(await (await mint(api, {"user": "u"})).json())["token"]]
    issued.append((await (await api.post("/gateway/session",
                                          json={"captcha": WIDGET_ANSWER})).json())["token"])
    bad_jwt = issued[0][:-6] + "AAAAAA"
    for mode in ("fail", "error", "slow", "garbage", "bad-secret"):
        siteverify.mode = mode
        r = await api.post("/gateway/session", json={"captcha": WIDGET_ANSWER})
        seen.append(repr(dict(r.headers)) + await r.text())
    for key in ("wrong-" + CLIENT_KEY, None):
        seen.append(await (await mint(api, {"user": "u"}, key=key)).text())
    seen.append(await (await mint(api, {"user": "u", "ttl": SECRET})).text())
    for token in (bad_jwt, issued[0] + "x", issued[0].replace(".", "..", 1)):
        r = await api.get("/whoami", headers={"Authorization": f"Bearer {token}"})
        seen.append(repr(dict(r.headers)) + await r.text())
        issued.append(token)
    assert any("invalid_token" in t for t in seen) and any("captcha_failed" in t for t in seen)
    assert_no_leak([SECRET, CLIENT_KEY, CAPTCHA_SECRET, WIDGET_ANSWER, *issued],
                   logs.text, *seen)
