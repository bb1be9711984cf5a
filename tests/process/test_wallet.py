"""The wallet invariant, through real gateway processes on every store and every way out.

For each store (memory, a memcached ring, Redis) and each way a request can end (the answer
read, a hang-up before the answer, a stream stopped after its first event, a first-byte
timeout, an idle timeout, an upstream that resets the stream), a burst of concurrent requests
from two callers meets a small per-caller dollar budget and a small gateway-wide ceiling. The
fake upstream keeps its own ledger of what it produced (`FakeOpenAI.billed`), priced here at
the list price: that is what the upstream can bill. Then:
- the dollars the upstream can bill stay within each budget plus the README's bound (one
  reservation per request in flight; in practice the overshoot is the prompt's rounding);
- the remaining spend a caller is shown never exceeds what is truly left: no exit gives back
  money the upstream could bill.
"""
from __future__ import annotations

import asyncio
from decimal import Decimal

import aiohttp
import pytest

from openai_gateway.metering.prices import DEFAULT_PRICES, cost
from openai_gateway.policy import Usage

from ..conftest import ORIGIN
from ..support.store_fixtures import redis_factory  # noqa: F401  (fixture)

MODEL = "gpt-4o-mini"
PRICE = DEFAULT_PRICES[MODEL]
MAX_TOKENS = 2000
#: The reservation of one request: its prompt ("hi": 1 token) and the output cap.
RESERVATION = cost(PRICE, Usage(input=1, output=MAX_TOKENS))  # 1,201 micro-dollars
CLIENT_BUDGET, CEILING = 4_000, 6_000  # micro-dollars: about three and five reservations
CALLERS, BURST = ("198.51.100.7", "198.51.100.8"), 6  # requests per caller, all at once

#: way out -> (the fake's behaviour, whether the request streams). Answers of 1,500 words are
#: three quarters of the cap: what a refund would wrongly give back is most of a reservation.
EXITS = {
    "answer-read": ({"chunks": 1500}, False),
    "hang-up-before-answer": ({"chunks": 1500, "delay": 0.6}, False),
    "stop-after-first-event": ({"chunks": 40, "chunk_delay": 0.05}, True),
    "first-byte-timeout": ({"chunks": 1500, "delay": 2.0}, False),
    "idle-timeout": ({"chunks": 30, "chunk_delay": 1.5}, True),
    "upstream-reset": ({"chunks": 1500, "drop_after": 3}, True),
}


def body(stream: bool) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": MAX_TOKENS, "stream": stream}


async def one(session: aiohttp.ClientSession, url: str, caller: str, exit_: str,
              stream: bool) -> dict:
    """One request that ends as `exit_` says; what the caller was told."""
    headers = {"Origin": ORIGIN, "X-Forwarded-For": caller}
    post = session.post(url + "/v1/chat/completions", json=body(stream), headers=headers)
    if exit_ == "hang-up-before-answer":
        task = asyncio.ensure_future(_status(post))
        done, _ = await asyncio.wait([task], timeout=0.2)  # a refusal comes at once
        if done:
            return task.result()
        task.cancel()  # admitted and sent; the answer takes 0.6 s: hang up
        return {"status": None}
    async with post as r:
        seen = {"status": r.status, "spend": r.headers.get("x-ratelimit-remaining-spend"),
                "code": None}
        if r.status != 200:
            seen["code"] = (await r.json())["error"]["code"]
            return seen
        if exit_ == "stop-after-first-event":
            await r.content.readany()  # the first event; then the client hangs up
            r.close()
            return seen
        await r.read()
    return seen


async def _status(post) -> dict:
    async with post as r:
        return {"status": r.status, "code": (await r.json())["error"]["code"]
                if r.status != 200 else None}


async def remaining_spend(session: aiohttp.ClientSession, url: str, caller: str) -> Decimal:
    """What the gateway says is left of the caller's budget, asked by a request whose worst
    case is more than the whole budget (refused, so it spends nothing)."""
    big = {**body(False), "max_tokens": 4096, "n": 4}
    async with session.post(url + "/v1/chat/completions", json=big,
                            headers={"Origin": ORIGIN, "X-Forwarded-For": caller}) as r:
        assert r.status == 429 and "can never fit" in (await r.json())["error"]["message"]
        return Decimal(r.headers["x-ratelimit-remaining-spend"])


def billed(fake) -> int:
    """Micro-dollars the upstream can bill for everything it produced."""
    return sum(cost(PRICE, Usage(input=p, output=o)) for model, p, o in fake.billed
               if model == MODEL)


async def settle_down(fake, gp) -> None:
    """Until nothing is in flight: the fake idle, every answer settled in the gateway."""
    for _ in range(100):
        if not fake.active:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)


@pytest.fixture(params=["memory", "memcached", "redis"])
def store_url(request, memcached_factory, redis_factory):  # noqa: F811
    """A fresh store per test: the gateway-wide ceiling is one counter for every process."""
    if request.param == "memory":
        return "memory://"
    if request.param == "memcached":
        return memcached_factory()[0]
    server = redis_factory()
    return f"redis://127.0.0.1:{server.port}/0"


@pytest.mark.parametrize("exit_", list(EXITS))
async def test_the_upstream_never_bills_past_the_budget(gateway_process, fake, store_url,
                                                        exit_):
    step, stream = EXITS[exit_]
    fake.step = step
    gp = await gateway_process({
        "storage": {"url": store_url},
        "upstream": {"first_byte_timeout": 0.5, "idle_timeout": 0.5, "retries": 0},
        "rate_limit": {"requests": ["1000/minute"], "spend": [f"{CLIENT_BUDGET / 1e6}/day"]},
        "budget": {"daily_usd": CEILING / 1e6},
        "cache": {"enabled": False},
    })
    async with aiohttp.ClientSession() as s:
        seen = await asyncio.gather(*(one(s, gp.url, caller, exit_, stream)
                                      for caller in CALLERS for _ in range(BURST)))
        await settle_down(fake, gp)
        # A second burst once everything settled: nothing given back lets more through.
        seen += await asyncio.gather(*(one(s, gp.url, caller, exit_, stream)
                                       for caller in CALLERS for _ in range(2)))
        await settle_down(fake, gp)
        left = {caller: await remaining_spend(s, gp.url, caller) for caller in CALLERS}
    refused = [x for x in seen if x["status"] == 429]
    assert refused, f"{exit_}: nothing was refused; the burst did not reach a budget"
    assert {x["code"] for x in refused} <= {"spend_limit_exceeded", "budget_exceeded"}
    total = billed(fake)
    # The bound the README states: one reservation per request in flight (in fact the
    # overshoot is at most the prompt's rounding: the gateway charges at least what is billed).
    assert total <= CEILING + RESERVATION, f"{exit_}: billed {total} µ$ of a {CEILING} ceiling"
    assert total <= 2 * CLIENT_BUDGET + 2 * RESERVATION
    # What the callers are told is left, together, is never more than the truth.
    shown_left = sum(int(v * 1_000_000) for v in left.values())
    assert shown_left <= max(2 * CLIENT_BUDGET - total, 0) + 2 * 10, (exit_, left, total)
    print(f"{exit_} on {store_url.split(':')[0]}: billed {total} µ$ against a {CEILING} µ$ "
          f"ceiling ({len(fake.billed)} upstream requests, {len(refused)} refused)")

