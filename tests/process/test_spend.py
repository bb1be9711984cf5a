"""Money through real gateway processes: the SDK's RateLimitError on a dollar budget and on the
gateway-wide ceiling, costs from usage (cached prompt tokens at their own price, streams
included), a burst of 100 against a small ceiling, one ceiling shared by two processes on
memcached, the spend across a SIGHUP reload, unpriced models, prices from the config."""
from __future__ import annotations

import asyncio
import json
import re
import signal
from decimal import Decimal

import aiohttp
import openai
import pytest

from openai_gateway.metering.prices import MICRO, Price, Usage, cost, estimate
from openai_gateway.policy import prompt_estimate

from ..conftest import ORIGIN, SEEN_RESPONSES

#: Dear enough that a few small answers reach a budget: dollars per 1M tokens.
PRICE = {"input": 1000.0, "cached_input": 250.0, "output": 4000.0}
#: The gateway's own view of that row, for computing costs here.
ROW = Price.from_usd(**PRICE)
MAX_TOKENS = 10
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": MAX_TOKENS}


def money(**over) -> dict:
    return {"prices": {"gpt-4o-mini": dict(PRICE)}, **over}


def sdk(gp) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gp.url + "/v1", api_key="sk-dummy", max_retries=0,
                              timeout=15, default_headers={"Origin": ORIGIN})


def cost_of(usage) -> int:
    """Micro-dollars of an SDK usage object at ROW."""
    details = getattr(usage, "prompt_tokens_details", None)
    cached = (details.cached_tokens or 0) if details is not None else 0
    return cost(ROW, Usage(input=usage.prompt_tokens, output=usage.completion_tokens,
                           cached_input=cached))


async def create(gp, **over):
    async with sdk(gp) as client:
        raw = await client.chat.completions.with_raw_response.create(**{**CHAT, **over})
    SEEN_RESPONSES.append(repr(dict(raw.headers)) + raw.http_response.text)
    return raw, raw.parse()


async def metrics(gp) -> str:
    async with aiohttp.ClientSession() as s, s.get(gp.url + "/metrics") as r:
        assert r.status == 200
        return await r.text()


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels` (0 when none)."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"{name}(?:{{(.*)}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


def access_costs(gp) -> list[float]:
    out = []
    for line in gp.log().splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("cost_usd") is not None:
            out.append(doc["cost_usd"])
    return out


async def test_the_sdk_raises_rate_limit_error_on_a_dollar_budget(gateway_process, fake):
    gp = await gateway_process(money(rate_limit={"requests": ["1000/minute"],
                                                 "spend": ["0.1/day"]}))
    answered = 0
    with pytest.raises(openai.RateLimitError) as err:
        for _ in range(20):
            raw, _ = await create(gp)
            answered += 1
            assert raw.headers["x-ratelimit-limit-spend"].startswith("0.1")
            assert Decimal(raw.headers["x-ratelimit-remaining-spend"]) < Decimal("0.1")
    assert answered >= 1
    body = err.value.body
    assert err.value.code == "spend_limit_exceeded" and body["type"] == "insufficient_quota"
    assert int(err.value.response.headers["Retry-After"]) > 0
    assert len(fake.posts) == answered  # the refused request never left


async def test_the_sdk_raises_rate_limit_error_on_the_gateway_ceiling(gateway_process, fake):
    gp = await gateway_process(money(budget={"daily_usd": 0.1, "warn_at": 0.5}))
    answered = 0
    with pytest.raises(openai.RateLimitError) as err:
        for _ in range(20):
            await create(gp)
            answered += 1
    assert err.value.code == "budget_exceeded"
    assert err.value.body["type"] == "insufficient_quota"
    assert "Retry-After" in err.value.response.headers
    assert len(fake.posts) == answered >= 1
    text = await metrics(gp)
    left = metric(text, "gateway_budget_remaining_usd", period="day")
    spent = metric(text, "gateway_spend_usd_total")
    assert 0 <= left < 0.1 and spent > 0
    assert metric(text, "gateway_budget_warn", period="day") == 1
    assert gp.log().count("crossed 50% of its ceiling") == 1  # warned once


async def test_costs_come_from_usage_with_cached_tokens_priced_apart(gateway_process, fake):
    gp = await gateway_process(money(rate_limit={"requests": ["1000/minute"],
                                                 "spend": ["5/day"]}))
    fake.cached_tokens = 4
    messages = [{"role": "user", "content": "a few words, " * 10}]
    raw, answer = await create(gp, messages=messages)
    usage = answer.usage
    assert usage.prompt_tokens_details.cached_tokens == 4 < usage.prompt_tokens
    expected = cost_of(usage)
    # Cached tokens at the cached price: cheaper than the whole prompt at the input price.
    assert expected < cost(ROW, Usage(input=usage.prompt_tokens,
                                      output=usage.completion_tokens))
    assert Decimal(raw.headers["x-gateway-cost-usd"]) == Decimal(expected) / MICRO

    # Streams: the cost is settled from the usage chunk. A client that asks for usage sees
    # the figures the gateway charged; one that does not gets no usage chunk, and the gateway
    # charges the same from the chunk it asked for itself.
    async with sdk(gp) as client:
        stream = await client.chat.completions.create(
            **{**CHAT, "messages": messages}, stream=True,
            stream_options={"include_usage": True})
        with_usage = [chunk async for chunk in stream]
        stream = await client.chat.completions.create(**{**CHAT, "messages": messages},
                                                      stream=True)
        without = [chunk async for chunk in stream]
    streamed = with_usage[-1].usage
    assert streamed.prompt_tokens_details.cached_tokens == 4
    assert all(c.usage is None for c in without)
    assert fake.posts[-1].json()["stream_options"] == {"include_usage": True}
    await asyncio.sleep(0.2)  # the access line is written after the stream ends
    costs = access_costs(gp)
    assert costs == [expected / MICRO, cost_of(streamed) / MICRO, cost_of(streamed) / MICRO]
    text = await metrics(gp)
    assert metric(text, "gateway_spend_usd_total", model="gpt-4o-mini") == pytest.approx(
        sum(costs))


@pytest.mark.parametrize("words, ceiling", [(5, 0.2), (40, 1.0)],
                         ids=["answers-within-max_tokens", "upstream-ignores-max_tokens"])
async def test_a_burst_of_100_stays_within_the_stated_bound(gateway_process, fake, words,
                                                            ceiling):
    """With 40 words against max_tokens = 10 the upstream overruns every reservation (as an
    OpenAI-compatible server that ignores the cap would): the one case where the real spend
    can pass the ceiling, and the bound says by how much."""
    fake.chunks = words
    gp = await gateway_process(money(budget={"daily_usd": ceiling}))
    raw, answer = await create(gp)  # one answer to learn what a request costs
    one = cost_of(answer.usage)
    first_left = Decimal(str(metric(await metrics(gp), "gateway_budget_remaining_usd",
                                    period="day")))
    fake.script = [{"delay": 1.0} for _ in range(100)]  # all 100 in flight together

    async def one_request(s: aiohttp.ClientSession) -> tuple[int, str | None]:
        async with s.post(gp.url + "/v1/chat/completions", json=CHAT,
                          headers={"Origin": ORIGIN}) as r:
            doc = await r.json()
            return r.status, (doc.get("error") or {}).get("code")

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        results = await asyncio.gather(*(one_request(s) for _ in range(100)))
    ok = sum(1 for status, _ in results if status == 200)
    refused = [code for status, code in results if status != 200]
    assert set(refused) == {"budget_exceeded"}, results
    text = await metrics(gp)
    spent = Decimal(str(metric(text, "gateway_spend_usd_total")))
    # The stated bound: every admitted request first reserved its estimate (prompt and
    # max_tokens at the prices) against what was left, so at most `fit` are in flight at
    # once, and the real spend passes the ceiling by at most what those cost beyond their
    # reservations; never more than their whole cost. `reserve` is at most the gateway's
    # estimate (the prompt counted as "hi" alone), so `fit` and the overrun are upper bounds.
    reserve = estimate(ROW, prompt_estimate(len("hi")), MAX_TOKENS)
    fit = int(first_left * MICRO) // reserve
    overrun = max(one - reserve, 0)
    assert ok >= 1 and fit >= 1
    assert spent <= Decimal(str(ceiling)) + Decimal(fit * overrun) / MICRO, (spent, fit)
    assert spent <= Decimal(str(ceiling)) + Decimal(fit * one) / MICRO
    assert spent == pytest.approx(Decimal(one * (ok + 1)) / MICRO)
    if overrun:
        assert spent > Decimal(str(ceiling))  # the overruns are real money, and bounded
    assert len(fake.posts) == ok + 1  # refused requests never reached the upstream
    left = Decimal(str(metric(text, "gateway_budget_remaining_usd", period="day")))
    assert 0 <= left <= max(Decimal(str(ceiling)) - spent, Decimal(0)) + Decimal("0.000001")


async def test_two_processes_on_memcached_hold_one_ceiling(gateway_process, fake,
                                                           memcached_factory):
    url, _ = memcached_factory()  # a fresh server: today's counters start at zero
    config = money(storage={"url": url}, budget={"daily_usd": 0.1})
    one = await gateway_process(config)
    two = await gateway_process(config)
    answered = {one.url: 0, two.url: 0}
    with pytest.raises(openai.RateLimitError) as err:
        for i in range(40):
            gp = (one, two)[i % 2]
            await create(gp)
            answered[gp.url] += 1
    assert err.value.code == "budget_exceeded"
    assert all(n >= 1 for n in answered.values()), answered
    # Two ceilings would have let about twice this through: the two processes share one.
    spent = 0.0
    for gp in (one, two):
        spent += metric(await metrics(gp), "gateway_spend_usd_total")
    one_cost = spent / sum(answered.values())
    assert spent <= 0.1 + one_cost
    for gp in (one, two):
        with pytest.raises(openai.RateLimitError):
            await create(gp)


async def test_the_spend_survives_a_sighup_reload(gateway_process, fake):
    gp = await gateway_process(money(rate_limit={"requests": ["1000/minute"],
                                                 "spend": ["1/day"]},
                                     budget={"daily_usd": 1.0}))
    raw, _ = await create(gp)
    raw, _ = await create(gp)
    before = Decimal(raw.headers["x-ratelimit-remaining-spend"])
    assert before < 1
    text = gp.config_path.read_text()
    gp.config_path.write_text(text.replace('"1000/minute"', '"999/minute"'))
    gp.proc.send_signal(signal.SIGHUP)
    for _ in range(100):
        if "configuration reloaded" in gp.log():
            break
        await asyncio.sleep(0.05)
    assert "configuration reloaded" in gp.log()
    raw, _ = await create(gp)
    assert raw.headers["x-ratelimit-limit-requests"] == "999"  # the new config is in force
    after = Decimal(raw.headers["x-ratelimit-remaining-spend"])
    assert after < before  # not reset by the reload
    left = metric(await metrics(gp), "gateway_budget_remaining_usd", period="day")
    assert Decimal(str(left)) <= after


async def test_an_unpriced_model_under_a_dollar_budget_is_refused(gateway_process, fake):
    allowed = {"allowed_models": ["gpt-4o-mini", "my-local-model", "priced-local"]}
    gp = await gateway_process(money(validation=allowed,
                                     rate_limit={"requests": ["1000/minute"],
                                                 "spend": ["1/day"]}))
    with pytest.raises(openai.BadRequestError) as err:
        await create(gp, model="my-local-model")
    assert err.value.code == "model_not_priced" and err.value.param == "model"
    assert fake.posts == []
    # A price from the config adds the model; with no dollar budget an unpriced one is free.
    gp2 = await gateway_process({"validation": allowed,
                                 "prices": {"priced-local": {"input": 1.0, "output": 2.0}}})
    raw, _ = await create(gp2, model="my-local-model")
    assert "x-gateway-cost-usd" not in raw.headers
    raw, answer = await create(gp2, model="priced-local")
    row = Price.from_usd(input=1.0, output=2.0)
    expected = cost(row, Usage(input=answer.usage.prompt_tokens,
                               output=answer.usage.completion_tokens))
    assert Decimal(raw.headers["x-gateway-cost-usd"]) == Decimal(expected) / MICRO


async def test_config_prices_override_the_shipped_ones(gateway_process, fake):
    gp = await gateway_process(money())
    raw, answer = await create(gp)
    assert Decimal(raw.headers["x-gateway-cost-usd"]) == Decimal(cost_of(answer.usage)) / MICRO
    shipped = await gateway_process({})
    raw2, answer2 = await create(shipped)
    default = Price.from_usd(input=0.15, cached_input=0.075, output=0.60)
    expected = cost(default, Usage(input=answer2.usage.prompt_tokens,
                                   output=answer2.usage.completion_tokens))
    assert Decimal(raw2.headers["x-gateway-cost-usd"]) == Decimal(expected) / MICRO
    assert Decimal(raw.headers["x-gateway-cost-usd"]) > Decimal(raw2.headers[
        "x-gateway-cost-usd"])
