"""A small dollar budget against images and speech, through a real `python gateway.py`: a burst
of image generations and speech requests from one caller is admitted only as far as the budget
covers their reservations, the next one is refused once it is spent, and what the upstream can
bill for everything it made (the fake's own ledger, priced at the list price) stays within the
budget; the remaining spend the caller is shown never exceeds what is truly left (the idea of
test_wallet.py, for the voice and pictures routes)."""
from __future__ import annotations

import asyncio
import math
from decimal import Decimal

import aiohttp
import orjson

from openai_gateway.config.settings import ValidationSettings
from openai_gateway.metering.prices import MICRO, PriceTable, cost
from openai_gateway.metering.units import reserve
from openai_gateway.policy import RequestPolicy
from openai_gateway.policy.usage import Usage, usage_of

from ..conftest import ORIGIN

BUDGET = Decimal("0.05")  # US dollars a day
TABLE = PriceTable()
IMAGE = {"model": "gpt-image-1-mini", "prompt": "a lighthouse at dusk", "size": "1024x1024",
         "quality": "low"}
TEXT = "Every answer of this app can be read aloud. " * 12  # 540 characters
SPEECH = [{"model": "tts-1", "input": TEXT, "voice": "alloy"},
          {"model": "gpt-4o-mini-tts", "input": TEXT, "voice": "alloy", "response_format": "pcm"}]
#: More than the whole budget whatever is left: refused, it spends nothing (4 x $0.12).
PROBE = {"model": "dall-e-3", "prompt": "p", "size": "1792x1024", "quality": "hd", "n": 4}
HEADERS = {"Origin": ORIGIN, "X-Forwarded-For": "198.51.100.7"}


def billed(produced) -> int:
    """Micro-dollars the upstream can bill for what it made (the fake ledger's `produced`), at
    the list price."""
    total = 0
    for item in produced:
        price = TABLE.price_for(item.model)
        assert price is not None
        if "characters" in item.usage:  # tts-1 bills characters
            total += math.ceil(item.usage["characters"] * price.units.per_million_chars
                               / 1_000_000)
            continue
        used = usage_of(item.usage)
        assert used is not None
        if item.route == "/v1/audio/speech":  # its output is all audio
            used = Usage(input=used.input, output=used.output, audio_output=used.output)
        total += cost(price, used)
    return total


def reservation(route: str, body: dict) -> Decimal:
    parsed = RequestPolicy(ValidationSettings(allowed_models=())).check(
        route, orjson.dumps(body))
    price = TABLE.price_for(body["model"])
    assert price is not None and parsed.units is not None
    return Decimal(reserve(price, parsed.units) or 0) / MICRO


async def post(session: aiohttp.ClientSession, url: str, route: str, body: dict) -> dict:
    async with session.post(url + route, json=body, headers=HEADERS) as resp:
        await resp.read()
        code = None
        if resp.status != 200:
            code = (await resp.json())["error"]["code"]
        return {"status": resp.status, "code": code}


async def remaining(session: aiohttp.ClientSession, url: str) -> Decimal:
    async with session.post(url + "/v1/images/generations", json=PROBE, headers=HEADERS) as r:
        assert r.status == 429 and "can never fit" in (await r.json())["error"]["message"]
        return Decimal(r.headers["x-ratelimit-remaining-spend"])


async def test_a_small_budget_refuses_the_next_image_or_speech_once_spent(gateway_process,
                                                                         fake):
    fake.media.pace, fake.media.chunk_bytes = 0.01, 48_000  # speech takes a while: overlaps
    gp = await gateway_process({
        "validation": {"allowed_models": ["gpt-image-1-mini", "tts-1", "gpt-4o-mini-tts",
                                          "dall-e-3"]},
        "rate_limit": {"requests": ["1000/minute"], "spend": [f"{BUDGET}/day"]}})
    routes = [("/v1/images/generations", IMAGE)] * 8 + [
        ("/v1/audio/speech", body) for body in SPEECH * 6]
    async with aiohttp.ClientSession() as s:
        results = await asyncio.gather(*(post(s, gp.url, route, body)
                                         for route, body in routes))
        admitted = sum(r["status"] == 200 for r in results)
        refused = {r["code"] for r in results if r["status"] != 200}
        assert admitted >= 3 and refused == {"spend_limit_exceeded"}, results
        await asyncio.sleep(0.3)  # every answer settled
        left = await remaining(s, gp.url)
        bill_then = Decimal(billed(fake.media.ledger.produced)) / MICRO
        # Spent: the next of either kind is refused.
        for route, body in (("/v1/images/generations", IMAGE), ("/v1/audio/speech",
                                                                SPEECH[0])):
            while (result := await post(s, gp.url, route, body))["status"] == 200:
                admitted += 1
            assert result["code"] == "spend_limit_exceeded"
        await asyncio.sleep(0.3)
        finally_left = await remaining(s, gp.url)
    bill = Decimal(billed(fake.media.ledger.produced)) / MICRO
    print(f"\n{admitted} requests admitted; the upstream can bill ${bill} of a ${BUDGET} "
          f"budget; shown left ${finally_left}")
    assert len(fake.media.ledger.produced) == admitted
    assert bill <= BUDGET  # every reservation bounds its answer: no overshoot at all
    # Nothing the upstream can bill was given back, after the burst or after the rest.
    assert left <= BUDGET - bill_then and finally_left <= BUDGET - bill
    # Refused once spent: less is left than the next image would reserve.
    assert finally_left < reservation("/v1/images/generations", IMAGE)
