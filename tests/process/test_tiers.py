"""[tiers.NAME] through a real gateway process: the tier named by a login provider's claim, a
minted token or a client key chooses the requests, dollar budget and models; an unknown tier
falls back to [rate_limit] with one warning."""
from __future__ import annotations

import aiohttp
import openai
import pytest

from openai_gateway.identity.keys import hash_key

from ..conftest import ORIGIN, SEEN_RESPONSES
from ..support.jwks_server import jwks_url_fixture, provider_fixture  # noqa: F401

SECRET = "gw-token-SECRET-tiers-2b7d4f9a1c3e5a7b9d1f-do-not-leak"
PRO_KEY = "gw-client-SECRET-tiers-pro-backend"
ENV = {"GW_TOKEN_SECRET": SECRET}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 10}
#: Dear prices, so a tier's dollar budget is reached in a few answers.
PRICES = {"gpt-4o-mini": {"input": 1000.0, "output": 4000.0},
          "gpt-4o": {"input": 1000.0, "output": 4000.0}}
TIERS = {"free": {"requests": ["3/minute"], "spend": ["0.08/day"], "models": ["gpt-4o-mini"]},
         "pro": {"requests": ["100/minute"], "spend": ["5/day"],
                 "models": ["gpt-4o-mini", "gpt-4o"]}}


def config(provider=None, jwks_url=None, **extra) -> dict:
    auth: dict = {"tokens": {"secret_env": "GW_TOKEN_SECRET"}}
    if provider is not None:
        auth["issuers"] = [{"issuer": provider.issuer, "audience": provider.audience,
                            "jwks_url": jwks_url, "algorithms": ["RS256"],
                            "tier_claim": "plan"}]
    return {"auth": auth, "tiers": TIERS, "prices": PRICES,
            "validation": {"allowed_models": ["gpt-4o-mini", "gpt-4o"]},
            "rate_limit": {"requests": ["50/minute"]}, **extra}


async def create(gp, api_key: str, **over):
    async with openai.AsyncOpenAI(base_url=gp.url + "/v1", api_key=api_key, max_retries=0,
                                  timeout=10, default_headers={"Origin": ORIGIN}) as client:
        raw = await client.chat.completions.with_raw_response.create(**{**CHAT, **over})
    SEEN_RESPONSES.append(repr(dict(raw.headers)) + raw.http_response.text)
    return raw


async def test_the_tier_claim_chooses_requests_budget_and_models(gateway_process, fake,
                                                                  provider, jwks_url):
    gp = await gateway_process(config(provider, jwks_url), env=ENV)
    free = provider.sign(sub="f@example.com", plan="free")
    pro = provider.sign(sub="p@example.com", plan="pro")

    raw = await create(gp, free)
    assert raw.headers["x-ratelimit-limit-requests"] == "3"
    assert raw.headers["x-ratelimit-limit-spend"].startswith("0.08")
    with pytest.raises(openai.BadRequestError) as err:  # not a model of the free tier
        await create(gp, free, model="gpt-4o")
    assert err.value.param == "model"
    raw = await create(gp, pro, model="gpt-4o")
    assert raw.headers["x-ratelimit-limit-requests"] == "100"
    assert raw.headers["x-ratelimit-limit-spend"].startswith("5")
    # The free user's limits (3 requests, $0.08) run out first; the pro user's do not.
    with pytest.raises(openai.RateLimitError) as err:
        for _ in range(5):
            await create(gp, free)
    assert err.value.code in ("spend_limit_exceeded", "rate_limit_exceeded")
    await create(gp, pro)


async def test_the_free_tiers_dollar_budget_is_per_user(gateway_process, fake, provider,
                                                        jwks_url):
    tiers = {"free": {"requests": ["100/minute"], "spend": ["0.08/day"]}}
    gp = await gateway_process(config(provider, jwks_url, tiers=tiers), env=ENV)
    ana = provider.sign(sub="ana@example.com", plan="free")
    bo = provider.sign(sub="bo@example.com", plan="free")
    with pytest.raises(openai.RateLimitError) as err:
        for _ in range(20):
            await create(gp, ana)
    assert err.value.code == "spend_limit_exceeded"
    raw = await create(gp, bo)  # another user of the tier: a budget of their own
    assert raw.status_code == 200


async def test_client_keys_and_minted_tokens_carry_tiers(gateway_process, fake):
    gp = await gateway_process(config(clients=[
        {"name": "pro-backend", "key_sha256": hash_key(PRO_KEY), "tier": "pro",
         "mint_tiers": ["pro", "free"]},  # it may mint its users' free tokens too
        {"name": "own-limits", "key_sha256": hash_key(PRO_KEY + "-2"), "tier": "pro",
         "requests": ["7/minute"]}]), env=ENV)
    raw = await create(gp, PRO_KEY, model="gpt-4o")
    assert raw.headers["x-ratelimit-limit-requests"] == "100"
    raw = await create(gp, PRO_KEY + "-2")  # a key's own values win over its tier's
    assert raw.headers["x-ratelimit-limit-requests"] == "7"
    assert raw.headers["x-ratelimit-limit-spend"].startswith("5")

    async with aiohttp.ClientSession() as s, s.post(
            gp.url + "/gateway/tokens", json={"user": "u1", "tier": "free"},
            headers={"Authorization": f"Bearer {PRO_KEY}", "Origin": ORIGIN}) as r:
        assert r.status == 200
        token = (await r.json())["token"]
    raw = await create(gp, token)
    assert raw.headers["x-ratelimit-limit-requests"] == "3"
    with pytest.raises(openai.BadRequestError):
        await create(gp, token, model="gpt-4o")


async def test_an_unknown_tier_falls_back_with_one_warning(gateway_process, fake, provider,
                                                           jwks_url):
    gp = await gateway_process(config(provider, jwks_url), env=ENV)
    gold = provider.sign(sub="g@example.com", plan="gold")
    for _ in range(3):
        raw = await create(gp, gold)
        assert raw.headers["x-ratelimit-limit-requests"] == "50"  # [rate_limit]
    assert gp.log().count("tier 'gold' is not configured") == 1
