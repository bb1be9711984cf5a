"""Everything the model reads is in the reservation, through a real `python gateway.py`: a burst
of image-heavy requests with a one-token output cap is admitted only as far as the dollar
budgets cover it, and a request with more images than `validation.max_images` is a 400. The
fake upstream, which counts images as OpenAI does, never reports more than was reserved."""
from __future__ import annotations

import asyncio
import base64
import struct
from decimal import Decimal

import aiohttp
import orjson
import pytest

from openai_gateway.config.settings import ValidationSettings
from openai_gateway.demo.fake_openai import FakeOpenAI
from openai_gateway.metering.prices import DEFAULT_PRICES, MICRO, Usage, cost
from openai_gateway.policy import RequestPolicy, media

from ..conftest import ORIGIN

MODEL = "gpt-4o-mini"
PRICE = DEFAULT_PRICES[MODEL]
IMAGES = 20
BUDGET = 0.5  # US dollars: both the caller's budget and the gateway's daily ceiling


def chat(i: int, images: int = IMAGES) -> dict:
    """A request that reads `images` pictures of unknown size and may write one token."""
    parts = [{"type": "text", "text": f"Describe these ({i})."}]
    parts += [{"type": "image_url", "image_url": {"url": f"https://example.com/{i}/{j}.jpg"}}
              for j in range(images)]
    return {"model": MODEL, "messages": [{"role": "user", "content": parts}], "max_tokens": 1}


async def post(s: aiohttp.ClientSession, url: str, body: dict) -> tuple[int, dict]:
    async with s.post(url + "/v1/chat/completions", json=body,
                      headers={"Origin": ORIGIN}) as r:
        return r.status, await r.json()


async def test_image_parts_are_reserved_so_a_burst_stays_within_the_budget(gateway_process,
                                                                         fake):
    gp = await gateway_process({
        "validation": {"max_images": IMAGES},
        "rate_limit": {"requests": ["1000/minute"], "spend": [f"{BUDGET}/day"]},
        "budget": {"daily_usd": BUDGET}, "cache": {"enabled": False}})
    fake.script = [{"delay": 0.5} for _ in range(60)]  # all 60 in flight together
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        results = await asyncio.gather(*(post(s, gp.url, chat(i)) for i in range(60)))
    answered = [doc for status, doc in results if status == 200]
    refused = {doc["error"]["code"] for status, doc in results if status != 200}
    assert refused <= {"spend_limit_exceeded", "budget_exceeded"} and refused, results[:3]
    assert 1 <= len(answered) == len(fake.posts) < 60
    # What the upstream reported for the admitted ones, priced as OpenAI bills it.
    reported = [cost(PRICE, Usage(input=d["usage"]["prompt_tokens"],
                                  output=d["usage"]["completion_tokens"])) for d in answered]
    one_reservation = media.image_tokens(MODEL, "auto", None) * IMAGES * PRICE.input // 10**6
    assert Decimal(sum(reported)) / MICRO <= Decimal(str(BUDGET)) + Decimal(
        one_reservation) / MICRO
    # The upstream counted the images (a realistic size: fewer tiles than the worst case).
    per_image = media.image_tokens(MODEL, "auto", (1024, 1024))
    assert all(d["usage"]["prompt_tokens"] > IMAGES * per_image for d in answered)


async def test_more_images_than_max_images_is_a_400(gateway_process, fake):
    gp = await gateway_process({"validation": {"max_images": 3}})
    async with aiohttp.ClientSession() as s:
        status, doc = await post(s, gp.url, chat(0, images=4))
        assert status == 400
        assert doc["error"]["param"] == "messages[0].content[4]"
        assert "at most 3" in doc["error"]["message"]
        assert fake.posts == []
        status, _ = await post(s, gp.url, chat(1, images=3))
        assert status == 200


PNG_2000x1000 = "data:image/png;base64," + base64.b64encode(
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + struct.pack(">II", 2000, 1000)
    + b"\x08\x02\x00\x00\x00" + b"\0" * 40).decode()


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4o-mini", "gpt-4.1-mini", "o3", "gpt-5.4"])
@pytest.mark.parametrize("detail", ["low", "high", "auto", None])
@pytest.mark.parametrize("url", ["https://example.com/a.jpg", PNG_2000x1000],
                         ids=["url", "data"])
async def test_the_reservation_covers_what_the_fake_upstream_reports(aiohttp_client, model,
                                                                     detail, url):
    """The fake upstream counts images by the same rules at a realistic size (the real one of
    a data: URL): what the gateway reserved is never less than what it reports."""
    policy = RequestPolicy(ValidationSettings(allowed_models=()))
    extra = {} if detail is None else {"detail": detail}
    client = await aiohttp_client(FakeOpenAI().app())
    for route, body in [
        ("/v1/chat/completions", {"model": model, "max_tokens": 1, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                         {"type": "image_url",
                                          "image_url": {"url": url, **extra}}]}]}),
        ("/v1/responses", {"model": model, "max_output_tokens": 1, "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "what is this?"},
                                         {"type": "input_image", "image_url": url,
                                          **extra}]}]}),
    ]:
        parsed = policy.check(route, orjson.dumps(body))
        async with client.post(route, json=body) as r:
            usage = (await r.json())["usage"]
        reported = usage.get("prompt_tokens", usage.get("input_tokens"))
        assert parsed.image_tokens > 0
        assert parsed.prompt_tokens >= reported, (route, parsed.prompt_tokens, reported)
