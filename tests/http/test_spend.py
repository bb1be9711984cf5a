"""GET /gateway/spend: the gateway's spend by period and tier, to trusted peers only."""
from __future__ import annotations

from datetime import UTC, datetime

from openai_gateway.identity.keys import hash_key

from ..conftest import ORIGIN

PRICED = {"prices": {"gpt-4o-mini": {"input": 1000.0, "output": 4000.0}},
          "cors": {"allow_origins": [ORIGIN]}}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 10}


async def test_the_spend_by_tier_is_the_sum_of_the_answers_costs(make_gateway):
    key = "gw-spend-route-test-key"
    gw = await make_gateway({**PRICED, "budget": {"daily_usd": 20.0, "monthly_usd": 300.0},
                             "tiers": {"pro": {}, "free": {}},
                             "clients": [{"name": "shop", "key_sha256": hash_key(key),
                                          "tier": "pro"}]})
    costs = {"pro": 0, "none": 0}
    for tier, auth in (("pro", key), ("none", None), ("pro", key)):
        headers = {"Origin": ORIGIN, **({"Authorization": f"Bearer {auth}"} if auth else {})}
        r = await gw.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert r.status == 200
        costs[tier] += round(float(r.headers["x-gateway-cost-usd"]) * 1_000_000)
    r = await gw.get("/gateway/spend")
    assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
    doc = await r.json()
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    total = costs["pro"] + costs["none"]
    assert doc["today"] == {"date": today, "spent_micro": total,
                            "tiers": {"pro": costs["pro"], "free": 0, "none": costs["none"]}}
    assert doc["this_month"]["month"] == today[:7] and doc["this_month"]["spent_micro"] == total
    daily = doc["ceilings"]["daily"]
    assert daily["limit_micro"] == 20_000_000 and daily["spent_micro"] == total
    assert daily["remaining_micro"] == 20_000_000 - total
    assert doc["ceilings"]["monthly"]["limit_micro"] == 300_000_000


async def test_without_a_ceiling_nothing_counts_by_period(make_gateway):
    gw = await make_gateway(PRICED)
    assert (await gw.post("/v1/chat/completions", json=CHAT,
                          headers={"Origin": ORIGIN})).status == 200
    assert await (await gw.get("/gateway/spend")).json() == {"budget": False}


async def test_only_trusted_peers_may_ask(make_gateway):
    gw = await make_gateway({"budget": {"daily_usd": 1.0}})
    r = await gw.get("/gateway/spend", headers={"X-Forwarded-For": "203.0.113.9"})
    assert r.status == 403 and (await r.json())["error"]["code"] == "forbidden"
    assert (await gw.post("/gateway/spend")).status == 405
    untrusted = await make_gateway({"budget": {"daily_usd": 1.0},
                                    "server": {"trusted_proxies": []}})
    assert (await untrusted.get("/gateway/spend")).status == 403
